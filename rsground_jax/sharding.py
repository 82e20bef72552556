"""Where every array lives on a device mesh: the mesh from a config, one logical-axis rules table, placement.

The mesh has three axes (`MESH_AXES`):
  data    the batch is split over it; parameters and optimizer state are whole on every device (replicas)
  fsdp    the batch is split over it too, and parameters and optimizer state are split over it as well
          (ZeRO-3 style: each device holds 1/fsdp of every weight; XLA gathers a weight where it is used)
  tensor  Megatron-style model parallelism: attention heads, MLP features and the vocabulary are split
Every parameter names its logical axes where it is created (`layers.param(..., axes)`); `RULES` maps each
logical name to mesh axes, and is the one place sharding is decided. Modules never name mesh axes.

A dimension that does not divide by its mesh axes' size is kept whole (replicated along those axes) and
reported by `param_specs(..., report=...)`: e.g. the tiny model's 2 key/value heads on a tensor axis of 4.
Sharding never changes what a jitted program computes, only where; tests check the sharded step against the
unsharded one on 8 fake CPU devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes it is split over (None: whole on every device). The single sharding decision.
RULES: dict[str, tuple[str, ...] | None] = {
    # activations and batches
    "batch": ("data", "fsdp"),
    "micro": None,  # the gradient-accumulation axis of a stacked batch
    "seq": None,
    "rope_section": None,  # the 3 M-RoPE position rows
    # text decoder
    "layers": None,
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "mlp": ("tensor",),
    # text decoder activations (`layers.constrain` inside `activation_layout`): the residual stream whole on
    # each device of a batch shard, the heads split over tensor as their weights are
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    # vision tower (frozen in most recipes; sharded alike so a 72B tower is not replicated)
    "patch": None,
    "vision_embed": ("fsdp",),
    "vision_heads": ("tensor",),
    "vision_mlp": ("tensor",),
    "vision_merge": None,
}

# The layout of the weights a decode loop reads for every token (`decode_placement`): gathered over fsdp once a
# generation (the training layout would gather each layer again for every decoded token), split over tensor as
# for training.
DECODE_RULES: dict[str, tuple[str, ...] | None] = {**RULES, "embed": None, "vision_embed": None}

# The logical axes of a step's batch arrays, without the leading micro-batch axis that `stack_micro_batches`
# adds (`batch_shardings(..., micro=True)` puts it in front). Images grouped per device
# (`inputs.group_vision_inputs`: pixel values [groups, P_g, patch_dim] and index arrays [groups, ...]) are split
# over their group axis like the batch; a batch's images packed as one ([P, patch_dim]) stay whole.
BATCH_AXES: dict[str, tuple[str | None, ...]] = {
    "input_ids": ("batch", "seq"),
    "attention_mask": ("batch", "seq"),
    "loss_mask": ("batch", "seq"),
    "position_ids": ("rope_section", "batch", "seq"),
    "gt_box_resized": ("batch", None),
    "resized_hw": ("batch", None),
    "sample_valid": ("batch",),
    "target_ids": ("batch", "seq"),  # GRPO's SFT anchor: one target per prompt
    "target_mask": ("batch", "seq"),
    # GRPO completions: rows p * G + g
    "tokens": ("batch", "seq"),
    "mask": ("batch", "seq"),
    "advantages": ("batch",),
    "rows": ("batch",),
    "old_logp": ("batch", "seq"),
    "ref_logp": ("batch", "seq"),
}


class MeshError(UserError, ValueError):
    """A mesh shape that does not fit the devices, or a batch that does not split over it."""


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """{data, fsdp, tensor} sizes with at most one -1 (the devices left), checked against `num_devices`."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"mesh axes must be among {MESH_AXES}, got {unknown}")
    shape = {a: int(sizes.get(a, 1)) for a in MESH_AXES}
    free = [a for a, n in shape.items() if n == -1]
    if len(free) > 1 or any(n == 0 or n < -1 for n in shape.values()):
        raise MeshError(f"mesh sizes must be positive, with at most one -1; got {shape}")
    known = math.prod(n for n in shape.values() if n != -1)
    if free:
        if num_devices % known:
            raise MeshError(f"mesh {shape}: {num_devices} devices do not divide by {known}")
        shape[free[0]] = num_devices // known
    if math.prod(shape.values()) != num_devices:
        raise MeshError(f"mesh {shape} needs {math.prod(shape.values())} devices; there are {num_devices}")
    return shape


def batch_mesh_axes(mesh: Mesh, rules=RULES) -> tuple[str, ...]:
    """The mesh axes (of size > 1) a batch's rows are split over: where a step pins its rollout rows."""
    return tuple(a for a in (rules["batch"] or ()) if mesh.shape.get(a, 1) > 1)


def check_batch_splits(batch_size: int, mesh: Mesh, what: str = "batch size", rules=RULES) -> None:
    """Raise a MeshError naming `what` when `batch_size` rows do not split over the batch's mesh axes."""
    split = math.prod(mesh.shape[a] for a in batch_mesh_axes(mesh, rules))
    if batch_size % split:
        raise MeshError(f"{what} {batch_size} does not split over the mesh's data x fsdp = {split} devices "
                        f"(mesh {dict(mesh.shape)})")


def batch_groups(mesh: Mesh, rules=RULES) -> int:
    """How many pieces this process's rows of a batch are split into over the mesh (data x fsdp devices over
    the processes): the groups `inputs.group_vision_inputs` packs the images into."""
    return max(1, math.prod(mesh.shape[a] for a in batch_mesh_axes(mesh, rules)) // jax.process_count())


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all of them by default), e.g. `make_mesh({"fsdp": -1})`."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    return Mesh(np.asarray(devices).reshape([shape[a] for a in MESH_AXES]), MESH_AXES)


def logical_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                 rules: Mapping[str, tuple[str, ...] | None] = RULES, report: list | None = None) -> PartitionSpec:
    """The PartitionSpec `rules` give an array of `shape` whose dimensions are named `axes`.

    A mesh axis of size 1 is left out; a mesh axis already used by an earlier dimension is not used twice;
    a dimension that does not divide by its mesh axes' size stays whole, and `(axes, shape, dim)` is
    appended to `report`."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for i, (name, size) in enumerate(zip(axes, shape)):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule (sharding.RULES)")
        targets = [a for a in (rules[name] or ()) if mesh.shape.get(a, 1) > 1 and a not in used] if name else []
        split = math.prod(mesh.shape[a] for a in targets)
        if targets and size % split:
            if report is not None:
                report.append((tuple(axes), tuple(shape), i))
            targets = []
        used.update(targets)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else tuple(targets))
    return PartitionSpec(*spec)


def decode_placement(mesh: Mesh, rules=DECODE_RULES):
    """For `TextDecoder.decode_weights`: (fuse, place). `place(array, logical_axes)` pins a prepared decode weight
    to its `DECODE_RULES` layout on `mesh`; q/k/v and gate/up are fused only where the tensor axis is 1 (fused
    along their output axis, tensor-split weights would move between devices). `mesh` has Auto axes, as the
    sampler's rows and `make_mesh` give it."""
    return mesh.shape.get("tensor", 1) == 1, _pinner(mesh, rules)


def _pinner(mesh: Mesh, rules):
    """`pin(array, logical_axes) -> array`: a sharding constraint to the layout `rules` give those axes on `mesh`."""

    def pin(x, axes):
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_spec(axes, x.shape, mesh, rules)))

    return pin


def activation_layout(mesh: Mesh | None, rules=RULES):
    """A context in which the model's activations are pinned to the layout `rules` give their logical axes on
    `mesh` (`layers.constrain`); enter it inside the traced function (a jitted step's body). None: no pinning."""
    from .models.qwen2_5_vl.layers import activation_layout as layout

    return layout(None if mesh is None else _pinner(mesh, rules))


def _is_param(x) -> bool:
    return isinstance(x, nnx.Variable)


def param_specs(params: nnx.State, mesh: Mesh, rules=RULES, report: list | None = None) -> nnx.State:
    """The params' tree (as `nnx.split(model, nnx.Param)` gives it) with a PartitionSpec in place of each
    value, from the logical axes each parameter carries."""
    def spec(v):
        axes = v.get_metadata().get("logical_axes")
        if axes is None:
            raise KeyError(f"a parameter of shape {v.value.shape} names no logical axes")
        return v.replace(logical_spec(axes, v.value.shape, mesh, rules, report))

    return jax.tree.map(spec, params, is_leaf=_is_param)


def _named(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def param_shardings(params: nnx.State, mesh: Mesh, rules=RULES, report: list | None = None):
    """`param_specs` as NamedShardings: what `jax.device_put` and `jax.jit` take."""
    return _named(mesh, param_specs(params, mesh, rules, report))


def _path_key(path) -> tuple:
    return tuple(str(p) for p in path)


def state_shardings(state, mesh: Mesh, rules=RULES):
    """Shardings for a whole train state (a pytree with `.params` and optimizer state built from them): the
    params by `param_shardings`; an optimizer-state leaf whose path ends with a parameter's path and has its
    shape (Adam's moments) like that parameter; everything else (step counters, the rng) whole."""
    by_path, shapes = {}, {}
    for (path, sharding), (_, value) in zip(
            jax.tree_util.tree_flatten_with_path(param_shardings(state.params, mesh, rules))[0],
            jax.tree_util.tree_flatten_with_path(state.params)[0]):
        by_path[_path_key(path)], shapes[_path_key(path)] = sharding, np.shape(value)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        key = _path_key(path)
        for n in range(len(key), 0, -1):
            tail = key[-n:]
            if tail in by_path and shapes[tail] == np.shape(leaf):
                return by_path[tail]
        return replicated

    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    return jax.tree_util.tree_unflatten(treedef, [pick(p, x) for p, x in flat])


def batch_shardings(batch: Mapping, mesh: Mesh, rules=RULES, *, micro: bool = True, processes: int = 1):
    """Shardings for a step batch (`BATCH_AXES`: the batch dimension split over data x fsdp; images grouped per
    device split over their group axis; anything else whole), stacked on a leading micro-batch axis when
    `micro`; nested dicts (a GRPO micro-batch's prompt) alike. `processes` > 1: `batch` is one process's rows
    of a global batch that many times larger (`global_batch` builds it). Raises a MeshError naming the array
    when its batch does not divide over the mesh."""
    lead = ("micro",) if micro else ()
    grouped = np.ndim(batch.get("pixel_values")) == len(lead) + 3

    def split(key, value, axes):
        shape = list(np.shape(value))
        shape[axes.index("batch")] *= processes
        shape = tuple(shape)
        check_batch_splits(shape[axes.index("batch")], mesh, f"batch array {key!r} of shape {shape}: its batch", rules)
        return NamedSharding(mesh, logical_spec(axes, shape, mesh, rules))

    out = {}
    for key, value in batch.items():
        if isinstance(value, Mapping) and key != "vision":
            out[key] = batch_shardings(value, mesh, rules, micro=micro, processes=processes)
        elif grouped and key in ("pixel_values", "vision"):
            out[key] = jax.tree.map(
                lambda v, key=key: split(key, v, (*lead, "batch") + (None,) * (np.ndim(v) - len(lead) - 1)), value)
        elif BATCH_AXES.get(key) is None or isinstance(value, Mapping):
            out[key] = jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), value)
        else:
            out[key] = split(key, value, (*lead, *BATCH_AXES[key]))
    return out


def place(tree, shardings):
    """`jax.device_put` of a pytree onto its shardings (host arrays or arrays already on devices). With several
    processes every process passes the same whole values and keeps the pieces its devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, s):
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


def global_batch(local, shardings):
    """One process's rows of a batch (host arrays, as `batch_shardings(..., processes=N)` describes them) as
    the global arrays of the step: each process gives its devices' rows, nothing is copied between hosts."""
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), local, shardings)


def check_process_layout(mesh: Mesh, rules=RULES, processes: int | None = None) -> None:
    """A multi-process mesh must give each process whole batch shards, in process order: every device of a
    batch shard (the tensor axis, which holds one shard's copies) on one host, and the hosts' shards
    consecutive, so each host feeds exactly its own rows. Raise a MeshError naming the mesh otherwise."""
    batch_axes = [a for a in MESH_AXES if a in (rules["batch"] or ())]
    other = [a for a in MESH_AXES if a not in batch_axes]
    order = [MESH_AXES.index(a) for a in batch_axes + other]
    shards = np.asarray(mesh.devices).transpose(order).reshape(math.prod(mesh.shape[a] for a in batch_axes), -1)
    owner = np.vectorize(lambda d: d.process_index)(shards)
    procs = jax.process_count() if processes is None else processes
    per = len(shards) // procs if len(shards) % procs == 0 else 0
    if not per or any(len(set(row)) > 1 for row in owner.tolist()) or \
            owner[:, 0].tolist() != [i // per for i in range(len(shards))]:
        raise MeshError(f"mesh {dict(mesh.shape)} does not give each of the {procs} processes whole batch shards: "
                        f"data x fsdp must be a multiple of the process count, and tensor at most the devices of "
                        f"one host ({len(shards) * shards.shape[1] // procs})")
