"""Meshes, logical axis names, and the one table that maps them onto mesh axes.

Every array dimension has a logical name (`batch`, `length`, `embed`, `heads`,
`kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`); `RULES` maps names to the mesh
axes `data`, `fsdp` and `tensor`. Params get their names from `PARAM_AXES` (by
path), activations from `constrain` calls in the model, and the fit, mean-extraction
and generation steps are `jax.jit`-compiled with explicit in/out shardings from the
same table (`Placement.run`).

A mesh axis that does not divide a dimension leaves that dimension replicated over
it (e.g. 4 heads on `tensor=8`: the heads are replicated, the MLP and vocab are
still split), so every mesh runs every model.

The task vector: `mu [L, N, H]` is sharded over heads like the attention; `theta
[L, N]` and its optimizer state are replicated (16,128 floats for Llama-3.1-405B),
so every process holds the fitted weights.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from tvjax.interventions import HeadBlend

MESH_AXES = ("data", "fsdp", "tensor")

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

# Param path (scanned layer params: after their leading "layers") -> logical axes.
_NORM = ("embed",)
PARAM_AXES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ("embed", "embedding"): ("vocab", "embed"),
    ("pos_embed", "embedding"): (None, "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
    ("final_norm", "scale"): _NORM, ("final_norm", "bias"): _NORM,
    ("ln1", "scale"): _NORM, ("ln1", "bias"): _NORM, ("ln2", "scale"): _NORM, ("ln2", "bias"): _NORM,
    ("attn", "q", "kernel"): ("embed", "heads", "head_dim"),
    ("attn", "k", "kernel"): ("embed", "kv_heads", "head_dim"),
    ("attn", "v", "kernel"): ("embed", "kv_heads", "head_dim"),
    ("attn", "o", "kernel"): ("heads", "head_dim", "embed"),
    ("attn", "q", "bias"): ("heads", "head_dim"),
    ("attn", "k", "bias"): ("kv_heads", "head_dim"),
    ("attn", "v", "bias"): ("kv_heads", "head_dim"),
    ("attn", "o", "bias"): ("embed",),
    ("mlp", "gate", "kernel"): ("embed", "mlp"),
    ("mlp", "up", "kernel"): ("embed", "mlp"),
    ("mlp", "down", "kernel"): ("mlp", "embed"),
    ("mlp", "gate", "bias"): ("mlp",),
    ("mlp", "up", "bias"): ("mlp",),
    ("mlp", "down", "bias"): ("embed",),
}
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")  # KVCache k, v [L, B, S, K, H]
MU_AXES = ("layers", "heads", "head_dim")  # HeadBlend.mu [L, N, H]


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


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
    """Inside `jax.jit`: `x` sharded by its logical `axes` on the mesh in context; without one, `x`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(axes, x.shape, dict(mesh.shape)))


def param_axes(path: tuple[str, ...]) -> tuple[str | None, ...]:
    """Logical axes of the param at `path` (e.g. `('layers', 'attn', 'q', 'kernel')`)."""
    layered = path[0] == "layers"
    key = path[1:] if layered else path
    if key not in PARAM_AXES:
        raise KeyError(f"param {'/'.join(path)} has no logical axes: add {key} to tvjax.sharding.PARAM_AXES")
    return ("layers",) * layered + PARAM_AXES[key]


def mesh_of(tree) -> Mesh | None:
    """The mesh `tree`'s arrays were placed on (`tvjax.load(..., mesh=...)`); None on one device."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


class Placement:
    """Shardings of tvjax's arrays on one mesh, and jitted calls with them.

    With `mesh=None` (one device) every sharding is None and `run` calls the function as is.
    """

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh

    @classmethod
    def of(cls, params) -> "Placement":
        """Where `params` live."""
        return cls(mesh_of(params))

    def sharding(self, shape: tuple[int, ...], *axes: str | None) -> NamedSharding | None:
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, logical_spec(axes, tuple(shape), dict(self.mesh.shape)))

    @property
    def replicated(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

    def batch(self, x) -> NamedSharding | None:
        """`[B, ...]` split over the batch: token and mask arrays."""
        return self.sharding(np.shape(x), "batch", *(None,) * (np.ndim(x) - 1))

    def params(self, params):
        """Param shardings (by `PARAM_AXES`) for params or their `jax.ShapeDtypeStruct`s."""
        return jax.tree_util.tree_map_with_path(
            lambda path, x: self.sharding(x.shape, *param_axes(tuple(k.key for k in path))), params)

    def interventions(self, tree):
        """Shardings of interventions (None, a `HeadBlend` or a pytree of them): a `HeadBlend`'s
        mu split over heads, every other leaf (theta included) replicated."""

        def one(x):
            if isinstance(x, HeadBlend):
                return HeadBlend(self.replicated, self.sharding(np.shape(x.mu), *MU_AXES))
            return jax.tree.map(lambda _: self.replicated, x)

        return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, HeadBlend))

    def cache(self, cache):
        """A `KVCache`'s shardings: k, v by `CACHE_AXES`, the mask over the batch, `end` replicated."""
        kv = self.sharding(cache.k.shape, *CACHE_AXES)
        return cache._replace(k=kv, v=kv, mask=self.batch(cache.mask), end=self.replicated)

    def put(self, tree, shardings):
        """`tree` placed on the mesh (host arrays too, in every process); as is on one device."""
        return tree if self.mesh is None else jax.device_put(tree, shardings)

    def run(self, fn, args: tuple, in_shardings, out_shardings, donate: tuple[int, ...] = (), **static):
        """`fn(*args, **static)` under `jax.jit` with explicit in/out shardings over the mesh.

        Args are placed first (a no-op for arrays already there); static (hashable)
        keywords are bound, and each (function, statics, shardings) compiles once.
        """
        if self.mesh is None:
            return fn(*args, **static)
        with jax.set_mesh(self.mesh):
            return self.jit(fn, in_shardings, out_shardings, donate, **static)(*self.put(args, in_shardings))

    def lower(self, fn, args: tuple, in_shardings, out_shardings, donate: tuple[int, ...] = (), **static):
        """What `run` would compile, lowered for `args` (arrays or `jax.ShapeDtypeStruct`s)."""
        with jax.set_mesh(self.mesh):
            return self.jit(fn, in_shardings, out_shardings, donate, **static).lower(*args)

    @staticmethod
    def jit(fn, in_shardings, out_shardings, donate: tuple[int, ...] = (), **static):
        """The jitted `fn`, cached per (function, statics, shardings) so that each compiles once."""
        ins, outs = jax.tree.flatten(in_shardings), jax.tree.flatten(out_shardings)
        return _jit(fn, tuple(sorted(static.items())), tuple(ins[0]), ins[1], tuple(outs[0]), outs[1], donate)


@functools.lru_cache(maxsize=256)
def _jit(fn, static, in_leaves, in_tree, out_leaves, out_tree, donate):
    return jax.jit(functools.partial(fn, **dict(static)), in_shardings=jax.tree.unflatten(in_tree, in_leaves),
                   out_shardings=jax.tree.unflatten(out_tree, out_leaves), donate_argnums=donate)


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
