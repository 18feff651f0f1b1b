"""Fit a soft task vector: learn `theta [L, N]` with Optax, model params and means fixed.

Speed by design: the intervention edits the last prompt token, so nothing before it
depends on `theta`. Each training prompt's prefix (all but its last token) is run
once, without gradient, into a KV cache; a step then runs only the suffix (the last
prompt token, plus the answer tokens when `all_answer_tokens`) on top of the cached
prefixes, with logits only there. Shapes are fixed, so the loop compiles once.
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

from tvjax import __version__
from tvjax.batching import bucket_length, chunks, pad_left
from tvjax.checkpoint import FitCheckpoints, ResumeError
from tvjax.config import ModelConfig
from tvjax.data import Prompt, Task, Template, prompts_for
from tvjax.interventions import HeadBlend
from tvjax.model import KVCache, forward
from tvjax.sharding import MU_AXES, Placement
from tvjax.taskvector import model_shape


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Hyperparameters of `fit` (defaults chosen with scripts/sweep_fit.py on the default model)."""

    steps: int = 100
    learning_rate: float = 0.3
    batch_size: int = 16
    init: float = 0.0  # initial theta: sigmoid(0) = 0.5 weight on the means
    seed: int = 0
    eval_every: int = 10
    sparsity: float = 0.0  # penalty weight on mean(sigmoid(theta))
    optimizer: str = "adam"  # any optax optimizer taking a learning rate: adam, adamw, sgd, lion, ...
    all_answer_tokens: bool = False  # loss on every answer token instead of the first


class Rows(NamedTuple):
    """Training rows: cached prompt prefixes and the suffix that is run with the blend.

    Attributes:
      cache: `KVCache` of the prefixes, k/v `[L, R, S, K, H]`, mask `[R, S]`.
      tokens / mask: `[R, Ts]` suffix tokens (the last prompt token first), right-padded.
      targets / target_mask: `[R, Ts]` next-token targets and which of them count.
    """

    cache: KVCache
    tokens: jax.Array
    mask: jax.Array
    targets: jax.Array
    target_mask: jax.Array


class FitResult(NamedTuple):
    blend: HeadBlend  # theta with the best validation loss
    best_step: int
    best_valid_loss: float
    history: list  # dicts: step, train_loss (mean since the last eval), valid_loss


def prepare_rows(model, prompts: list[Prompt], all_answer_tokens: bool = False, batch_size: int = 16) -> Rows:
    """Run every prompt's prefix once into a KV cache and lay out suffixes and targets."""
    config, params, _ = model
    if any(len(p.ids) < 2 for p in prompts):
        raise ValueError("every fitting prompt needs at least 2 tokens (a prefix and the edited last token)")
    suffixes = [[p.ids[-1]] + (p.answer[:-1] if all_answer_tokens else []) for p in prompts]
    targets = [p.answer if all_answer_tokens else p.answer[:1] for p in prompts]
    Tp, Ts = bucket_length(max(len(p.ids) - 1 for p in prompts)), max(map(len, suffixes))
    place, caches = Placement.of(params), []
    param_shardings = place.params(params)
    cache_shardings = place.cache(jax.eval_shape(lambda: KVCache.empty(config, batch_size, Tp + Ts)))
    for chunk, _ in chunks(prompts, batch_size):  # padded rows are cut off below
        tokens, mask = pad_left([p.ids[:-1] for p in chunk], 0, Tp)
        caches.append(place.run(_prefill, (params, tokens, mask),
                                (param_shardings, place.batch(tokens), place.batch(mask)), cache_shardings,
                                config=config, length=Tp + Ts))
    n = len(prompts)
    cache = KVCache(jnp.concatenate([c.k for c in caches], axis=1)[:, :n],
                    jnp.concatenate([c.v for c in caches], axis=1)[:, :n],
                    jnp.concatenate([c.mask for c in caches])[:n], caches[0].end)
    rows = Rows(cache, *_right_pad(suffixes, Ts), *_right_pad(targets, Ts))
    return place.put(rows, rows_shardings(place, rows))


def rows_shardings(place: Placement, rows: Rows) -> Rows:
    """Rows split over `R` (the batch), the cache by `tvjax.sharding.CACHE_AXES`."""
    return Rows(place.cache(rows.cache), *(place.batch(x) for x in rows[1:]))


def _right_pad(rows: list[list[int]], length: int) -> tuple[jax.Array, jax.Array]:
    """`[R, length]` int32 tokens padded with 0 on the right, and `[R, length]` bool presence."""
    tokens = np.zeros((len(rows), length), np.int32)
    present = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], present[i, :len(row)] = row, True
    return jnp.asarray(tokens), jnp.asarray(present)


@functools.partial(jax.jit, static_argnames=("config", "length"))
def _prefill(params, tokens, mask, *, config: ModelConfig, length: int) -> KVCache:
    B = tokens.shape[0]
    out = forward(params, tokens, config=config, mask=mask, cache=KVCache.empty(config, B, length),
                  logits_at=jnp.zeros((B,), jnp.int32))
    return out.cache


def row_losses(params, config: ModelConfig, blend: HeadBlend, rows: Rows) -> jax.Array:
    """Mean answer cross-entropy per row `[R]`, with the blend on each row's last prompt token."""
    edit = jnp.zeros(rows.tokens.shape, bool).at[:, 0].set(True)
    logits = forward(params, rows.tokens, config=config, mask=rows.mask, blend=blend, edit_mask=edit,
                     cache=rows.cache).logits  # [R, Ts, V]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), rows.targets[..., None], axis=-1)[..., 0]
    return (nll * rows.target_mask).sum(-1) / rows.target_mask.sum(-1)


def take(rows: Rows, index: jax.Array) -> Rows:
    """The rows at `index` (`[B]`)."""
    c = rows.cache
    cache = KVCache(c.k[:, index], c.v[:, index], c.mask[index], c.end)
    return Rows(cache, rows.tokens[index], rows.mask[index], rows.targets[index], rows.target_mask[index])


def optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """`optax.<name>(learning_rate)`, with a clear error for an unknown name."""
    make = getattr(optax, name, None)
    if name.startswith("_") or not callable(make):
        raise ValueError(f"unknown optax optimizer {name!r}; e.g. adam, adamw, sgd, lion, rmsprop")
    return make(learning_rate)


def train_step(theta, opt_state, mu, params, rows: Rows, index, sparsity, *, config: ModelConfig,
               learning_rate: float, optimizer_name: str = "adam"):
    """One optimizer step on `theta` `[L, N]` over the rows at `index` `[B]`; returns (theta, opt_state, loss).

    On a mesh (params from `tvjax.load(..., mesh=...)`) theta, its optimizer state, index
    and loss are replicated, mu, params and rows sharded by `tvjax.sharding`'s table.
    """
    place = Placement.of(params)
    return _on_mesh(place, place.run, (theta, opt_state, mu, params, rows, index, sparsity), config=config,
                    learning_rate=learning_rate, optimizer_name=optimizer_name)


def lower_train_step(mesh, theta, opt_state, mu, params, rows: Rows, index, sparsity, **static):
    """`train_step` on `mesh`, lowered for these arrays or `jax.ShapeDtypeStruct`s (memory planning)."""
    place = Placement(mesh)
    return _on_mesh(place, place.lower, (theta, opt_state, mu, params, rows, index, sparsity), **static)


def _on_mesh(place: Placement, how, args: tuple, **static):
    """`how` (`place.run` or `place.lower`) applied to `_train_step` with its shardings."""
    theta, opt_state, mu, params, rows, index, sparsity = args
    rep, mu = place.replicated, place.sharding(np.shape(mu), *MU_AXES)
    ins = (rep, rep, mu, place.params(params), rows_shardings(place, rows), rep, rep)
    return how(_train_step, args, ins, (rep, rep, rep), donate=(0, 1), **static)


@functools.partial(jax.jit, static_argnames=("config", "learning_rate", "optimizer_name"),
                   donate_argnames=("theta", "opt_state"))
def _train_step(theta, opt_state, mu, params, rows: Rows, index, sparsity, *, config: ModelConfig,
                learning_rate: float, optimizer_name: str = "adam"):

    def loss_fn(theta):
        losses = row_losses(params, config, HeadBlend(theta, mu), take(rows, index))
        return losses.mean() + sparsity * jax.nn.sigmoid(theta).mean()

    loss, grad = jax.value_and_grad(loss_fn)(theta)
    updates, opt_state = optimizer(optimizer_name, learning_rate).update(grad, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, loss


def mean_loss(params, blend: HeadBlend, rows: Rows, *, config: ModelConfig) -> jax.Array:
    """Mean of `row_losses` (a float32 scalar), on the params' mesh if any."""
    place = Placement.of(params)
    shardings = (place.params(params), place.interventions(blend), rows_shardings(place, rows))
    return place.run(_mean_loss, (params, blend, rows), shardings, place.replicated, config=config)


@functools.partial(jax.jit, static_argnames="config")
def _mean_loss(params, blend: HeadBlend, rows: Rows, *, config: ModelConfig) -> jax.Array:
    return row_losses(params, config, blend, rows).mean()


def batch_indices(n_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of training step `step`: consecutive slices of seeded per-epoch permutations."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_rows)
        order = np.random.default_rng([seed, epoch]).permutation(n_rows)
        out.extend(order[offset: offset + batch_size - len(out)])
    return np.asarray(out, np.int32)


def fit(model, task: Task, mu, config: FitConfig = FitConfig(), *, template: Template = Template(),
        checkpoint_dir=None, resume: bool = False, run_info: dict | None = None) -> FitResult:
    """Fit `theta` on zero-shot train prompts; keep the one with the best validation loss.

    Args:
      model: a `tvjax.Model`.  task: the `Task`.  mu: `[L, N, H]` head means (may be None
        when resuming: the checkpoint's are used).
      checkpoint_dir: save an Orbax checkpoint at every validation (see `tvjax.checkpoint`).
      resume: continue from the latest checkpoint in `checkpoint_dir` (if there is one).
        The data order is a function of (seed, step), so the resumed run is the same run.
      run_info: extra JSON-able run description (e.g. the model id) that must match on resume.
    """
    model_config, params, tokenizer = model
    L, N = model_config.n_layers, model_config.n_heads
    checkpoints = None
    if checkpoint_dir is not None:
        run = {"model": model_shape(model_config), "task": task.name, "task_digest": task.digest(),
               "template": template.text, "fit": {k: v for k, v in dataclasses.asdict(config).items() if k != "steps"},
               "tvjax_version": __version__, **(run_info or {})}
        checkpoints = FitCheckpoints(checkpoint_dir, run, resume=resume)
    if mu is None and (checkpoints is None or checkpoints.latest_step() is None):
        raise ValueError("fit needs the head means mu [L, N, H] (only a resumed fit takes them from its checkpoint)")
    mu = jnp.zeros((L, N, model_config.head_dim), jnp.float32) if mu is None else jnp.asarray(mu, jnp.float32)
    train_prompts, _ = prompts_for(tokenizer, task, "train", 0, template=template, seed=config.seed)
    valid_prompts, _ = prompts_for(tokenizer, task, "valid", 0, template=template, seed=config.seed)
    train = prepare_rows(model, train_prompts, config.all_answer_tokens, config.batch_size)
    valid = prepare_rows(model, valid_prompts, config.all_answer_tokens, config.batch_size)
    theta = jnp.full((L, N), config.init, jnp.float32)
    opt_state = optimizer(config.optimizer, config.learning_rate).init(theta)

    def validate(theta):
        return float(mean_loss(params, HeadBlend(theta, mu), valid, config=model_config))

    state = {"theta": theta, "opt_state": opt_state, "best_theta": theta, "mu": mu}
    if checkpoints is not None and checkpoints.latest_step() is not None:
        start, state, progress = checkpoints.restore(state)
        if start > config.steps:
            raise ResumeError(f"the checkpoint is at step {start}, past the {config.steps} steps asked for")
        best_loss, best_step, history = progress["best_valid_loss"], progress["best_step"], progress["history"]
    else:
        start, best_loss, best_step = 0, validate(theta), 0
        history = [{"step": 0, "train_loss": None, "valid_loss": best_loss}]
    theta, opt_state, best_theta, mu = state["theta"], state["opt_state"], jnp.array(state["best_theta"]), state["mu"]
    running = []
    bar = tqdm(range(start + 1, config.steps + 1), desc=f"fit {task.name}", leave=False, disable=None,
               initial=start, total=config.steps)
    try:
        for step in bar:
            index = jnp.asarray(batch_indices(len(train_prompts), config.batch_size, step - 1, config.seed))
            theta, opt_state, loss = train_step(theta, opt_state, mu, params, train, index, config.sparsity,
                                                config=model_config, learning_rate=config.learning_rate,
                                                optimizer_name=config.optimizer)
            running.append(loss)
            if step % config.eval_every == 0 or step == config.steps:
                valid_loss = validate(theta)
                history.append({"step": step, "train_loss": float(np.mean(running)), "valid_loss": valid_loss})
                running = []
                bar.set_postfix(train=f"{history[-1]['train_loss']:.3f}", valid=f"{valid_loss:.3f}")
                if valid_loss < best_loss:
                    best_theta, best_loss, best_step = jnp.array(theta), valid_loss, step  # a copy: theta is donated
                if checkpoints is not None:
                    checkpoints.save(step, {"theta": theta, "opt_state": opt_state, "best_theta": best_theta, "mu": mu},
                                     {"best_valid_loss": best_loss, "best_step": best_step, "history": history},
                                     valid_loss)
    finally:
        if checkpoints is not None:
            checkpoints.close()
    return FitResult(HeadBlend(best_theta, mu), best_step, best_loss, history)
