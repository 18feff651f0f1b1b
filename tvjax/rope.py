"""Rotary position embeddings in Hugging Face's split-half layout, with rope scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from tvjax.config import ROPE_TYPES, ModelConfig


def inverse_frequencies(config: ModelConfig, local: bool = False) -> np.ndarray:
    """Per-pair rotation frequencies, float32 `[R // 2]` with R = config.rope_dim.

    `local`: those of the sliding-window layers (`config.local_rope_theta`, no scaling).
    """
    dim = config.rope_dim
    theta = config.local_rope_theta if local else config.rope_theta
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    # The power correctly rounded to float32, as PyTorch's float32 pow (nearly always) gives: numpy's
    # float32 pow is an ulp off on a fifth of the entries, which a 1e6 base turns into 1e-4 errors in
    # the logits by position 700.
    inv_freq = np.float32(1.0) / (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    scaling = {} if local else dict(config.rope_scaling)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / np.float32(scaling["factor"])
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"rope scaling type {kind!r} is not supported; supported: {ROPE_TYPES}")


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
    """Rotate the leading `2 * len(inv_freq)` dims of every head.

    Args:
      x: `[B, T, N, H]` queries or keys.
      positions: `[B, T]` integer positions.
      inv_freq: `[R // 2]` from `inverse_frequencies`.
    Returns:
      `[B, T, N, H]`, same dtype as `x`.
    """
    rot = 2 * inv_freq.shape[0]
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, R/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x_rot, x_pass = x[..., :rot].astype(jnp.float32), x[..., rot:]
    x1, x2 = x_rot[..., : rot // 2], x_rot[..., rot // 2 :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x.dtype), x_pass], axis=-1)
