"""The task-vector file: safetensors arrays plus JSON metadata, readable without JAX.

One `.safetensors` file holds `theta` `[L, N]` (blend logits) and `mu` `[L, N, H]`
(head means), float32; its header metadata holds `format`, `format_version`, the
model's shape (`family`, `n_layers`, `n_heads`, `head_dim`, `d_model`) and free-form
JSON `info` (model name, task, hyperparameters, scores, tvjax version).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

FORMAT = "tvjax-task-vector"
FORMAT_VERSION = 1
SHAPE_KEYS = ("family", "n_layers", "n_heads", "head_dim", "d_model")


class TaskVectorError(ValueError):
    """A task-vector file that is unreadable, of another format, or made for another model."""


class TaskVector(NamedTuple):
    theta: np.ndarray  # [L, N] blend logits
    mu: np.ndarray  # [L, N, H] head means
    model: dict  # the model shape it was fitted on (SHAPE_KEYS)
    info: dict  # free-form metadata

    def blend(self):
        """As a `tvjax.HeadBlend` (imports JAX)."""
        from tvjax.interventions import HeadBlend

        return HeadBlend(self.theta, self.mu)

    def check(self, config) -> None:
        """Raise `TaskVectorError` naming both shapes if `config` (a ModelConfig) differs."""
        want = model_shape(config)
        if self.model != want:
            raise TaskVectorError(f"task vector made for model {self.model} cannot be applied to model {want}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write this task vector (arrays, model shape, info) to `path` with `save_task_vector`."""
        return save_task_vector(path, self.theta, self.mu, SimpleNamespace(**self.model), **self.info)


def model_shape(config) -> dict:
    return {k: getattr(config, k) for k in SHAPE_KEYS}


def save_task_vector(path: str | os.PathLike, theta, mu, config, **info) -> Path:
    """Write `theta` `[L, N]` and `mu` `[L, N, H]` fitted on `config`'s model to `path` (atomically)."""
    path = Path(path)
    theta, mu = np.asarray(theta, np.float32), np.asarray(mu, np.float32)
    shape = model_shape(config)
    if theta.shape != (shape["n_layers"], shape["n_heads"]) or mu.shape != theta.shape + (shape["head_dim"],):
        raise TaskVectorError(f"theta {theta.shape} / mu {mu.shape} do not fit model {shape}")
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "model": json.dumps(shape),
                "info": json.dumps(info, default=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file({"theta": theta, "mu": mu}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_task_vector(path: str | os.PathLike) -> TaskVector:
    """Read a task-vector file written by `save_task_vector`."""
    path = Path(path)
    if not path.is_file():
        raise TaskVectorError(f"no task-vector file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise TaskVectorError(f"{path} is not a readable task-vector file (truncated?): {e}") from e
    if metadata.get("format") != FORMAT or {"theta", "mu"} - arrays.keys():
        raise TaskVectorError(f"{path} is not a tvjax task vector (format {metadata.get('format')!r})")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise TaskVectorError(f"{path} has format version {metadata['format_version']}; this tvjax reads up to "
                              f"{FORMAT_VERSION}: upgrade tvjax")
    return TaskVector(arrays["theta"], arrays["mu"], json.loads(metadata["model"]), json.loads(metadata["info"]))
