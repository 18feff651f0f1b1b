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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tvjax.config import ModelConfig
from tvjax.data import Task, Template
from tvjax.interventions import HeadBlend
from tvjax.fields import COUNT, FINITE, PENALTY, RATE, SEED, check_fields, integer, option
from tvjax.rows import Rows, batch, losses, n_rows, split_rows, stacked_losses, take
from tvjax.sharding import placed
from tvjax.train import batch_indices, initial_means, loop, open_checkpoints, optimizer, train_step


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
    """Settings of `select_heads`."""

    steps: int = option(100, "training steps", COUNT)
    learning_rate: float = option(0.1, "Adam's learning rate", RATE)
    init: float = option(-1.0, "initial logit of every head (replacement probability sigmoid(-1) = 0.27)", FINITE)
    samples: int = option(16, "head masks per step, scored in one batched forward", integer(2))
    batch_size: int = option(8, "train rows per step, shared by the samples", COUNT)
    eval_every: int = option(10, "validate (and keep the best heads) every this many steps", COUNT)
    seed: int = option(0, "the masks sampled and the order of the train rows", SEED)
    sparsity: float = option(0.0, "penalty per replaced head (nats of first-token cross-entropy)", PENALTY)

    def __post_init__(self):
        check_fields(self)


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


def reinforce_loss(logits, params, means: HeadBlend, rows: Rows, index, key, sparsity, *, config: ModelConfig,
                   samples: int):
    """REINFORCE's surrogate loss, for `tvjax.train.train_step`: its gradient with respect to
    `logits` `[L, N]` is exactly minus `score_function_gradient` of `samples` masks scored on the
    rows at `index` `[B]` (`tvjax.rows.batch`; each mask's heads replaced by their means `means.mu` `[L, N, H]`).

    Returns `(surrogate, mean sampled loss)`.
    """
    fixed = jax.lax.stop_gradient(logits)
    masks = jax.random.bernoulli(key, jax.nn.sigmoid(fixed), (samples, *logits.shape))  # [S, L, N]
    blends = HeadBlend.hard(masks, jnp.broadcast_to(means.mu, (samples, *means.mu.shape)))
    losses = stacked_losses(params, blends, take(rows, index), config=config, batch_size=samples).mean(1)
    rewards = -losses - sparsity * masks.sum((1, 2))
    estimate = jax.lax.stop_gradient(score_function_gradient(fixed, masks, rewards))
    return -jnp.sum(estimate * logits), losses.mean()  # descend the negative expected reward


def select_heads(model, task: Task, mu, settings: ReinforceConfig = ReinforceConfig(), *,
                 template: Template = Template(), checkpoint_dir=None, resume: bool = False,
                 run_info: dict | None = None) -> HeadSelection:
    """Search a hard head set on zero-shot train prompts; keep the one with the best validation objective.

    `mu` `[L, N, H]` may be None when resuming (the checkpoint's are used); `checkpoint_dir`,
    `resume` and `run_info` as in `tvjax.fitting.fit`: the search resumes exactly.
    """
    config, params, _ = model
    L, N = config.n_layers, config.n_heads
    checkpoints = open_checkpoints(checkpoint_dir, resume, model=model, task=task, template=template,
                                   method="reinforce", settings=settings, run_info=run_info)
    mu = initial_means(mu, checkpoints, config, "select_heads")
    train, valid = (split_rows(model, task, split, template=template, seed=settings.seed)
                    for split in ("train", "valid"))
    logits = jnp.full((L, N), settings.init, jnp.float32)
    state = {"logits": logits, "opt_state": optimizer("adam", settings.learning_rate).init(logits), "mu": mu}
    key = jax.random.key(settings.seed)

    run = placed(train_step(reinforce_loss, "adam", settings.learning_rate, samples=settings.samples))

    def step(state, n):
        index = batch_indices(n_rows(train), settings.batch_size, n - 1, settings.seed)
        logits, opt_state, loss = run(params, state["logits"], state["opt_state"], HeadBlend(None, state["mu"]),
                                      *batch(train, index), jax.random.fold_in(key, n), settings.sparsity, config=config)
        return {"logits": logits, "opt_state": opt_state, "mu": state["mu"]}, loss

    def validate(state):
        heads = np.asarray(state["logits"] > 0)
        loss = float(np.mean(losses(params, HeadBlend.hard(heads, state["mu"]), valid, config=config)))
        return loss + settings.sparsity * heads.sum(), {"valid_loss": loss, "heads": int(heads.sum())}

    trained = loop(step, validate, state, steps=settings.steps, eval_every=settings.eval_every,
                   keep=lambda state: state["logits"], desc=f"reinforce {task.name}", checkpoints=checkpoints)
    heads, mu = np.asarray(trained.best > 0), trained.state["mu"]
    return HeadSelection(HeadBlend.hard(heads, mu), heads, np.asarray(jax.nn.sigmoid(trained.best)),
                         trained.best_step, trained.at(trained.best_step)["valid_loss"], trained.history)
