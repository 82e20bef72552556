"""Multi-host runs through JAX's own runtime (`jax.distributed`): one process per host, one program.

How a run becomes multi-process: on TPU VMs `--distributed` (or `RSGROUND_DISTRIBUTED=1`) and JAX finds the
pod's hosts itself; elsewhere the coordinator is named: `--coordinator host:port --num-processes N
--process-id I` (or `RSGROUND_COORDINATOR`, `RSGROUND_NUM_PROCESSES`, `RSGROUND_PROCESS_ID`: the same command
line on every host, the id from the environment). On CPU the processes talk through gloo collectives.

What changes when there are several processes (the trainers ask `is_multiprocess()`): each process reads its
own shard of the data and feeds its devices' rows of every global batch; process 0 alone claims the workdir,
writes metrics, the report and the exported model, and shows the progress bar; checkpoints are written by
Orbax from every process (arrays) and process 0 (JSON), with every process's data position in them; a stop
request (SIGTERM on any host) is agreed on by all processes before they save together.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .errors import UserError

ENV = {"coordinator": "RSGROUND_COORDINATOR", "num_processes": "RSGROUND_NUM_PROCESSES",
       "process_id": "RSGROUND_PROCESS_ID", "auto": "RSGROUND_DISTRIBUTED"}


class DistributedError(UserError, ValueError):
    """Multi-host settings that are incomplete or out of range."""


@dataclass(frozen=True)
class DistributedSettings:
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False  # let JAX find the cluster (TPU VMs, SLURM, ...)

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator is not None

    @classmethod
    def resolve(cls, coordinator=None, num_processes=None, process_id=None, auto=False,
                env: dict[str, str] | None = None) -> "DistributedSettings":
        """Command-line values, else the environment's; checked for completeness."""
        env = os.environ if env is None else env

        def pick(value, key, kind=str):
            if value is not None:
                return value
            text = env.get(ENV[key], "")
            if text == "":
                return None
            try:
                return kind(text)
            except ValueError:
                raise DistributedError(f"{ENV[key]}={text!r} is not a {kind.__name__}") from None

        s = cls(pick(coordinator, "coordinator"), pick(num_processes, "num_processes", int),
                pick(process_id, "process_id", int), bool(auto) or env.get(ENV["auto"], "") not in ("", "0"))
        if s.coordinator is not None:
            if s.num_processes is None or s.process_id is None:
                raise DistributedError("--coordinator needs --num-processes and --process-id (or "
                                       f"{ENV['num_processes']} and {ENV['process_id']})")
            if s.num_processes < 1 or not 0 <= s.process_id < s.num_processes:
                raise DistributedError(f"process id {s.process_id} is not in [0, {s.num_processes}) processes")
        elif s.num_processes is not None or s.process_id is not None:
            raise DistributedError("--num-processes and --process-id need --coordinator host:port (or "
                                   "--distributed where JAX finds the cluster itself)")
        return s


def initialize(settings: DistributedSettings) -> None:
    """Start JAX's multi-host runtime (before any other JAX work); nothing when `settings` are not enabled."""
    if not settings.enabled:
        return
    import jax

    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes reduce over TCP
    if settings.auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=settings.coordinator, num_processes=settings.num_processes,
                                   process_id=settings.process_id)


def process_index() -> int:
    import jax

    return jax.process_index()


def is_multiprocess() -> bool:
    import jax

    return jax.process_count() > 1


def is_leader() -> bool:
    """Process 0: the one that writes files every process would write alike."""
    return process_index() == 0


def all_agree(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a collective: every process must call it)."""
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).max())


def allgather_json(obj) -> list:
    """Every process's JSON-able `obj`, in process order, on every process (a collective)."""
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    longest = int(np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).max())
    padded = np.zeros(longest, np.uint8)
    padded[: len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, longest)
    return [json.loads(bytes(r).rstrip(b"\0").decode()) for r in rows]


def broadcast_ok(ok: bool) -> bool:
    """Process 0's `ok` on every process (a collective): how the others learn that process 0 refused a run."""
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(ok))))


def gather_to_host(tree):
    """Every array of `tree` whole, as numpy, on every process (a collective; e.g. before exporting a model
    whose parameters are split over hosts)."""
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
