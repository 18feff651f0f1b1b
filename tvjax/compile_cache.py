"""A persistent XLA compilation cache: a later run loads its compiled programs from disk.

Every jitted entry point (means, prefill, fit step, validation loss, generation) compiles
once per shape; with the cache a second `tvjax fit` of any task with the same shapes
skips those compiles. Keys include the program, its shapes and shardings, the backend
and the jax/jaxlib versions, so a stale entry is never used.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from tvjax.files import cache_root


def enable_compilation_cache(directory: str | Path | None = None) -> Path:
    """Cache compiled programs in `directory` (default: `$JAX_COMPILATION_CACHE_DIR` when the user set
    one, else `<tvjax cache>/xla`); returns the directory.

    Call it before the first compile. It sets JAX's process-wide `jax_compilation_cache_dir`.
    """
    if directory is None:
        directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or cache_root() / "xla"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory
