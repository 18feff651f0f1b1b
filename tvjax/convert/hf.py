"""Hugging Face checkpoints: local directories of safetensors, or hub ids. No torch."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
from tqdm.auto import tqdm

from tvjax.config import ModelConfig
from tvjax.convert.architectures import config_from_hf, weight_table
from tvjax.model import Params, init_params

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
    """Name -> numpy array over one or many `*.safetensors` files (index file honoured)."""

    def __init__(self, directory: Path):
        self.directory = directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{directory} holds no *.safetensors weights (tvjax reads safetensors, not .bin)")
        self.handles, self.where = {}, {}
        for name in files:
            path = directory / name
            if not path.is_file():
                raise CheckpointError(f"{path} is listed in {index.name} but missing")
            try:
                handle = safetensors.safe_open(str(path), framework="numpy")
            except Exception as e:  # safetensors raises its own error types for truncated headers
                raise CheckpointError(f"{path} is unreadable or truncated: {e}") from e
            self.handles[name] = handle
            self.where.update({k: name for k in handle.keys()})

    def __contains__(self, name: str) -> bool:
        return self._resolve(name) is not None

    def _resolve(self, name: str) -> str | None:
        # Some checkpoints (e.g. the original `gpt2`) omit the `transformer.` / `model.` prefix.
        for candidate in (name, name.split(".", 1)[-1]):
            if candidate in self.where:
                return candidate
        return None

    def __call__(self, name: str) -> np.ndarray:
        key = self._resolve(name)
        if key is None:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint")
        file = self.where[key]
        try:
            if self.handles[file].get_slice(key).get_dtype() == "BF16":  # numpy has no bfloat16
                with safetensors.safe_open(str(self.directory / file), framework="flax") as f:
                    return np.asarray(f.get_tensor(key))
            return self.handles[file].get_tensor(key)
        except Exception as e:
            raise CheckpointError(f"could not read tensor {key!r} from {file} (truncated file?): {e}") from e


def convert(config: ModelConfig, get: Callable[[str], np.ndarray]) -> Params:
    """Build params for `config` from a tensor getter.

    `get(name)` returns the checkpoint tensor `name` (Hugging Face naming) as numpy.
    Layer weights are stacked along a leading `L` axis; leaves get `config.dtype`.
    """
    glob, layer = weight_table(config)
    expected = jax.eval_shape(functools.partial(init_params, config), jax.random.PRNGKey(0))
    params: dict = {}
    entries = [(path, name, fn, None) for path, (name, fn) in glob.items()]
    entries += [(("layers",) + path, name, fn, config.n_layers) for path, (name, fn) in layer.items()]
    for path, name, fn, n_layers in tqdm(entries, desc="converting weights", leave=False, disable=None):
        want = _lookup(expected, path).shape
        if n_layers is None:
            value = _transform(fn, get, name, path)
        else:
            value = np.stack([_transform(fn, get, name.format(i=i), path) for i in range(n_layers)])
        if value.shape != want:
            raise CheckpointError(f"{name}: converted to shape {value.shape}, which does not fit the config "
                                  f"({'/'.join(path)} needs {want})")
        _insert(params, path, jnp.asarray(value, dtype=config.dtype))
    return params


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


def load_directory(directory: str | os.PathLike, dtype: str = "float32") -> tuple[ModelConfig, Params]:
    """Convert a local Hugging Face checkpoint directory (config.json + safetensors)."""
    config = config_from_hf(read_config(Path(directory))).replace(dtype=dtype)
    return config, convert(config, SafetensorsReader(Path(directory)))


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
