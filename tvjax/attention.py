"""Attention of a block of queries over cached and new keys: causal and sliding-window masks,
two implementations (einsums, `jax.nn.dot_product_attention`) and query blocks for long prompts.

Dimension letters are listed in `tvjax.config`.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp

from tvjax.config import ModelConfig


def attention_mask(key_mask: jax.Array, start: jax.Array, T: int, window) -> jax.Array:
    """`[B, T, S]` bool for queries at slots `start ... start + T - 1`: the key is real, not in
    the future, and inside the sliding `window` (an int or int32 scalar; None: any distance)."""
    S = key_mask.shape[1]
    q_slot = start + jnp.arange(T)[:, None]  # [T, 1]
    k_slot = jnp.arange(S)[None, :]  # [1, S]
    allowed = k_slot <= q_slot
    if window is not None:
        allowed &= q_slot - k_slot < window
    return key_mask[:, None, :] & allowed[None]


def attend(q, k, v, mask, write_at, config: ModelConfig) -> jax.Array:
    """Attention of queries at slots `write_at, write_at + 1, ...`, in blocks of queries.

    Args:
      q: `[B, T, N, H]` (after rotary).  k, v: `[B, S, K, H]`.
      mask: `mask(start, length)` -> `[B, length, S]` bool, the keys queries at slots
        `start ...` see.  write_at: int32 scalar, the first query's slot.
      config: `attention` picks the implementation; with more than `attention_chunk` queries,
        blocks of that many run one after another (each recomputed in the backward pass), so
        the scores and the mask take `[B, N, chunk, S]`, not `[B, N, T, S]`.
    Returns:
      The heads `[B, T, N, H]`, in the model dtype.
    """
    B, T, N, H = q.shape
    C = config.attention_chunk
    if C is None or T <= C:
        return _attend_block(q, k, v, mask(write_at, T), config)
    n = -(-T // C)
    blocks = jnp.pad(q, ((0, 0), (0, n * C - T), (0, 0), (0, 0))).reshape(B, n, C, N, H).swapaxes(0, 1)

    @jax.checkpoint
    def block(args):
        q_block, i = args
        return _attend_block(q_block, k, v, mask(write_at + i * C, C), config)

    heads = jax.lax.map(block, (blocks, jnp.arange(n, dtype=jnp.int32)))  # [n, B, C, N, H]
    return heads.swapaxes(0, 1).reshape(B, n * C, N, H)[:, :T]


def _attend_block(q, k, v, mask, config: ModelConfig) -> jax.Array:
    """`[B, T, N, H]` heads of queries `q` `[B, T, N, H]` under `mask` `[B, T, S]`."""
    if config.attention == "dot_product":
        if config.attn_softcap is None:
            return _fused_attention(q, k, v, mask, config)
        warnings.warn("attention='dot_product' cannot express soft-capped scores (attn_softcap); "
                      "this model's attention runs as einsums", stacklevel=2)
    return einsum_attention(q, k, v, mask, config)[0]


def einsum_attention(q, k, v, mask, config: ModelConfig, edit_pattern=None):
    """Scores, float32 softmax and values as einsums over kv-head groups (`[B, K, G, T, S]`).

    Returns `(heads [B, T, N, H], pattern)`: with `edit_pattern`, the probabilities laid out
    as the `pattern` site `[B, T, N, S]` go through it (head n = k * G + g, as the heads) and
    are returned; else pattern is None.
    """
    B, T, N, H = q.shape
    K, S = k.shape[2], k.shape[1]
    grouped = q.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", grouped, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(config.query_pre_attn_scalar or H))
    if config.attn_softcap is not None:
        scores = jnp.tanh(scores / config.attn_softcap) * config.attn_softcap
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(config.jnp_dtype)
    pattern = None
    if edit_pattern is not None:
        pattern = edit_pattern(probs.reshape(B, N, T, S).transpose(0, 2, 1, 3))
        probs = pattern.transpose(0, 2, 1, 3).reshape(B, K, N // K, T, S)
    return jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(B, T, N, H), pattern


def _fused_attention(q, k, v, mask, config: ModelConfig) -> jax.Array:
    """`jax.nn.dot_product_attention`: cuDNN's fused kernel on a GPU for 16-bit inputs where it
    accepts the shapes, XLA's otherwise (scores and softmax in float32 either way)."""
    scale = 1 / math.sqrt(config.query_pre_attn_scalar or config.head_dim)
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation="cudnn")
        except Exception as error:  # raised while tracing: no cuDNN, or shapes it does not take
            warnings.warn(f"cuDNN attention unavailable ({error}); using XLA's", stacklevel=2)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale)
