"""Function vectors (Todd et al. 2023): heads ranked by causal indirect effect, their means summed.

On ICL prompts whose demonstrations carry shuffled labels, replacing head `(l, h)`'s
output at the last token by its task mean `mu[l, h]` raises the probability of the
correct answer's first token by the head's indirect effect. The function vector is
the sum, over the `k` heads of largest effect, of what each head at its mean adds to the
residual stream: its mean pushed through that head's slice of the output projection (in
families with a norm on the attention output, Gemma 2/3's `post_norms`, that head's share of
the norm's output at the layer's mean); it is added to the residual stream at the last
token, at the output of one layer (`ResidualEdit`).

The effects of all `L * N` heads are computed batched: every prompt's prefix is run
once into a KV cache, and `batch_size` one-hot hard head replacements
(`HeadBlend.hard`) share each vmapped forward of the edited token.
"""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.batching import pad_id, pad_left
from tvjax.config import ModelConfig
from tvjax.data import Prompt, Task, Template, build_texts, prompts_for, tokenize
from tvjax.interventions import HeadBlend, ResidualEdit, check_layer
from tvjax.fields import COUNT, NON_NEGATIVE, SEED, check_fields, option, optional
from tvjax.model import forward
from tvjax.rows import losses, prepare_rows, stacked_row_losses
from tvjax.scoring import best_layer


@dataclasses.dataclass(frozen=True)
class FunctionVectorConfig:
    """Settings of `function_vector_for`."""

    k: int = option(10, "heads summed", COUNT)
    n_prompts: int = option(20, "shuffled-label ICL prompts the indirect effects are averaged over", COUNT)
    shots: int = option(10, "demonstrations per shuffled-label prompt", COUNT)
    layer: int | None = option(None, "add the vector at this layer", optional(NON_NEGATIVE, "L // 3, or the sweep's "
                                                                                            "choice"))
    sweep: bool = option(False, "choose the layer with the lowest validation loss instead")
    batch_size: int = option(27, "heads (or layers) per vmapped forward", COUNT)
    seed: int = option(0, "the prompts drawn and their shuffled labels", SEED)

    def __post_init__(self):
        check_fields(self)


class FunctionVector(NamedTuple):
    edit: ResidualEdit  # the vector added at `layer`
    vector: np.ndarray  # [D]
    heads: np.ndarray  # [k, 2] (layer, head), largest effect first
    effects: np.ndarray  # [L, N] indirect effects
    layer: int
    layer_losses: np.ndarray | None  # [L] validation loss per layer when swept


def shuffled_label_prompts(tokenizer, task: Task, *, n_prompts: int = 20, shots: int = 10, seed: int = 0,
                           template: Template = Template()) -> list[Prompt]:
    """`shots`-shot prompts for distinct train queries whose demonstrations' labels are shuffled."""
    task.require(shots)
    rng = random.Random(seed)
    queries = rng.sample(task.train, min(n_prompts, len(task.train)))
    labels = [y for _, y in task.train]
    rng.shuffle(labels)
    pool = [(x, y) for (x, _), y in zip(task.train, labels)]
    prompts, _ = tokenize(tokenizer, build_texts(template, queries, shots, pool, seed))
    return prompts


def one_hot_heads(L: int, N: int) -> jax.Array:
    """`[L * N, L, N]` bool: mask `i` selects head `(i // N, i % N)` alone."""
    return jnp.eye(L * N, dtype=bool).reshape(L * N, L, N)


def indirect_effects(model, prompts: list[Prompt], mu, batch_size: int = 27) -> np.ndarray:
    """`[L, N]` mean gain in the answer's first-token probability from replacing one head by its mean.

    Batched over heads (`batch_size` per forward) on cached prompt prefixes.
    """
    config, params, _ = model
    L, N = config.n_layers, config.n_heads
    rows = prepare_rows(model, prompts)
    base = jnp.exp(-losses(params, None, rows, config=config))  # [R]
    mu = jnp.broadcast_to(jnp.asarray(mu, jnp.float32), (L * N, *np.shape(mu)))
    replaced = stacked_row_losses(params, HeadBlend.hard(one_hot_heads(L, N), mu), rows, config=config,
                                  batch_size=batch_size)  # [L * N, R]
    return np.asarray((jnp.exp(-replaced) - base).mean(axis=1)).reshape(L, N)


def indirect_effects_reference(model, prompts: list[Prompt], mu, heads=None) -> np.ndarray:
    """The same effects, one full forward of every prompt per head (tests, timing): `[L, N]`, or
    `[K]` for `heads` `[K, 2]` (layer, head) alone."""
    config, params, tokenizer = model
    tokens, mask = pad_left([p.ids for p in prompts], pad_id(tokenizer))
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    last = jnp.full((len(prompts),), tokens.shape[1] - 1)
    answers = jnp.asarray([p.answer[0] for p in prompts])

    def probability(blend):  # [R]
        logits = forward(params, tokens, config=config, mask=mask, intervention=blend, logits_at=last).logits
        return jax.nn.softmax(logits)[jnp.arange(len(prompts)), answers]

    base = probability(None)
    shape = (config.n_layers, config.n_heads)
    chosen = np.argwhere(np.ones(shape, bool)) if heads is None else np.asarray(heads)
    effects = np.zeros(len(chosen), np.float32)
    for i, (layer, head) in enumerate(chosen):
        selected = np.zeros(shape, bool)
        selected[layer, head] = True
        effects[i] = float((probability(HeadBlend.hard(selected, mu)) - base).mean())
    return effects.reshape(shape) if heads is None else effects


def top_heads(effects, k: int) -> np.ndarray:
    """`[k, 2]` (layer, head) of the `k` largest values of `effects` `[L, N]`, largest first."""
    effects = np.asarray(effects)
    if not 1 <= k <= effects.size:
        raise ValueError(f"k = {k} heads requested; the model has {effects.size} heads "
                         f"({effects.shape[0]} layers x {effects.shape[1]}), so 1 <= k <= {effects.size}")
    order = np.argsort(-effects, axis=None, kind="stable")[:k]
    return np.stack(np.unravel_index(order, effects.shape), axis=1)


def function_vector(params, heads, mu, config: ModelConfig | None = None) -> jax.Array:
    """`[D]`: the sum over `heads` (`[k, 2]` (layer, head)) of what each adds to the residual stream
    at its mean: `mu[l, h]` `[H]` through `o[l, h]` `[H, D]`.

    With `config.post_norms` (Gemma 2/3: the attention output is normed before it joins the
    residual stream) a head adds its share of the norm's output: RMSNorm is linear in its input
    at a fixed scale, so at the layer's mean output `x_l = sum_h mu[l, h] @ o[l, h]` head `h`
    adds `mu[l, h] @ o[l, h] * w_l / rms(x_l)` (`w_l` the norm's scale), and a layer's heads
    together add exactly the normed `x_l`.
    """
    heads = np.asarray(heads)
    o = params["layers"]["attn"]["o"]["kernel"].astype(jnp.float32)  # [L, N, H, D]
    projected = jnp.einsum("LNH,LNHD->LND", jnp.asarray(mu, jnp.float32), o)  # [L, N, D] each head at its mean
    if config is not None and config.post_norms:
        x = projected.sum(1)  # [L, D] each layer's attention output at the means
        scale = params["layers"]["post_attn_norm"]["scale"].astype(jnp.float32)  # [L, D]
        scale = 1 + scale if config.norm_plus_one else scale
        projected = projected * (scale * jax.lax.rsqrt(jnp.mean(x**2, -1, keepdims=True) + config.norm_eps))[:, None]
    return projected[heads[:, 0], heads[:, 1]].sum(0)


def function_vector_for(model, task: Task, mu, settings: FunctionVectorConfig = FunctionVectorConfig(), *,
                        template: Template = Template()) -> FunctionVector:
    """Indirect effects on shuffled-label prompts, the top-`k` heads' vector, and where to add it."""
    config, params, tokenizer = model
    L = config.n_layers
    if settings.layer is not None:
        check_layer(config, settings.layer)
    prompts = shuffled_label_prompts(tokenizer, task, n_prompts=settings.n_prompts, shots=settings.shots,
                                     seed=settings.seed, template=template)
    effects = indirect_effects(model, prompts, mu, settings.batch_size)
    heads = top_heads(effects, settings.k)
    vector = function_vector(params, heads, mu, config)
    layer, layer_losses = (L // 3 if settings.layer is None else settings.layer), None
    if settings.sweep:
        valid, _ = prompts_for(tokenizer, task, "valid", 0, template=template, seed=settings.seed)
        layer, layer_losses = best_layer(model, prepare_rows(model, valid),
                                         lambda l: ResidualEdit.adding(config, l, vector), range(L),
                                         settings.batch_size)
    return FunctionVector(ResidualEdit.adding(config, layer, vector), np.asarray(vector), heads, effects,
                          layer, layer_losses)
