"""Mean activations: average every head's output (or any site's value) at the last token of ICL prompts."""

from __future__ import annotations

import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from tvjax.batching import bucket_length, chunks, pad_id, pad_left
from tvjax.config import ModelConfig
from tvjax.data import Prompt, Task, Template, prompts_for
from tvjax.fields import COUNT, NON_NEGATIVE, check_value
from tvjax.interventions import site_of
from tvjax.model import forward, param_axes
from tvjax.sharding import constrain, on_mesh, put


def head_means(model, prompts: list[Prompt], batch_size: int = 8, desc: str = "means") -> np.ndarray:
    """Mean of every head's output at each prompt's last token: float32 `[L, N, H]`."""
    return site_means(model, prompts, ("heads",), batch_size, desc)["heads"]


def site_means(model, prompts: list[Prompt], sites: tuple[str, ...] = ("heads",), batch_size: int = 8,
               desc: str = "means", groups=None) -> dict[str, np.ndarray]:
    """Mean of each site's value at each prompt's last token, in one pass: float32 `{site: [L, ...]}`
    (heads and q `[L, N, H]`, k and v `[L, K, H]`, mlp_hidden `[L, F]`, the residual sites, attn
    and mlp `[L, D]`; see `tvjax.interventions.SITES`). `pattern` has no mean over prompts of
    different lengths and is refused.

    With `groups` (`[P]` ints from 0, one per prompt, e.g. each prompt's task), the mean of
    each group from the same batched passes: `{site: [G, L, ...]}`. With more than one group the
    prompts go in order of length, each batch padded to its own longest (bucketed), so that
    short tasks' prompts are not padded to long ones'; with one, every batch has one shape.
    """
    config, params, tokenizer = model
    sites = tuple(dict.fromkeys(site_of(s) for s in sites))
    if "pattern" in sites:
        raise ValueError("site_means cannot average 'pattern': its key axis is as long as each prompt; capture it "
                         "with tvjax.forward or tvjax.run_with_cache")
    group = np.zeros(len(prompts), int) if groups is None else np.asarray(groups)
    G = int(group.max()) + 1
    if G > 1:
        order = np.argsort([len(p.ids) for p in prompts], kind="stable")
        prompts, group = [prompts[i] for i in order], group[order]
    shared = None if G > 1 else bucket_length(max(len(p.ids) for p in prompts))
    totals = dict.fromkeys(sites, 0.0)
    with on_mesh(params):
        for i, (chunk, real) in enumerate(tqdm(list(chunks(prompts, batch_size)), desc=desc, leave=False,
                                               disable=None)):
            length = shared or bucket_length(max(len(p.ids) for p in chunk))
            tokens, mask = put(pad_left([p.ids for p in chunk], pad_id(tokenizer), length), "BT")
            values = _last_token_sites(params, tokens, mask, config=config, sites=sites)
            rows = group[i * batch_size:i * batch_size + real]
            for s in sites:
                value = np.asarray(values[s][:real], np.float64)
                totals[s] = totals[s] + np.stack([value[rows == g].sum(0) for g in range(G)])
    counts = np.bincount(group, minlength=G)  # [G]
    means = {s: (total / counts.reshape(G, *(1,) * (total.ndim - 1))).astype(np.float32)
             for s, total in totals.items()}
    return means if groups is not None else {s: m[0] for s, m in means.items()}


@functools.partial(jax.jit, static_argnames=("config", "sites"))
def _last_token_sites(params, tokens, mask, *, config: ModelConfig, sites: tuple[str, ...]) -> dict[str, jax.Array]:
    """`{site: [B, L, ...]}`: each site's value in every layer at the last position of `tokens` `[B, T]`."""
    last = jnp.full((tokens.shape[0],), tokens.shape[1] - 1)
    out = forward(params, tokens, config=config, mask=mask, capture=sites, capture_at=last, logits_at=last)
    return constrain(out.captured, None)  # every process reads them


def lower_last_token_sites(mesh, params, tokens, mask, *, config: ModelConfig, sites=("heads",)):
    """The means' forward on `mesh`, lowered for these arrays or `jax.ShapeDtypeStruct`s (memory
    planning): params as `tvjax.load` places them, `tokens` / `mask` `[B, T]` split like a batch."""
    with jax.set_mesh(mesh):
        params = put(params, param_axes(config))
        return _last_token_sites.lower(params, *put((tokens, mask), "BT"), config=config, sites=sites)


def extract_means(model, task: Task, *, n_prompts: int = 50, shots: int = 10, batch_size: int = 8,
                  seed: int = 0, template: Template = Template()) -> np.ndarray:
    """Task means `mu` `[L, N, H]` from `n_prompts` `shots`-shot ICL prompts of the train split
    (`extract_means_many` of one task)."""
    return extract_means_many(model, [task], n_prompts=n_prompts, shots=shots, batch_size=batch_size, seed=seed,
                              template=template)[0]


def extract_means_many(model, tasks, *, n_prompts: int = 50, shots: int = 10, batch_size: int = 8, seed: int = 0,
                       template: Template = Template()) -> np.ndarray:
    """`[A, L, N, H]`: each of the `A` tasks' means (`extract_means`), from shared batched passes."""
    prompts = [mean_prompts(model.tokenizer, t, n_prompts=n_prompts, shots=shots, seed=seed, template=template)
               for t in tasks]
    groups = np.repeat(np.arange(len(tasks)), [len(p) for p in prompts])
    return site_means(model, sum(prompts, []), ("heads",), batch_size,
                      "means" if len(tasks) == 1 else f"means of {len(tasks)} tasks", groups)["heads"]


def mean_prompts(tokenizer, task: Task, *, n_prompts: int = 50, shots: int = 10, seed: int = 0,
                 template: Template = Template()) -> list[Prompt]:
    """The ICL prompts whose last-token head outputs `extract_means` averages.

    Each prompt's query is a train pair (distinct, unless the split is smaller than
    `n_prompts`); its demonstrations are other train pairs.
    """
    check_value("n_prompts", n_prompts, COUNT)
    check_value("shots", shots, NON_NEGATIVE)
    task.require(shots)
    rng = random.Random(seed)
    if n_prompts <= len(task.train):
        queries = rng.sample(task.train, n_prompts)
    else:
        queries = [rng.choice(task.train) for _ in range(n_prompts)]
    prompts, _ = prompts_for(tokenizer, task, "train", shots, template=template, seed=seed, queries=queries)
    return prompts
