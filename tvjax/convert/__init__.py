"""Checkpoint loaders: the default model, Hugging Face directories, hub ids and GGUF files.

Importing this package (or its JAX-free `architectures`) does not import JAX: the loaders
are imported on first use, and `CheckpointError` and `DEFAULT_MODEL` when first asked for.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tvjax.config import ModelConfig
from tvjax.convert.architectures import SUPPORTED, UnsupportedArchitecture, config_from_hf

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from tvjax.model import Params

__all__ = ["Model", "load", "CheckpointError", "UnsupportedArchitecture", "SUPPORTED", "DEFAULT_MODEL"]
_LAZY = {"CheckpointError": "tvjax.convert.hf", "DEFAULT_MODEL": "tvjax.convert.default"}  # name -> its module
# Imported without PyTorch, transformers logs that its models are unavailable: tvjax uses only its tokenizers.
logging.getLogger("transformers").addFilter(lambda record: not record.getMessage().startswith("PyTorch was not found"))


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Model(NamedTuple):
    """A loaded model: unpack as `config, params, tokenizer = tvjax.load()`."""

    config: ModelConfig
    params: Params
    tokenizer: Any  # a transformers tokenizer, or None when the checkpoint has none


def load(name: str | os.PathLike | None = None, *, dtype: str = "float32", mesh: Mesh | None = None) -> Model:
    """Load a model by name.

    Args:
      name: None or 'smollm2-135m' (the embedded default model), a local Hugging Face
        checkpoint directory, a `.gguf` file, or a hub id such as 'meta-llama/Llama-3.2-1B'.
      dtype: 'float32' (default) or 'bfloat16' for params and activations.
      mesh: a `tvjax.sharding.make_mesh` mesh: each param goes straight into its sharding
        (each process reads only its devices' slices); fitting, means and evaluation then
        run on that mesh. None: one device.
    """
    from tvjax.convert.default import DEFAULT_MODEL, EMBEDDED, model_dir
    from tvjax.convert.gguf import read_gguf
    from tvjax.convert.hf import CheckpointError, convert, download
    from tvjax.convert.tokenizer import gguf_tokenizer

    if name is None or name in EMBEDDED:
        return _load_directory(model_dir(name or DEFAULT_MODEL), dtype, mesh)
    path = Path(name)
    if path.suffix == ".gguf":
        hf_config, tensors = read_gguf(path)
        config = config_from_hf(hf_config).replace(dtype=dtype)
        return Model(config, convert(config, lambda k: _get(tensors, k, path), mesh), gguf_tokenizer(path))
    if path.is_dir():
        return _load_directory(path, dtype, mesh)
    if path.exists() or str(name).count("/") != 1 or str(name).startswith((".", "/")):
        raise CheckpointError(
            f"{name!r} is not a checkpoint directory, a .gguf file or a hub id (owner/name); "
            f"use None or {DEFAULT_MODEL!r} for the default model; embedded models: {', '.join(EMBEDDED)}"
        )
    return _load_directory(download(str(name)), dtype, mesh)


def _load_directory(directory: Path, dtype: str, mesh: Mesh | None) -> Model:
    from tvjax.convert.hf import load_directory

    config, params = load_directory(directory, dtype, mesh)
    return Model(config, params, _tokenizer(directory))


def _tokenizer(directory: Path):
    if not any(directory.glob("tokenizer*")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def _get(tensors: dict, name: str, path: Path):
    from tvjax.convert.hf import CheckpointError

    if name not in tensors:
        raise CheckpointError(f"{path}: tensor {name!r} is missing")
    return tensors[name]
