#!/usr/bin/env python3
"""The TPU launch kit: plain `gcloud` commands to run `rsground sft` or `rsground grpo` on every worker of a
TPU VM or pod slice, with checkpoints, the run's files and the exported model on a gs:// bucket.

    python tpu/kit.py [--dry-run] create    --name N --zone Z --type v5p-64 [--spot] [--queued]
    python tpu/kit.py [--dry-run] install   --name N --zone Z --repo URL [--ref REV]
    python tpu/kit.py [--dry-run] data      --name N --zone Z --source gs://B/data [--dest data]
    python tpu/kit.py [--dry-run] launch    --name N --zone Z --bucket gs://B --run R --command sft --config C [--resume] [key=value ...]
    python tpu/kit.py [--dry-run] logs      --name N --zone Z --run R [--worker 0]
    python tpu/kit.py [--dry-run] status    --name N --zone Z [--queued]
    python tpu/kit.py [--dry-run] resume    (the options of create and launch): recreate the slice if it is gone,
                                            install, copy the data, launch with --resume
    python tpu/kit.py [--dry-run] delete    --name N --zone Z [--queued]

`--dry-run` prints every command, one per line, and runs none (tests/tpu checks them). Each worker runs
`tpu/worker.sh`: the same `rsground` command with `--distributed` (JAX finds the pod's hosts), the workdir on
the worker's disk, checkpoints on `gs://B/R/checkpoints` (Orbax writes them there from every host), the
workdir's files (run record, metrics, TensorBoard) copied to `gs://B/R/workdir` every minute and at the end,
and the exported model to `gs://B/R/model`. A preempted spot slice gets SIGTERM: the run saves a checkpoint
on gs:// and stops; `resume` then continues it on a new slice. Standard library only.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

RUNTIME = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
           "v6e": "v2-alpha-tpuv6e"}


def runtime_for(accelerator: str) -> str:
    """The TPU VM software version for an accelerator type (v5p-64 -> v2-alpha-tpuv5)."""
    family = accelerator.rsplit("-", 1)[0]
    if family not in RUNTIME:
        raise SystemExit(f"kit: --type {accelerator!r}: unknown TPU family {family!r}; expected one of "
                         f"{sorted(RUNTIME)} (or give --version)")
    return RUNTIME[family]


def _tpu(args) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm"]


def _where(args) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def ssh(args, command: str, worker: str = "all") -> list[str]:
    """`command` run on `worker` (all: every host of the slice, at once)."""
    return [*_tpu(args), "ssh", args.name, *_where(args), f"--worker={worker}", f"--command={command}"]


def create(args) -> list[list[str]]:
    version = args.version or runtime_for(args.type)
    if args.queued:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, f"--node-id={args.name}",
               *_where(args), f"--accelerator-type={args.type}", f"--runtime-version={version}"]
    else:
        cmd = [*_tpu(args), "create", args.name, *_where(args), f"--accelerator-type={args.type}",
               f"--version={version}"]
    return [cmd + (["--spot"] if args.spot else [])]


def delete(args) -> list[list[str]]:
    if args.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force",
                 "--quiet"]]
    return [[*_tpu(args), "delete", args.name, *_where(args), "--quiet"]]


def status(args) -> list[list[str]]:
    if args.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_where(args)]]
    return [[*_tpu(args), "describe", args.name, *_where(args), "--format=value(state,health)"]]


def install(args) -> list[list[str]]:
    """Clone (or update) the project at `--ref` on every worker and install it with JAX for TPUs."""
    q = shlex.quote
    script = " && ".join([
        "set -e",
        f"(test -d rsground_jax || git clone {q(args.repo)} rsground_jax)",
        "cd rsground_jax", "git fetch --all --tags", f"git checkout {q(args.ref)}",
        "python3 -m venv .venv", ".venv/bin/pip install -q --upgrade pip",
        ".venv/bin/pip install -q -e . 'jax[tpu]'",
        ".venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'",
    ])
    return [ssh(args, script)]


def data(args) -> list[list[str]]:
    """The dataset copied from gs:// to every worker's disk (the pipeline reads local files)."""
    return [ssh(args, f"mkdir -p {shlex.quote(args.dest)} && gcloud storage rsync -r {shlex.quote(args.source)} "
                      f"{shlex.quote(args.dest)}")]


def launch(args) -> list[list[str]]:
    """`tpu/worker.sh` started in the background on every worker, its log in ~/rsground_<run>.log."""
    if args.command not in ("sft", "grpo"):
        raise SystemExit(f"kit: --command {args.command!r}: expected sft or grpo")
    worker = ["tpu/worker.sh", "--run", args.run, "--bucket", args.bucket.rstrip("/"), "--command", args.command,
              "--config", args.config] + (["--resume"] if args.resume else []) + list(args.overrides)
    line = (f"cd rsground_jax && nohup bash {shlex.join(worker)} > ~/rsground_{args.run}.log 2>&1 < /dev/null &")
    return [ssh(args, line)]


def logs(args) -> list[list[str]]:
    return [ssh(args, f"tail -n 200 -f ~/rsground_{args.run}.log", worker=str(args.worker))]


def resume(args) -> list[list[str]]:
    """A new slice where the old one is gone (a preempted spot slice), then install, data and launch --resume;
    `status` decides whether the slice exists (in a dry run it is assumed gone: every command is printed)."""
    args.resume = True
    steps = []
    if args.dry_run or subprocess.run(status(args)[0], capture_output=True).returncode != 0:
        steps += create(args)
    steps += install(args)
    if args.source:
        steps += data(args)
    return steps + launch(args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print every command and run none")
    sub = ap.add_subparsers(dest="action", required=True)

    def common(p):
        p.add_argument("--name", required=True, help="the TPU VM (or queued resource) name")
        p.add_argument("--zone", required=True)
        p.add_argument("--project", default="")

    def creating(p):
        p.add_argument("--type", required=True, help="accelerator type, e.g. v5p-64, v6e-16, v4-32")
        p.add_argument("--version", default="", help="TPU VM software version (default: from --type)")
        p.add_argument("--spot", action="store_true", help="spot capacity: cheaper, preemptible")
        p.add_argument("--queued", action="store_true", help="a queued resource instead of a VM created at once")

    def installing(p):
        p.add_argument("--repo", required=True, help="the project's git URL, as the workers can clone it")
        p.add_argument("--ref", default="main", help="branch, tag or commit to check out on every worker")

    def launching(p):
        p.add_argument("--bucket", required=True, help="gs://BUCKET[/prefix]: checkpoints, run files and the model")
        p.add_argument("--run", required=True, help="a run name: the folder under the bucket and the log's name")
        p.add_argument("--command", required=True, help="sft or grpo")
        p.add_argument("--config", required=True, help="a config file of the checkout, e.g. configs/qwen2_5_vl_3b_dior_rsvg.py")
        p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. mesh.fsdp=-1)")

    for name, parts in (("create", [creating]), ("delete", []), ("status", []), ("install", [installing]),
                        ("data", []), ("launch", [launching]), ("logs", []), ("resume", [creating, installing, launching])):
        p = sub.add_parser(name)
        common(p)
        for part in parts:
            part(p)
        if name in ("delete", "status"):
            p.add_argument("--queued", action="store_true")
        if name in ("data", "resume"):
            p.add_argument("--source", required=name == "data", default="", help="gs:// dataset folder")
            p.add_argument("--dest", default="data", help="its folder on each worker (relative to the home)")
        if name == "launch":
            p.add_argument("--resume", action="store_true", help="continue the run from its gs:// checkpoints")
        if name == "logs":
            p.add_argument("--run", required=True)
            p.add_argument("--worker", default=0, type=int)
    args = ap.parse_args(argv)
    commands = globals()[args.action](args)
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.run(cmd).returncode
            if rc != 0:
                print(f"kit: exit {rc} from: {shlex.join(cmd)}", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
