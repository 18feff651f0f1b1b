"""Meshes, and one table that maps every array dimension onto the mesh.

Arrays name their dimensions with tvjax's dimension letters (`tvjax.config`): `LETTERS`
maps each letter to a logical axis (`batch`, `length`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`, `vocab`, `layers`) and `RULES` maps logical axes to the mesh axes
`data`, `fsdp` and `tensor`. Params take their letters from the einsums that use them
(`tvjax.model.Einsum` declares its kernel's axes from its equation), activations from
`constrain(x, "BTNH")` calls in the model, interventions from their `axes()`.

One way onto a mesh: a public entry point enters the mesh of its params
(`with on_mesh(params):`), places its host inputs by their letters (`put`) and calls a
kernel that was `jax.jit`-compiled once; inside, `constrain` pins activations and outputs.
Without a mesh (one device) every one of these is the identity.

A mesh axis that does not divide a dimension leaves that dimension replicated over
it (e.g. 4 heads on `tensor=8`: the heads are replicated, the MLP and vocab are
still split), so every mesh runs every model.

The task vector: `mu [L, N, H]` is sharded over heads like the attention; `theta
[L, N]` and its optimizer state are replicated (16,128 floats for Llama-3.1-405B),
so every process holds the fitted weights.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Dimension letter -> logical axis (letters not listed, e.g. G or a stacking axis C, are never split).
LETTERS = {"B": "batch", "R": "batch", "A": "batch", "T": "length", "S": "length", "D": "embed", "N": "heads",
           "K": "kv_heads", "H": "head_dim", "F": "mlp", "V": "vocab", "L": "layers"}

# Logical axis -> mesh axes, in priority order. One mesh axis serves one dimension of an
# array, so activations (which have `batch`) split the batch over data x fsdp and keep
# `embed` whole, while params (no `batch`) split `embed` over fsdp: that is FSDP.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
)


def logical_axes(letters: str) -> tuple[str | None, ...]:
    """`'BTNH'` -> `('batch', 'length', 'heads', 'head_dim')` (None for letters never split)."""
    return tuple(LETTERS.get(letter) for letter in letters)


def parse_mesh(spec: str) -> dict[str, int]:
    """`'data=2,fsdp=2,tensor=2'` -> `{'data': 2, 'fsdp': 2, 'tensor': 2}` (-1: the remaining devices)."""
    shape = {}
    for part in filter(None, spec.replace(" ", "").split(",")):
        name, _, size = part.partition("=")
        if name not in MESH_AXES or not size.lstrip("-").isdigit():
            raise ValueError(f"bad mesh entry {part!r} in {spec!r}: write axis=size with axes {MESH_AXES}, "
                             f"e.g. data=2,fsdp=2,tensor=2")
        shape[name] = int(size)
    return shape


def make_mesh(shape: dict[str, int] | str | None = None, devices=None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, tensor) over `devices` (default: all, across processes).

    `shape` gives axis sizes (a dict or `'data=2,fsdp=2,tensor=2'`); absent axes are 1,
    one axis may be -1 (the remaining devices); None puts every device on `data`.
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = parse_mesh(shape) if isinstance(shape, str) else dict(shape or {"data": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {MESH_AXES}")
    sizes = [shape.get(axis, 1) for axis in MESH_AXES]
    if sizes.count(-1) == 1:
        rest = len(devices) // math.prod(s for s in sizes if s != -1)
        sizes = [rest if s == -1 else s for s in sizes]
    if math.prod(sizes) != len(devices) or min(sizes) < 1:
        described = " x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
        raise ValueError(f"mesh {described} does not use the {len(devices)} devices: make the sizes multiply "
                         f"to {len(devices)} (one of them may be -1 for 'the rest')")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh_shape: dict[str, int],
                 rules=RULES) -> PartitionSpec:
    """The `PartitionSpec` for an array of `shape` whose dimensions are named `axes`.

    Rules apply in order; a mesh axis goes to a dimension only if it is unused in this
    array, larger than 1 and divides the dimension (with the axes already given to it).
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match an array of shape {shape}")
    assigned: list[list[str]] = [[] for _ in axes]
    used = set()
    for name, mesh_axes in rules:
        for dim, axis in enumerate(axes):
            if axis != name:
                continue
            for mesh_axis in mesh_axes:
                size = mesh_shape.get(mesh_axis, 1)
                split = math.prod(mesh_shape[a] for a in assigned[dim]) * size
                if size > 1 and mesh_axis not in used and shape[dim] % split == 0:
                    assigned[dim].append(mesh_axis)
                    used.add(mesh_axis)
    return PartitionSpec(*(tuple(a) if len(a) > 1 else a[0] if a else None for a in assigned))


def partition_spec(letters: str | None, shape: tuple[int, ...], mesh_shape: dict[str, int]) -> PartitionSpec:
    """The `PartitionSpec` of an array of `shape` whose dimensions are `letters` (None: replicated)."""
    if letters is None:
        return PartitionSpec()
    if len(letters) != len(shape):
        raise ValueError(f"axes {letters!r} do not match an array of shape {tuple(shape)}")
    return logical_spec(logical_axes(letters), tuple(shape), mesh_shape)


def constrain(tree, axes):
    """Inside `jax.jit`: `tree` sharded by its `axes` on the mesh in context; without one, `tree`.

    `axes`: dimension letters (`'BTNH'`) for an array, or a pytree prefix of `tree` whose
    leaves are letters or None (replicated), e.g. `HeadBlend(None, 'LNH')`.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return tree
    shape = dict(mesh.shape)
    constrain_one = lambda x, letters: jax.lax.with_sharding_constraint(x, partition_spec(letters, x.shape, shape))
    return _map_axes(constrain_one, tree, axes)


def put(tree, axes):
    """`tree` (arrays, host arrays or `jax.ShapeDtypeStruct`s) placed on the mesh in context by
    its `axes` (as in `constrain`), in every process; without a mesh, `tree` as it is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return tree
    shape = dict(mesh.shape)

    def place(x, letters):
        spec = partition_spec(letters, getattr(x, "shape", ()), shape)  # () for Python scalars
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=spec)
        return jax.device_put(x, spec)

    return _map_axes(place, tree, axes)


def _map_axes(fn, tree, axes):
    """`fn(leaf, letters)` over the leaves of `tree`, `axes` a pytree prefix of it (see `constrain`)."""
    is_axes = lambda a: a is None or isinstance(a, str)
    return jax.tree.map(lambda letters, sub: jax.tree.map(lambda x: fn(x, letters), sub), axes, tree,
                        is_leaf=is_axes)


def axes_of(x):
    """The sharding letters of `x`: its own `axes()` (an intervention, `tvjax.rows.Rows`), those of
    each item of a tuple or list of them, else None (replicated)."""
    if callable(getattr(x, "axes", None)):
        return x.axes()
    if isinstance(x, (tuple, list)) and not hasattr(x, "_fields"):
        return type(x)(axes_of(i) for i in x)
    return None


def placed(kernel):
    """`kernel(params, *args, **static)` (jitted) as an entry point: run on the params' mesh, each of
    `args` placed by its own letters (`axes_of`)."""

    @functools.wraps(kernel)
    def run(params, *args, **static):
        with on_mesh(params):
            return kernel(params, *(put(x, axes_of(x)) for x in args), **static)

    return run


def mesh_of(tree) -> Mesh | None:
    """The mesh `tree`'s arrays were placed on (`tvjax.load(..., mesh=...)`); None on one device."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


def on_mesh(params):
    """Context: the mesh `params` live on (`jax.set_mesh`), or nothing on one device."""
    mesh = mesh_of(params)
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def initialize_distributed(auto: bool = False) -> bool:
    """Join a multi-process run (`jax.distributed.initialize`) when the environment describes one.

    Explicitly: `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`
    and `JAX_PROCESS_ID`. With `auto`, JAX detects the cluster itself (Cloud TPU pods,
    SLURM, Open MPI). Call it before anything else touches JAX's devices. Returns
    whether this is a multi-process run.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address is None and not auto:
        return False
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(address, int(count) if count else None, int(index) if index else None)
    return True
