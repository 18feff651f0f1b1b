"""Jit-compiled greedy generation with a KV cache; the intervention edits the last prompt token."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.batching import encode, pad_left
from tvjax.config import ModelConfig
from tvjax.interventions import Intervention
from tvjax.model import KVCache, Params, forward
from tvjax.sharding import Placement


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens"))
def _greedy(params, tokens, mask, blend, eos_ids, *, config: ModelConfig, max_new_tokens: int):
    B, T = tokens.shape
    cache = KVCache.empty(config, B, T + max_new_tokens)
    last = jnp.full((B,), T - 1)
    out = forward(params, tokens, config=config, mask=mask, blend=blend, logits_at=last, cache=cache)
    first = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)

    def step(carry, _):
        token, done, cache = carry
        out = forward(params, token[:, None], config=config, mask=jnp.ones((B, 1), bool),
                      logits_at=jnp.zeros((B,), jnp.int32), cache=cache)
        done = done | jnp.isin(token, eos_ids)
        token = jnp.where(done, eos_ids[0], jnp.argmax(out.logits, axis=-1).astype(jnp.int32))
        return (token, done, out.cache), token

    init = (first, jnp.zeros((B,), bool), out.cache)
    _, rest = jax.lax.scan(step, init, None, length=max_new_tokens - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(
    params: Params,
    tokens,
    *,
    config: ModelConfig,
    mask=None,
    max_new_tokens: int = 16,
    blend: Intervention | tuple | None = None,
    eos_token_id: int | tuple[int, ...] | None = None,
) -> np.ndarray:
    """Greedy decoding.

    Args:
      params, config: the model.
      tokens: `[B, T]` left-padded prompts; mask: `[B, T]` bool (default: all real).
      max_new_tokens: tokens to generate per prompt.
      blend: optional intervention (`HeadBlend`, `ResidualEdit`, `Edit` or a tuple of them),
        applied at the last prompt token only.
      eos_token_id: id(s) ending a row; after one, the row repeats the first id
        (default: `config.eos_token_id`; -1 never stops).
    Returns:
      `[B, max_new_tokens]` int32 new tokens.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
    eos = config.eos_ids if eos_token_id is None else config.replace(eos_token_id=eos_token_id).eos_ids
    eos = jnp.asarray(eos or (-1,), jnp.int32)
    place = Placement.of(params)
    shardings = (place.params(params), place.batch(tokens), place.batch(mask), place.interventions(blend),
                 place.replicated)
    return np.asarray(place.run(_greedy, (params, tokens, mask, blend, eos), shardings, place.replicated,
                                config=config, max_new_tokens=max_new_tokens))


def generate_text(model, prompts: list[str] | list[list[int]], max_new_tokens: int = 16,
                  blend: Intervention | tuple | None = None) -> list[str]:
    """Greedy completions of `prompts` (texts, or token id lists) as strings, cut at end-of-sequence."""
    config, params, tokenizer = model
    if all(isinstance(p, str) for p in prompts):
        tokens, mask = encode(tokenizer, prompts)
    else:
        tokens, mask = pad_left(prompts, tokenizer.pad_token_id or 0)
    new = generate(params, tokens, config=config, mask=mask, max_new_tokens=max_new_tokens, blend=blend)
    return [tokenizer.decode(until_eos(row, config.eos_ids), skip_special_tokens=True) for row in new]


def until_eos(row: np.ndarray, eos_ids: tuple[int, ...]) -> list[int]:
    """Generated tokens before the first end-of-sequence token."""
    row = row.tolist()
    ends = [i for i, t in enumerate(row) if t in eos_ids]
    return row[: ends[0]] if ends else row
