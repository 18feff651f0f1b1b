"""Jit-compiled greedy generation with a KV cache; the intervention edits the last prompt token
(and, where its `positions` is 'answer' or 'split', every generated token as it is fed back)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.batching import encode, pad_id, pad_left
from tvjax.config import ModelConfig
from tvjax.interventions import Intervention, at_answer
from tvjax.model import KVCache, Params, forward
from tvjax.sharding import axes_of, constrain, on_mesh, put


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens"))
def _greedy(params, tokens, mask, intervention, eos_ids, budgets, *, config: ModelConfig, max_new_tokens: int):
    """`[B, max_new_tokens]` greedy tokens; a row is done at its first end-of-sequence token or
    at its budget (`budgets` `[B]`), then repeats `eos_ids[0]`; decoding stops once every row is done."""
    B, T = tokens.shape
    cache = KVCache.empty(config, B, T + max_new_tokens)
    last = jnp.full((B,), T - 1)
    out = forward(params, tokens, config=config, mask=mask, intervention=intervention, logits_at=last, cache=cache)
    first = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)
    later = at_answer(intervention)  # what edits each generated token (None: nothing)

    def finished(i, token, done):  # [B]: rows whose next token is eos_ids[0]
        return done | jnp.isin(token, eos_ids) | (i >= budgets)

    def unfinished(carry):
        i, token, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(finished(i, token, done))

    def step(carry):
        i, token, done, cache, new = carry
        out = forward(params, token[:, None], config=config, mask=jnp.ones((B, 1), bool),
                      intervention=later, logits_at=jnp.zeros((B,), jnp.int32), cache=cache)
        done = finished(i, token, done)
        token = jnp.where(done, eos_ids[0], jnp.argmax(out.logits, axis=-1).astype(jnp.int32))
        return i + 1, token, done, out.cache, new.at[:, i].set(token)

    new = jnp.full((B, max_new_tokens), eos_ids[0], jnp.int32).at[:, 0].set(first)
    init = (jnp.int32(1), first, jnp.zeros((B,), bool), out.cache, new)
    new = jax.lax.while_loop(unfinished, step, init)[-1]
    return constrain(new, None)  # every process reads it


def generate(
    params: Params,
    tokens,
    *,
    config: ModelConfig,
    mask=None,
    max_new_tokens: int = 16,
    intervention: Intervention | tuple | None = None,
    eos_token_id: int | tuple[int, ...] | None = None,
    budgets=None,
) -> np.ndarray:
    """Greedy decoding.

    Args:
      params: the model's params.
      tokens: `[B, T]` left-padded prompts.
      config: the model's config.
      mask: `[B, T]` bool (default: all real).
      max_new_tokens: tokens to generate per prompt.
      intervention: optional intervention (`HeadBlend`, `ResidualEdit`, `Edit`, your own or a
        tuple of them), applied at the last prompt token, and at every generated token (as it
        is fed back in) where its `positions` is 'answer' or 'split' (a split `HeadBlend` with
        its `theta_answer` there; see `at_answer`).
      eos_token_id: id(s) ending a row; after one, the row repeats the first id
        (default: `config.eos_token_id`; -1 never stops).
      budgets: `[B]` tokens each row needs (default: `max_new_tokens` each); a row's tokens
        past its budget are the first end-of-sequence id. Decoding stops once every row has
        ended or reached its budget.
    Returns:
      `[B, max_new_tokens]` int32 new tokens.
    """
    tokens = np.asarray(tokens, np.int32)
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    eos = config.eos_ids if eos_token_id is None else config.replace(eos_token_id=eos_token_id).eos_ids
    budgets = np.full(len(tokens), max_new_tokens, np.int32) if budgets is None else np.asarray(budgets, np.int32)
    with on_mesh(params):
        new = _greedy(params, *put((tokens, mask), "BT"), put(intervention, axes_of(intervention)),
                      put(np.asarray(eos or (-1,), np.int32), None), put(budgets, "B"), config=config,
                      max_new_tokens=max_new_tokens)
    return np.asarray(new)


def generate_text(model, prompts: list[str] | list[list[int]], max_new_tokens: int = 16,
                  intervention: Intervention | tuple | None = None) -> list[str]:
    """Greedy completions of `prompts` (texts, or token id lists) as strings, cut at end-of-sequence."""
    config, params, tokenizer = model
    if all(isinstance(p, str) for p in prompts):
        tokens, mask = encode(tokenizer, prompts)
    else:
        tokens, mask = pad_left(prompts, pad_id(tokenizer))
    new = generate(params, tokens, config=config, mask=mask, max_new_tokens=max_new_tokens, intervention=intervention)
    return [tokenizer.decode(until_eos(row, config.eos_ids), skip_special_tokens=True) for row in new]


def until_eos(row: np.ndarray, eos_ids: tuple[int, ...]) -> list[int]:
    """Generated tokens before the first end-of-sequence token."""
    row = row.tolist()
    ends = [i for i, t in enumerate(row) if t in eos_ids]
    return row[: ends[0]] if ends else row
