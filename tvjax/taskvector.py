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
    check_values(path, theta, mu)
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
    model, info = (_json_entry(path, metadata, key) for key in ("model", "info"))
    missing = [k for k in SHAPE_KEYS if k not in model]
    if missing:
        raise TaskVectorError(f"{path}: the model metadata lacks {', '.join(missing)} (it has {sorted(model)}); "
                              f"write the file with tvjax.save_task_vector")
    theta, mu = arrays["theta"], arrays["mu"]
    want = (model["n_layers"], model["n_heads"])
    if theta.shape != want or mu.shape != want + (model["head_dim"],):
        raise TaskVectorError(f"{path}: arrays theta {theta.shape}, mu {mu.shape} disagree with the model metadata "
                              f"{model}, which needs theta {want}, mu {want + (model['head_dim'],)}")
    check_values(path, theta, mu)
    return TaskVector(theta, mu, model, info)


def check_values(path, theta: np.ndarray, mu: np.ndarray) -> None:
    """Refuse NaN anywhere and infinite means; theta may be +-inf (a hard head set: exactly the mean or
    exactly the head)."""
    for name, array, bad in (("theta", theta, np.isnan(theta)), ("mu", mu, ~np.isfinite(mu))):
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise TaskVectorError(f"{path}: {name} has {int(bad.sum())} {'NaN' if name == 'theta' else 'non-finite'} "
                                  f"value(s), the first at {where}; a task vector needs finite means and no NaN")


def _json_entry(path: Path, metadata: dict, key: str) -> dict:
    """The metadata entry `key`, parsed as a JSON object."""
    if key not in metadata:
        raise TaskVectorError(f"{path}: the metadata lacks {key!r} (it has {sorted(metadata)}); "
                              f"write the file with tvjax.save_task_vector")
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise TaskVectorError(f"{path}: the metadata entry {key!r} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise TaskVectorError(f"{path}: the metadata entry {key!r} must be a JSON object, got {value!r}")
    return value
