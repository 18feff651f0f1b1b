"""Jit-compiled generation with a KV cache, greedy or sampled; the intervention edits the last prompt
token (and, where its `positions` is 'answer' or 'split', every generated token as it is fed back).
`generate_text` ends a completion at stop strings, by default those of a template (`template_stop`)."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.batching import encode, pad_id, pad_left
from tvjax.config import ModelConfig
from tvjax.data import Template
from tvjax.interventions import Intervention, at_answer
from tvjax.model import KVCache, Params, forward
from tvjax.sharding import axes_of, constrain, on_mesh, put


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k"))
def _decode(params, tokens, mask, intervention, eos_ids, budgets, sampling, *, config: ModelConfig,
            max_new_tokens: int, top_k: int | None):
    """`[B, max_new_tokens]` new tokens; a row is done at its first end-of-sequence token or at its
    budget (`budgets` `[B]`), then repeats `eos_ids[0]`; decoding stops once every row is done.

    `sampling`: None (greedy: the argmax, and nothing else in the loop) or `(key, temperature,
    top_p)`: a PRNG key's data (`jax.random.key_data`), split at every step, and two `[]` floats;
    each token is then drawn by `_sample`.
    """
    B, T = tokens.shape
    cache = KVCache.empty(config, B, T + max_new_tokens)
    last = jnp.full((B,), T - 1)
    out = forward(params, tokens, config=config, mask=mask, intervention=intervention, logits_at=last, cache=cache)
    later = at_answer(intervention)  # what edits each generated token (None: nothing)

    def pick(logits, key):  # logits [B, V] -> (tokens [B], the next key)
        if sampling is None:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), key
        key, draw = jax.random.split(key)
        _, temperature, top_p = sampling
        return _sample(draw, logits, temperature, top_p, top_k=top_k), key

    def finished(i, token, done):  # [B]: rows whose next token is eos_ids[0]
        return done | jnp.isin(token, eos_ids) | (i >= budgets)

    def unfinished(carry):
        i, token, done, _, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(finished(i, token, done))

    def step(carry):
        i, token, done, cache, new, key = carry
        out = forward(params, token[:, None], config=config, mask=jnp.ones((B, 1), bool),
                      intervention=later, logits_at=jnp.zeros((B,), jnp.int32), cache=cache)
        done = finished(i, token, done)
        picked, key = pick(out.logits, key)
        token = jnp.where(done, eos_ids[0], picked)
        return i + 1, token, done, out.cache, new.at[:, i].set(token), key

    first, key = pick(out.logits, None if sampling is None else jax.random.wrap_key_data(sampling[0]))
    new = jnp.full((B, max_new_tokens), eos_ids[0], jnp.int32).at[:, 0].set(first)
    init = (jnp.int32(1), first, jnp.zeros((B,), bool), out.cache, new, key)
    new = jax.lax.while_loop(unfinished, step, init)[-2]
    return constrain(new, None)  # every process reads it


def _sample(key, logits, temperature, top_p, *, top_k: int | None):
    """`[B]` tokens drawn as transformers' `do_sample` draws them: from softmax(logits / temperature)
    (`logits` `[B, V]`) kept to its `top_k` most likely tokens (None: all), then to the most likely
    of those until their probability (in that tempered, renormalised distribution) reaches `top_p`
    (the most likely token always stays)."""
    values, ids = jax.lax.top_k(logits / temperature, min(top_k or logits.shape[-1], logits.shape[-1]))  # [B, k]
    probs = jax.nn.softmax(values, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # the probability of the more likely tokens
    values = jnp.where((before < top_p) | (top_p >= 1), values, -jnp.inf)
    choice = jax.random.categorical(key, values, axis=-1)
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]


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
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Greedy decoding, or sampling with a `temperature`.

    Args:
      params: the model's params.
      tokens: `[B, T]` left-padded prompts.
      config: the model's config.
      mask: `[B, T]` bool (default: all real).
      max_new_tokens: tokens to generate per prompt (at least 1).
      intervention: optional intervention (`HeadBlend`, `ResidualEdit`, `Edit`, your own or a
        tuple of them), applied at the last prompt token, and at every generated token (as it
        is fed back in) where its `positions` is 'answer' or 'split' (a split `HeadBlend` with
        its `theta_answer` there; see `at_answer`).
      eos_token_id: id(s) ending a row; after one, the row repeats the first id
        (default: `config.eos_token_id`; -1 never stops).
      budgets: `[B]` tokens each row needs (default: `max_new_tokens` each); a row's tokens
        past its budget are the first end-of-sequence id. Decoding stops once every row has
        ended or reached its budget.
      temperature: 0 or None: greedy (the argmax; `top_k`, `top_p` and `seed` unused). Above 0:
        each token is drawn from softmax(logits / temperature), as transformers' `do_sample`
        draws it: kept to the `top_k` most likely tokens (None: all), then to the most likely of
        those until their probability reaches `top_p` (None or 1: all). The temperature and
        `top_p` are traced (new values reuse the compiled loop), `top_k` is compiled in.
      top_k: at least 1, or None.
      top_p: in (0, 1], or None.
      seed: the PRNG seed of the draws: the same seed, batch and arguments give the same tokens.
    Returns:
      `[B, max_new_tokens]` int32 new tokens.
    """
    _check(max_new_tokens, temperature, top_k, top_p)
    tokens = np.asarray(tokens, np.int32)
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    eos = config.eos_ids if eos_token_id is None else config.replace(eos_token_id=eos_token_id).eos_ids
    budgets = np.full(len(tokens), max_new_tokens, np.int32) if budgets is None else np.asarray(budgets, np.int32)
    sampling = (np.asarray(jax.random.key_data(jax.random.key(seed))), np.float32(temperature),
                np.float32(top_p or 1)) if temperature else None
    with on_mesh(params):
        new = _decode(params, *put((tokens, mask), "BT"), put(intervention, axes_of(intervention)),
                      put(np.asarray(eos or (-1,), np.int32), None), put(budgets, "B"), put(sampling, None),
                      config=config, max_new_tokens=max_new_tokens, top_k=top_k if sampling else None)
    return np.asarray(new)


def _check(max_new_tokens: int, temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be at least 0 (0 or None: greedy), not {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (None: every token), not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (None: every token), not {top_p}")


def generate_text(model, prompts: list[str] | list[list[int]], max_new_tokens: int = 16,
                  intervention: Intervention | tuple | None = None, *, stop: Sequence[str] | None = None,
                  temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                  seed: int = 0) -> list[str]:
    """Completions of `prompts` (texts, or token id lists) as strings, cut at end-of-sequence and
    before the first of the `stop` strings (e.g. `template_stop(template)`).

    A stop string that is one token ends its row inside the decoding loop, as end-of-sequence
    does; one of several tokens (or inside a longer token) cuts the decoded text only, and its row
    decodes on to `max_new_tokens`. `temperature`, `top_k`, `top_p`, `seed`: as in `generate`.
    """
    config, params, tokenizer = model
    stop = tuple(stop or ())
    if "" in stop:
        raise ValueError("a stop string must not be empty")
    if all(isinstance(p, str) for p in prompts):
        tokens, mask = encode(tokenizer, prompts)
    else:
        tokens, mask = pad_left(prompts, pad_id(tokenizer))
    new = generate(params, tokens, config=config, mask=mask, max_new_tokens=max_new_tokens, intervention=intervention,
                   eos_token_id=config.eos_ids + _stop_ids(tokenizer, stop), temperature=temperature, top_k=top_k,
                   top_p=top_p, seed=seed)
    return [cut_at_stop(tokenizer.decode(until_eos(row, config.eos_ids), skip_special_tokens=True), stop)
            for row in new]


def template_stop(template: Template) -> tuple[str, ...]:
    """The stop strings of answers written with `template`: the first line of its separator (the
    text after `{output}`) without surrounding spaces, and a line break where the separator has one
    (an answer is one line, as evaluation reads it). `('\\n',)` for the default template's
    `'\\n\\n'`, `(';', '\\n')` for `'; \\n'`, none for a separator of spaces or none."""
    separator = template.after_output
    stops = [separator.split("\n")[0].strip()] + (["\n"] if "\n" in separator else [])
    return tuple(s for s in stops if s)


def _stop_ids(tokenizer, stop: Sequence[str]) -> tuple[int, ...]:
    """The tokens that are a whole stop string each (its only token, whose text holds it)."""
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in stop]
    return tuple(i[0] for s, i in zip(stop, ids) if len(i) == 1 and s in tokenizer.decode(i))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` before the first occurrence of any of the `stop` strings (all of it when none occurs)."""
    return text[:min((i for i in map(text.find, stop) if i >= 0), default=len(text))]


def until_eos(row: np.ndarray, eos_ids: tuple[int, ...]) -> list[int]:
    """Generated tokens before the first end-of-sequence token."""
    row = row.tolist()
    ends = [i for i, t in enumerate(row) if t in eos_ids]
    return row[: ends[0]] if ends else row
