"""Hard head replacement searched by REINFORCE (Hojel et al. 2024; Huang et al. 2024).

Every head `(l, h)` is replaced by its task mean with probability `sigmoid(logits[l, h])`.
A step samples `samples` head masks, scores each on the same train rows (first answer
token cross-entropy with the masked heads replaced at the last prompt token, all masks
batched on cached prompt prefixes), standardises the rewards (negative losses, less
`sparsity` per replaced head) across the samples and moves the logits with Adam along the
score-function gradient estimate. The result is the hard head set `sigmoid(logits) > 0.5`
with the best validation objective (loss + `sparsity` x heads), as a `HeadBlend` with
`theta = +inf` on the set and `-inf` elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from tvjax.config import ModelConfig
from tvjax.data import Task, Template, prompts_for
from tvjax.fit import Rows, batch_indices, mean_loss, optimizer, prepare_rows, take
from tvjax.interventions import HeadBlend
from tvjax.scoring import stacked_row_losses


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
    """Settings of `select_heads`."""

    steps: int = 100
    learning_rate: float = 0.1  # Adam
    init: float = -1.0  # initial logit of every head (replacement probability 0.27)
    samples: int = 16  # head masks per step, scored in one batched forward
    batch_size: int = 8  # train rows per step, shared by the samples
    eval_every: int = 10
    seed: int = 0
    sparsity: float = 0.0  # penalty per replaced head (nats of first-token cross-entropy)


class HeadSelection(NamedTuple):
    blend: HeadBlend  # hard: the selected heads replaced by their means
    heads: np.ndarray  # [L, N] bool, the selected heads
    probabilities: np.ndarray  # [L, N] replacement probabilities at the best step
    best_step: int
    best_valid_loss: float
    history: list  # dicts: step, train_loss (mean sampled loss since the last eval), valid_loss, heads


def score_function_gradient(logits: jax.Array, masks: jax.Array, rewards: jax.Array) -> jax.Array:
    """`[L, N]` estimate of the gradient of the expected standardised reward w.r.t. the logits.

    Args:
      logits: `[L, N]` Bernoulli logits.  masks: `[S, L, N]` bool samples.  rewards: `[S]`.
    Returns:
      `mean_s a_s * (m_s - sigmoid(logits))`, `a` the rewards standardised over the samples
      (`m - p` is the gradient of the log-probability of mask `m`).
    """
    advantage = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
    return jnp.mean(advantage[:, None, None] * (masks - jax.nn.sigmoid(logits)), axis=0)


@functools.partial(jax.jit, static_argnames=("config", "samples", "learning_rate"))
def reinforce_step(logits, opt_state, key, mu, params, rows: Rows, index, sparsity, *, config: ModelConfig,
                   samples: int, learning_rate: float):
    """One Adam step on `logits` `[L, N]` from `samples` masks scored on the rows at `index` `[B]`.

    Returns `(logits, opt_state, mean sampled loss)`.
    """
    masks = jax.random.bernoulli(key, jax.nn.sigmoid(logits), (samples, *logits.shape))  # [S, L, N]
    blends = HeadBlend.hard(masks, jnp.broadcast_to(mu, (samples, *mu.shape)))
    losses = stacked_row_losses(params, blends, take(rows, index), config=config, batch_size=samples).mean(1)
    rewards = -losses - sparsity * masks.sum((1, 2))
    grad = -score_function_gradient(logits, masks, rewards)  # descend the negative expected reward
    updates, opt_state = optimizer("adam", learning_rate).update(grad, opt_state, logits)
    return optax.apply_updates(logits, updates), opt_state, losses.mean()


def select_heads(model, task: Task, mu, config: ReinforceConfig = ReinforceConfig(), *,
                 template: Template = Template()) -> HeadSelection:
    """Search a hard head set on zero-shot train prompts; keep the one with the best validation loss."""
    model_config, params, tokenizer = model
    mu = jnp.asarray(mu, jnp.float32)
    train_prompts, _ = prompts_for(tokenizer, task, "train", 0, template=template, seed=config.seed)
    valid_prompts, _ = prompts_for(tokenizer, task, "valid", 0, template=template, seed=config.seed)
    train, valid = prepare_rows(model, train_prompts), prepare_rows(model, valid_prompts)
    logits = jnp.full((model_config.n_layers, model_config.n_heads), config.init, jnp.float32)
    opt_state = optimizer("adam", config.learning_rate).init(logits)
    key = jax.random.key(config.seed)

    def validate(logits):
        heads = np.asarray(logits > 0)
        return float(mean_loss(params, HeadBlend.hard(heads, mu), valid, config=model_config)), heads

    best_loss, best_heads = validate(logits)
    best_logits, best_step, best_objective = logits, 0, best_loss
    history, running = [{"step": 0, "train_loss": None, "valid_loss": best_loss, "heads": 0}], []
    bar = tqdm(range(1, config.steps + 1), desc=f"reinforce {task.name}", leave=False, disable=None)
    for step in bar:
        index = jnp.asarray(batch_indices(len(train_prompts), config.batch_size, step - 1, config.seed))
        logits, opt_state, loss = reinforce_step(logits, opt_state, jax.random.fold_in(key, step), mu, params,
                                                 train, index, config.sparsity, config=model_config,
                                                 samples=config.samples, learning_rate=config.learning_rate)
        running.append(loss)
        if step % config.eval_every == 0 or step == config.steps:
            valid_loss, heads = validate(logits)
            history.append({"step": step, "train_loss": float(np.mean(running)), "valid_loss": valid_loss,
                            "heads": int(heads.sum())})
            running = []
            bar.set_postfix(valid=f"{valid_loss:.3f}", heads=int(heads.sum()))
            objective = valid_loss + config.sparsity * heads.sum()
            if objective < best_objective:
                best_loss, best_heads, best_logits, best_step = valid_loss, heads, logits, step
                best_objective = objective
    return HeadSelection(HeadBlend.hard(best_heads, mu), best_heads, np.asarray(jax.nn.sigmoid(best_logits)),
                         best_step, best_loss, history)
