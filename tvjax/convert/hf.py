"""Hugging Face checkpoints: local directories of safetensors, or hub ids. No torch."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
from jax.sharding import Mesh, NamedSharding
from tqdm.auto import tqdm

from tvjax.config import ModelConfig
from tvjax.convert.architectures import config_from_hf, weight_table
from tvjax.model import Params, init_params, param_axes
from tvjax.sharding import partition_spec

HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not match its config."""


def read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: not a Hugging Face checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


class SafetensorsReader:
    """Name -> memory-mapped numpy array over one or many `*.safetensors` files (index file honoured).

    Nothing is read until an array's values are used, and then only the pages touched:
    slicing a tensor reads the slice.
    """

    def __init__(self, directory: Path):
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory} holds no *.safetensors weights (tvjax reads safetensors, not .bin)")
        self.tensors = {}
        for name in files:
            path = directory / name
            if not path.is_file():
                raise CheckpointError(f"{path} is listed in {index.name} but missing")
            try:
                safetensors.safe_open(str(path), framework="numpy")  # validates the header
            except Exception as e:  # safetensors raises its own error types for truncated headers
                raise CheckpointError(f"{path} is unreadable or truncated: {e}") from e
            self.tensors.update(_memory_mapped(path))

    def __contains__(self, name: str) -> bool:
        return self._resolve(name) is not None

    def _resolve(self, name: str) -> str | None:
        # Some checkpoints (e.g. the original `gpt2`) omit the `transformer.` / `model.` prefix.
        for candidate in (name, name.split(".", 1)[-1]):
            if candidate in self.tensors:
                return candidate
        return None

    def __call__(self, name: str) -> np.ndarray:
        key = self._resolve(name)
        if key is None:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint")
        return self.tensors[key]


_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _memory_mapped(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only memory-mapped array."""
    data = np.memmap(path, np.uint8, mode="r")
    start = 8 + int.from_bytes(data[:8].tobytes(), "little")  # the header is JSON after its u64 length
    header = json.loads(data[8:start].tobytes())
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        begin, end = (start + offset for offset in info["data_offsets"])
        if end > len(data) or info["dtype"] not in _DTYPES:
            raise CheckpointError(f"could not read tensor {name!r} from {path} (truncated file, or dtype "
                                  f"{info['dtype']} not in {sorted(_DTYPES)})")
        tensors[name] = data[begin:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def convert(config: ModelConfig, get: Callable[[str], np.ndarray], mesh: Mesh | None = None) -> Params:
    """Build params for `config` from a tensor getter.

    `get(name)` returns the checkpoint tensor `name` (Hugging Face naming) as a numpy
    array (memory-mapped ones are read lazily). Layer weights are stacked along a leading
    `L` axis; leaves get `config.dtype`. With a `mesh`, each param goes straight into its
    sharding (`tvjax.model.param_axes`): every device gets only its shard, sliced from
    the checkpoint tensors, so neither a device nor a host holds the whole model.
    """
    glob, layer = weight_table(config)
    expected = jax.eval_shape(functools.partial(init_params, config), jax.random.PRNGKey(0))
    axes = None if mesh is None else param_axes(config)
    params: dict = {}
    entries = [(path, name, fn, None) for path, (name, fn) in glob.items()]
    entries += [(("layers",) + path, name, fn, config.n_layers) for path, (name, fn) in layer.items()]
    for path, name, fn, n_layers in tqdm(entries, desc="converting weights", leave=False, disable=None):
        want = _lookup(expected, path).shape
        if n_layers is None:
            value = _transform(fn, get, name, path)
        else:
            value = _Stacked([_transform(fn, get, name.format(i=i), path) for i in range(n_layers)])
        if value.shape != want:
            raise CheckpointError(f"{name}: converted to shape {value.shape}, which does not fit the config "
                                  f"({'/'.join(path)} needs {want})")
        sharding = None if mesh is None else NamedSharding(mesh, partition_spec(_lookup(axes, path), want,
                                                                                dict(mesh.shape)))
        _insert(params, path, _place(value, config.jnp_dtype, sharding))
    return params


class _Stacked:
    """Per-layer arrays seen as one `[L, ...]` array; indexing reads only the indexed layers and slices."""

    def __init__(self, layers: list[np.ndarray]):
        self.layers = layers
        self.shape = (len(layers),) + layers[0].shape

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        return np.stack([np.asarray(layer[index[1:]]) for layer in self.layers[index[0]]])


def _place(value, dtype, sharding) -> jax.Array:
    """`value` (an array or `_Stacked`) as a `dtype` jax array: on the default device, or each device's
    shard of `sharding` read separately (once per distinct shard)."""
    whole = (slice(None),) * len(value.shape)
    if sharding is None:
        return jnp.asarray(value[whole], dtype=dtype)
    shards = {}

    def shard(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in shards:
            shards[key] = np.asarray(value[index], dtype)
        return shards[key]

    return jax.make_array_from_callback(value.shape, sharding, shard)


def _transform(fn, get, name: str, path: tuple[str, ...]) -> np.ndarray:
    raw = get(name)
    try:
        return fn(raw)
    except ValueError as e:
        raise CheckpointError(f"{name} has shape {raw.shape}, which does not fit the config "
                              f"(for {'/'.join(path)}: {e})") from e


def _lookup(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _insert(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def load_directory(directory: str | os.PathLike, dtype: str = "float32",
                   mesh: Mesh | None = None) -> tuple[ModelConfig, Params]:
    """Convert a local Hugging Face checkpoint directory (config.json + safetensors), onto `mesh` if given."""
    config = config_from_hf(read_config(Path(directory))).replace(dtype=dtype)
    return config, convert(config, SafetensorsReader(Path(directory)), mesh)


def download(repo_id: str) -> Path:
    """Fetch (or find in the local hub cache) a hub checkpoint; a clear error when offline."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as e:
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"If this machine is offline, download the checkpoint where the Hub is reachable "
            f"(`hf download {repo_id} --local-dir DIR`), copy DIR here and pass the local "
            f"directory instead: tvjax.load('DIR')"
        ) from e
