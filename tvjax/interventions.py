"""Intervention pytrees and the pure functions that apply them inside the model.

An intervention is data: it travels through `jax.jit`, `jax.grad`, shardings, Optax
and Orbax like any other pytree. `None` means no intervention and compiles to the
plain model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tvjax.config import ModelConfig


class HeadBlend(NamedTuple):
    """Soft task vector: blend each head's output with its task mean.

    At edited positions every head output `o` becomes `o + sigmoid(theta) * (mu - o)`.

    Attributes:
      theta: `[L, N]` blend logits (sigmoid(theta) is the weight on the mean).
      mu: `[L, N, H]` per-head mean outputs (before the output projection).
    """

    theta: jax.Array
    mu: jax.Array

    @classmethod
    def zeros(cls, config: ModelConfig, init: float = 0.0) -> "HeadBlend":
        """A blend with every logit at `init` and zero means, shaped for `config`."""
        L, N, H = config.n_layers, config.n_heads, config.head_dim
        return cls(jnp.full((L, N), init, jnp.float32), jnp.zeros((L, N, H), jnp.float32))


def check_blend(config: ModelConfig, blend: HeadBlend) -> None:
    """Raise a ValueError naming both shapes when `blend` does not fit `config`."""
    L, N, H = config.n_layers, config.n_heads, config.head_dim
    want = {"theta": (L, N), "mu": (L, N, H)}
    got = {"theta": tuple(jnp.shape(blend.theta)), "mu": tuple(jnp.shape(blend.mu))}
    if got != want:
        raise ValueError(
            f"HeadBlend does not fit this model: got theta {got['theta']}, mu {got['mu']}; "
            f"the model ({config.family}, L={L} layers, N={N} heads, H={H} head dim) needs "
            f"theta {want['theta']}, mu {want['mu']}"
        )


def blend_heads(
    heads: jax.Array, theta: jax.Array, mu: jax.Array, edit_mask: jax.Array
) -> jax.Array:
    """Apply one layer's soft task vector to its head outputs.

    Args:
      heads: `[B, T, N, H]` head outputs before the output projection.
      theta: `[N]` blend logits for this layer.
      mu: `[N, H]` mean head outputs for this layer.
      edit_mask: `[B, T]` bool, positions to edit.
    Returns:
      `[B, T, N, H]` in `heads.dtype`; the blend itself is computed in float32.
    """
    weight = jax.nn.sigmoid(theta.astype(jnp.float32))[None, None, :, None]  # [1, 1, N, 1]
    weight = weight * edit_mask[:, :, None, None].astype(jnp.float32)  # [B, T, N, 1]
    h32 = heads.astype(jnp.float32)
    return (h32 + weight * (mu.astype(jnp.float32) - h32)).astype(heads.dtype)
