"""Mean head activations: average every head's output at the last token of ICL prompts."""

from __future__ import annotations

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tvjax.batching import bucket_length, chunks, pad_left
from tvjax.config import ModelConfig
from tvjax.data import Prompt, Task, Template, prompts_for
from tvjax.model import forward
from tvjax.sharding import Placement


def head_means(model, prompts: list[Prompt], batch_size: int = 8, desc: str = "means") -> np.ndarray:
    """Mean of every head's output at each prompt's last token: float32 `[L, N, H]`."""
    config, params, tokenizer = model
    length = bucket_length(max(len(p.ids) for p in prompts))  # one shape for every batch
    total = np.zeros((config.n_layers, config.n_heads, config.head_dim), np.float64)
    place = Placement.of(params)
    param_shardings = place.params(params)
    for chunk, real in tqdm(list(chunks(prompts, batch_size)), desc=desc, leave=False, disable=None):
        tokens, mask = pad_left([p.ids for p in chunk], tokenizer.pad_token_id or 0, length)
        heads = place.run(_last_token_heads, (params, tokens, mask),
                          (param_shardings, place.batch(tokens), place.batch(mask)), place.replicated, config=config)
        total += np.asarray(heads[:real], np.float64).sum(0)
    return (total / len(prompts)).astype(np.float32)


@functools.partial(jax.jit, static_argnames="config")
def _last_token_heads(params, tokens, mask, *, config: ModelConfig) -> jax.Array:
    """`[B, L, N, H]`: every head's output at the last position of `tokens` `[B, T]`."""
    last = jnp.full((tokens.shape[0],), tokens.shape[1] - 1)
    return forward(params, tokens, config=config, mask=mask, capture_at=last, logits_at=last).heads


def extract_means(model, task: Task, *, n_prompts: int = 50, shots: int = 10, batch_size: int = 8,
                  seed: int = 0, template: Template = Template()) -> np.ndarray:
    """Task means `mu` `[L, N, H]` from `n_prompts` `shots`-shot ICL prompts of the train split.

    Each prompt's query is a train pair (distinct, unless the split is smaller than
    `n_prompts`); its demonstrations are other train pairs.
    """
    task.require(shots)
    rng = random.Random(seed)
    if n_prompts <= len(task.train):
        queries = rng.sample(task.train, n_prompts)
    else:
        queries = [rng.choice(task.train) for _ in range(n_prompts)]
    prompts, _ = prompts_for(model.tokenizer, task, "train", shots, template=template, seed=seed, queries=queries)
    return head_means(model, prompts, batch_size)

