"""Prompt rows: every method's training and scoring data, with cached prefixes.

An intervention edits the last prompt token (and, where its `positions` is 'answer' or
'split', every answer token after it), so nothing before it depends on the intervention. Each prompt's prefix
(all but its last token) is run once, without gradient, into a KV cache; a row then runs
only its suffix (the last prompt token, plus the answer tokens when `all_answer_tokens`)
on top of its cached prefix, with logits only there. Shapes are fixed (bucketed prefixes),
so a loop over rows compiles once.

Prompts of very different lengths (a task of long passages, several tasks together) are laid
out in `Blocks`: one `Rows` per power of two of the prefix length above `BLOCK_FROM` tokens,
each padded to its own longest, so that a few long prompts do not pad every row's cache (the
cache holds `2 L K H` floats per token and row). The functions here take either; a training
step takes its batch's rows from them (`batch`), padded to the batch's longest.

Rows live on the params' mesh, split over rows `R` like a batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.batching import bucket_length, pad_left
from tvjax.config import ModelConfig
from tvjax.data import Prompt, Task, Template, prompts_for
from tvjax.model import KVCache, forward
from tvjax.sharding import constrain, on_mesh, placed, put
from tvjax.vocabulary import check_positions

CACHE_AXES = KVCache("LBSKH", "LBSKH", "BS", None)  # sharding letters of a KVCache's fields


class Rows(NamedTuple):
    """Cached prompt prefixes and the suffixes that are run with an intervention.

    Attributes:
      cache: `KVCache` of the prefixes, k/v `[L, R, S, K, H]`, mask `[R, S]`.
      tokens / mask: `[R, Ts]` suffix tokens (the last prompt token first), right-padded.
      targets / target_mask: `[R, Ts]` next-token targets and which of them count (with positions
        'split', the ones `theta_answer` serves: all but the first answer token, `fit`'s second stage).
      edit: `[R, Ts]` bool, the suffix positions the intervention edits (None: the first, the
        last prompt token).
    """

    cache: KVCache
    tokens: jax.Array
    mask: jax.Array
    targets: jax.Array
    target_mask: jax.Array
    edit: jax.Array | None = None

    def axes(self) -> "Rows":
        """Split over rows `R` like a batch (`tvjax.sharding`)."""
        return ROWS_AXES

    def at_last(self) -> "Rows":
        """The rows as an edit of the last prompt token alone sees them: the suffix's first
        position (the last prompt token), its target (the first answer token) counted."""
        return Rows(self.cache, self.tokens[:, :1], self.mask[:, :1], self.targets[:, :1], self.mask[:, :1])


ROWS_AXES = Rows(CACHE_AXES, "RT", "RT", "RT", "RT", "RT")
BLOCK_FROM = 64  # prefixes of up to this many tokens share a block; longer ones: one block per power of two


class Blocks(NamedTuple):
    """Rows in blocks of similar prefix length, each block padded to its own longest prefix.

    Attributes:
      parts: the blocks' `Rows` (the same suffix length `Ts`).
      index: per block, `[R_b]` int, which rows (of all, in the order they were given) it holds.
    """

    parts: tuple[Rows, ...]
    index: tuple[np.ndarray, ...]

    def at_last(self) -> "Blocks":
        """Each block's `Rows.at_last`."""
        return Blocks(tuple(part.at_last() for part in self.parts), self.index)


def block_of(prefix_length: int) -> int:
    """The block of a prefix of this many tokens: `BLOCK_FROM`, or the power of two above it."""
    return max(BLOCK_FROM, 1 << (prefix_length - 1).bit_length())


def blocks(rows: Rows | Blocks) -> list[tuple[Rows, np.ndarray]]:
    """`(rows, which of all)` per block; plain `Rows` are one block of all."""
    if isinstance(rows, Blocks):
        return list(zip(rows.parts, rows.index))
    return [(rows, np.arange(rows.tokens.shape[0]))]


def n_rows(rows: Rows | Blocks) -> int:
    """How many rows."""
    return sum(len(index) for _, index in blocks(rows))


def per_row(values: list, index: list[np.ndarray], axis: int = 0) -> np.ndarray:
    """Blocks' per-row `values` (arrays along `axis`) back in the order of all rows."""
    order = np.argsort(np.concatenate(index), kind="stable")
    return np.take(np.concatenate([np.asarray(v) for v in values], axis=axis), order, axis=axis)


def batch(rows: Rows | Blocks, index) -> tuple[Rows, np.ndarray]:
    """A training step's `(rows, index)` for the rows at `index` (`[B]`), to `take` in the step:
    plain `Rows` as they are; from `Blocks`, the rows gathered into one `Rows` (`gather`)."""
    index = np.asarray(index)
    if not isinstance(rows, Blocks):
        return rows, index
    return gather(rows, index), np.arange(len(index))


def gather(rows: Blocks, index: np.ndarray) -> Rows:
    """The rows at `index` (`[B]`) as one `Rows`, each block's prefixes left-padded (masked) to the
    longest of the batch's blocks."""
    block = np.empty(n_rows(rows), int)
    position = np.empty(n_rows(rows), int)
    for b, held in enumerate(rows.index):
        block[held], position[held] = b, np.arange(len(held))
    used = sorted(set(block[index].tolist()))
    length = max(rows.parts[b].cache.k.shape[2] for b in used)
    picked = [_left_padded(take(rows.parts[b], position[index[block[index] == b]]), length) for b in used]
    order = np.argsort(np.concatenate([np.flatnonzero(block[index] == b) for b in used]), kind="stable")
    return _joined(picked, order)


def _joined(parts: list[Rows], order: np.ndarray) -> Rows:
    """`parts` (of one cache length) as one `Rows`, their rows concatenated and taken in `order`."""
    cat = lambda xs, axis=0: jnp.take(jnp.concatenate(xs, axis), order, axis)
    caches = [p.cache for p in parts]
    cache = KVCache(cat([c.k for c in caches], 1), cat([c.v for c in caches], 1), cat([c.mask for c in caches]),
                    caches[0].end)
    field = lambda name: None if getattr(parts[0], name) is None else cat([getattr(p, name) for p in parts])
    return Rows(cache, *(field(name) for name in Rows._fields[1:]))


def _left_padded(rows: Rows, length: int) -> Rows:
    """`rows` with `length - S` masked cache slots before their prefixes."""
    c = rows.cache
    pad = length - c.k.shape[2]
    kv = lambda x: jnp.pad(x, ((0, 0), (0, 0), (pad, 0), (0, 0), (0, 0)))
    return rows._replace(cache=KVCache(kv(c.k), kv(c.v), jnp.pad(c.mask, ((0, 0), (pad, 0))), c.end + pad))


def prepare_rows(model, prompts: list[Prompt], all_answer_tokens: bool = False, batch_size: int = 16,
                 intervention=None) -> Rows | Blocks:
    """Run every prompt's prefix once into a KV cache and lay out suffixes and targets (on the params' mesh),
    for `intervention` (or any with its `positions`; None: one at the last prompt token).

    An intervention whose `positions` is 'last' edits the last prompt token; 'answer' and
    'split' also every answer token: the suffix holds the whole answer, teacher-forced, and the
    targets are every answer token and the prompt's `stop` token after them (so that the edited
    model still ends its answer); with 'split' the targets counted are the ones `theta_answer`
    serves, all but the first answer token.

    Returns `Rows`, or `Blocks` of them when the prefixes fall in several blocks (`block_of`).
    """
    positions = check_positions(getattr(intervention, "positions", "last"))
    if any(len(p.ids) < 2 for p in prompts):
        raise ValueError("every prompt row needs at least 2 tokens (a prefix and the edited last token)")
    if positions != "last":
        targets = [p.answer + list(p.stop) for p in prompts]
    else:
        targets = [p.answer if all_answer_tokens else p.answer[:1] for p in prompts]
    suffixes = [[p.ids[-1]] + t[:-1] for p, t in zip(prompts, targets)]
    Ts = max(map(len, suffixes))
    keys = np.array([block_of(len(p.ids) - 1) for p in prompts])
    index = [np.flatnonzero(keys == key) for key in np.unique(keys)]
    parts = [_prepared(model, [prompts[i] for i in held], [suffixes[i] for i in held], [targets[i] for i in held],
                       Ts, positions, batch_size) for held in index]
    return parts[0] if len(parts) == 1 else Blocks(tuple(parts), tuple(index))


def _prepared(model, prompts: list[Prompt], suffixes: list, targets: list, Ts: int, positions: str,
              batch_size: int) -> Rows:
    """`prepare_rows` of prompts in one block: prefixes padded to their longest (bucketed)."""
    config, params, _ = model
    Tp = bucket_length(max(len(p.ids) - 1 for p in prompts))
    n, size = len(prompts), min(batch_size, len(prompts))
    shape = (config.n_layers, n, Tp + Ts, config.n_kv_heads, config.head_dim)
    with on_mesh(params):
        cache = put(KVCache(jnp.zeros(shape, config.jnp_dtype), jnp.zeros(shape, config.jnp_dtype),
                            jnp.zeros((n, Tp + Ts), bool), jnp.int32(Tp)), CACHE_AXES)
        for start in range(0, n, size):  # the last chunk: the last `size` prompts, rewriting some identically
            start = min(start, n - size)
            tokens, mask = put(pad_left([p.ids[:-1] for p in prompts[start:start + size]], 0, Tp), "BT")
            cache = _prefill_into(params, cache, tokens, mask, start, config=config)
        tokens, present = _right_pad(suffixes, Ts)
        edit = present if positions != "last" else present & (jnp.arange(Ts) == 0)
        targets, counted = _right_pad(targets, Ts)
        if positions == "split":  # the targets theta_answer serves: the answer after its first token, the stop
            counted = counted & (jnp.arange(Ts) > 0)
        return put(Rows(cache, tokens, present, targets, counted, edit), ROWS_AXES)


def split_rows(model, task: Task, split: str, *, template: Template, seed: int, all_answer_tokens: bool = False,
               batch_size: int = 16) -> Rows | Blocks:
    """The zero-shot prompts of `task`'s `split` as rows (`prepare_rows`)."""
    prompts, _ = prompts_for(model.tokenizer, task, split, 0, template=template, seed=seed)
    return prepare_rows(model, prompts, all_answer_tokens, batch_size)


def _right_pad(rows: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """`[R, length]` int32 tokens padded with 0 on the right, and `[R, length]` bool presence."""
    tokens = np.zeros((len(rows), length), np.int32)
    present = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], present[i, :len(row)] = row, True
    return jnp.asarray(tokens), jnp.asarray(present)


@functools.partial(jax.jit, static_argnames="config", donate_argnums=1)
def _prefill_into(params, cache: KVCache, tokens, mask, start, *, config: ModelConfig) -> KVCache:
    """`cache` (`R` rows, donated: written in place, so preparing rows never holds two copies) with
    the prefixes `tokens` / `mask` `[B, Tp]` run into its rows `start .. start + B`."""
    B = tokens.shape[0]
    out = forward(params, tokens, config=config, mask=mask, cache=KVCache.empty(config, B, cache.k.shape[2]),
                  logits_at=jnp.zeros((B,), jnp.int32)).cache
    rows = lambda full, part, axis: jax.lax.dynamic_update_slice_in_dim(full, part, start, axis)
    return constrain(KVCache(rows(cache.k, out.k, 1), rows(cache.v, out.v, 1), rows(cache.mask, out.mask, 0),
                             out.end), CACHE_AXES)


def row_losses(params, config: ModelConfig, intervention, rows: Rows) -> jax.Array:
    """Mean answer cross-entropy per row `[R]`, with `intervention` at each row's edited positions."""
    return row_scores(params, config, intervention, rows)[0]


def row_scores(params, config: ModelConfig, intervention, rows: Rows) -> tuple[jax.Array, jax.Array]:
    """`row_losses` `[R]` and whether each row's first answer token is the most likely one `[R]` (bool)."""
    edit = jnp.zeros(rows.tokens.shape, bool).at[:, 0].set(True) if rows.edit is None else rows.edit
    logits = forward(params, rows.tokens, config=config, mask=rows.mask, intervention=intervention, edit_mask=edit,
                     cache=rows.cache).logits  # [R, Ts, V]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), rows.targets[..., None], axis=-1)[..., 0]
    hit = jnp.argmax(logits[:, 0], axis=-1) == rows.targets[:, 0]
    return (nll * rows.target_mask).sum(-1) / rows.target_mask.sum(-1), hit


def take(rows: Rows, index: jax.Array) -> Rows:
    """The rows at `index` (`[B]`)."""
    c = rows.cache
    cache = KVCache(c.k[:, index], c.v[:, index], c.mask[index], c.end)
    return Rows(cache, rows.tokens[index], rows.mask[index], rows.targets[index], rows.target_mask[index],
                None if rows.edit is None else rows.edit[index])


def losses(params, intervention, rows: Rows | Blocks, *, config: ModelConfig) -> np.ndarray:
    """`row_losses` `[R]`, on the params' mesh if any."""
    return scores(params, intervention, rows, config=config)[0]


def scores(params, intervention, rows: Rows | Blocks, *, config: ModelConfig,
           row_task: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`row_scores`: losses `[R]` and first-token hits `[R]`, on the params' mesh if any.

    `row_task` `[R]` int: `intervention` is stacked (`[A, ...]`, a `HeadBlend`) and row `r` takes
    task `row_task[r]`'s vector (`HeadBlend.rows`).
    """
    parts = blocks(rows)
    each = [_scores(params, intervention if row_task is None else intervention.rows(row_task[held]), part,
                    config=config) for part, held in parts]
    index = [held for _, held in parts]
    return per_row([e[0] for e in each], index), per_row([e[1] for e in each], index)


@placed
@functools.partial(jax.jit, static_argnames="config")
def _scores(params, intervention, rows: Rows, *, config: ModelConfig) -> tuple[jax.Array, jax.Array]:
    return constrain(row_scores(params, config, intervention, rows), None)


@placed
@functools.partial(jax.jit, static_argnames="config")
def mean_loss(params, intervention, rows: Rows, *, config: ModelConfig) -> jax.Array:
    """Mean of `row_losses` (a float32 scalar), on the params' mesh if any."""
    return constrain(row_losses(params, config, intervention, rows).mean(), None)


def stacked_losses(params, stacked, rows: Rows, *, config: ModelConfig, batch_size: int) -> jax.Array:
    """`[C, R]`: `row_losses` under each of `C` stacked interventions (traceable; see `stacked_row_losses`).

    `jax.lax.map` with `batch_size`: that many interventions share one vmapped forward of
    every row's edited token.
    """
    C = jax.tree.leaves(stacked)[0].shape[0]
    batch_size = min(batch_size, C)
    pad = -C % batch_size  # padded with copies of the first, so the model is traced once
    stacked = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]), stacked)
    losses = jax.lax.map(lambda one: row_losses(params, config, one, rows), stacked, batch_size=batch_size)
    return losses[:C]


def stacked_row_losses(params, stacked, rows: Rows | Blocks, *, config: ModelConfig, batch_size: int) -> np.ndarray:
    """`[C, R]`: `row_losses` (answer cross-entropy per row) under each of the `C` stacked interventions.

    Args:
      stacked: an intervention (or tuple of them) whose every leaf has a leading `C` axis.
      rows: `R` cached-prefix rows (`prepare_rows`).
      batch_size: interventions per vmapped forward.
    """
    with on_mesh(params):
        stacked = put(stacked, None)
        parts = blocks(rows)
        return per_row([_stacked_row_losses(params, stacked, part, config=config, batch_size=batch_size)
                        for part, _ in parts], [held for _, held in parts], axis=1)


@functools.partial(jax.jit, static_argnames=("config", "batch_size"))
def _stacked_row_losses(params, stacked, rows: Rows, *, config: ModelConfig, batch_size: int) -> jax.Array:
    return constrain(stacked_losses(params, stacked, rows, config=config, batch_size=batch_size), None)
