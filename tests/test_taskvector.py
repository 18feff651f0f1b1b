import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import tvjax
from tvjax.taskvector import FORMAT, TaskVectorError, load_task_vector, model_shape, save_task_vector


def test_round_trip_keeps_arrays_and_metadata(tmp_path, tiny_lm):
    c = tiny_lm.config
    theta = np.random.default_rng(0).normal(size=(c.n_layers, c.n_heads)).astype(np.float32)
    mu = np.random.default_rng(1).normal(size=(c.n_layers, c.n_heads, c.head_dim)).astype(np.float32)
    path = save_task_vector(tmp_path / "tv.safetensors", theta, mu, c, task="upper", steps=3)
    tv = load_task_vector(path)
    np.testing.assert_array_equal(tv.theta, theta)
    np.testing.assert_array_equal(tv.mu, mu)
    assert tv.info == {"task": "upper", "steps": 3} and tv.model["n_heads"] == c.n_heads
    tv.check(c)
    with pytest.raises(TaskVectorError, match=f"head_blend made for a {c.family} model cannot be applied to a "
                                              f"{c.family} model: n_layers {c.n_layers} vs 5$"):
        tv.check(c.replace(n_layers=5))


def test_a_file_for_another_model_names_both_models_and_how_they_differ(tmp_path, tiny_lm):
    c = tiny_lm.config
    path = save_task_vector(tmp_path / "tv.safetensors", np.zeros((c.n_layers, c.n_heads)),
                            np.zeros((c.n_layers, c.n_heads, c.head_dim)), c, model="gemma-3-270m")
    other = c.replace(family="gemma3", n_layers=30, d_model=576)
    with pytest.raises(TaskVectorError, match=f"head_blend made for model 'gemma-3-270m' cannot be applied to model "
                                              f"'smollm2-135m': family {c.family} vs gemma3, n_layers {c.n_layers} "
                                              f"vs 30, d_model {c.d_model} vs 576$"):
        load_task_vector(path).check(other, "smollm2-135m")


def test_readable_without_jax(tmp_path, tiny_lm):
    c = tiny_lm.config
    save_task_vector(tmp_path / "tv.safetensors", np.zeros((c.n_layers, c.n_heads)),
                     np.zeros((c.n_layers, c.n_heads, c.head_dim)), c)
    code = ("import sys; sys.modules['jax'] = None; from tvjax.taskvector import load_task_vector; "
            f"print(load_task_vector({str(tmp_path / 'tv.safetensors')!r}).theta.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"({c.n_layers}, {c.n_heads})"


def test_bad_files_are_clear_errors(tmp_path, tiny_lm):
    c = tiny_lm.config
    with pytest.raises(TaskVectorError, match="no task-vector file"):
        load_task_vector(tmp_path / "missing.safetensors")
    with pytest.raises(TaskVectorError, match="do not fit model"):
        save_task_vector(tmp_path / "x.safetensors", np.zeros((1, 1)), np.zeros((1, 1, 1)), c)
    path = save_task_vector(tmp_path / "tv.safetensors", np.zeros((c.n_layers, c.n_heads)),
                            np.zeros((c.n_layers, c.n_heads, c.head_dim)), c)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TaskVectorError, match="not a readable task-vector file"):
        load_task_vector(path)


def test_extractor_saves_and_loads_with_the_same_accuracy(tmp_path, tiny_lm, echo_task):
    tv = tvjax.TaskVectorExtractor(tiny_lm, echo_task, shots=3, n_prompts=8,
                                   fit_config=tvjax.FitConfig(steps=5, batch_size=4, init=1.0))
    tv.fit()
    before = tv.evaluate(("task_vector",))["task_vector"]
    assert 0 < before.first_token < 1, "the fitted vector should change some of the model's own answers"
    path = tv.save(tmp_path / "echo.safetensors")
    again = tvjax.TaskVectorExtractor(tiny_lm, echo_task, shots=3)
    again.load(path)
    np.testing.assert_array_equal(again.blend.theta, tv.blend.theta)
    np.testing.assert_array_equal(again.blend.mu, tv.blend.mu)
    assert again.evaluate(("task_vector",))["task_vector"] == before
    info = load_task_vector(path).info
    assert info["task"] == "echo" and info["best_valid_loss"] == tv.result.best_valid_loss


def _write(path, theta, mu, **metadata):
    """A file in the task-vector layout with the given arrays and metadata entries (None: left out)."""
    from safetensors.numpy import save_file

    entries = {"format": "tvjax-task-vector", "format_version": "1", "info": "{}", **metadata}
    save_file({"theta": np.asarray(theta, np.float32), "mu": np.asarray(mu, np.float32)}, str(path),
              metadata={k: v for k, v in entries.items() if v is not None})
    return path


def test_bad_contents_are_refused_with_the_file_and_the_problem(tmp_path, tiny_lm):
    c = tiny_lm.config
    L, N, H = c.n_layers, c.n_heads, c.head_dim
    shape = json.dumps({"family": c.family, "n_layers": L, "n_heads": N, "head_dim": H, "d_model": c.d_model})
    theta, mu = np.zeros((L, N)), np.zeros((L, N, H))
    nan_theta, inf_mu = theta.copy(), mu.copy()
    nan_theta[1, 2], inf_mu[0, 1, 3] = np.nan, np.inf
    cases = {  # file -> (theta, mu, metadata, the message)
        "nan_theta": (nan_theta, mu, {"model": shape}, r"theta has 1 NaN value\(s\), the first at \(1, 2\)"),
        "inf_mu": (theta, inf_mu, {"model": shape}, r"mu has 1 non-finite value\(s\), the first at \(0, 1, 3\)"),
        "no_model": (theta, mu, {"model": None}, "the metadata lacks 'model'"),
        "bad_json": (theta, mu, {"model": "{not json"}, "'model' is not valid JSON"),
        "no_heads": (theta, mu, {"model": json.dumps({"family": c.family, "n_layers": L})},
                     "the model metadata lacks n_heads, head_dim, d_model"),
        "wrong_shape": (theta[:, :2], mu[:, :2], {"model": shape}, rf"theta \({L}, 2\), mu \({L}, 2, {H}\) disagree"),
    }
    for name, (t, m, metadata, message) in cases.items():
        path = _write(tmp_path / f"{name}.safetensors", t, m, **metadata)
        with pytest.raises(TaskVectorError, match=f"{name}.safetensors: .*{message}"):
            load_task_vector(path)
    with pytest.raises(TaskVectorError, match="NaN"):
        save_task_vector(tmp_path / "never.safetensors", nan_theta, mu, c)
    assert not (tmp_path / "never.safetensors").exists()
    hard = np.where(np.eye(L, N, dtype=bool), np.inf, -np.inf)  # a hard head set: +-inf theta is allowed
    np.testing.assert_array_equal(load_task_vector(save_task_vector(tmp_path / "hard.safetensors", hard, mu, c)).theta,
                                  hard)


def test_every_intervention_kind_round_trips_through_one_format(tmp_path, tiny_lm):
    c = tiny_lm.config
    rng = np.random.default_rng(3)
    fv = tvjax.ResidualEdit.adding(c, 1, rng.normal(size=c.d_model))
    patch = tvjax.ResidualEdit.patching(c, 0, rng.normal(size=c.d_model))
    hard = tvjax.HeadBlend.hard(np.eye(c.n_layers, c.n_heads, dtype=bool), rng.normal(size=(c.n_layers, c.n_heads,
                                                                                          c.head_dim)))
    for name, intervention in {"fv": fv, "patch": patch, "hard": hard}.items():
        path = tvjax.save_intervention(tmp_path / f"{name}.safetensors", intervention, c, method=name)
        loaded = tvjax.load_intervention(path)
        loaded.check(c)
        assert loaded.info == {"method": name} and type(loaded.intervention()) is type(intervention)
        for ours, theirs in zip(jax.tree.leaves(loaded.intervention()), jax.tree.leaves(intervention)):
            np.testing.assert_array_equal(ours, np.asarray(theirs))
    with pytest.raises(TaskVectorError, match="holds a residual_edit .* read it with tvjax.load_intervention"):
        load_task_vector(tmp_path / "fv.safetensors")


def test_bad_residual_edits_are_refused(tmp_path, tiny_lm):
    from safetensors.numpy import save_file

    c = tiny_lm.config
    L, D = c.n_layers, c.d_model
    arrays = {"add": np.zeros((L, D), np.float32), "target": np.zeros((L, D), np.float32),
              "weight": np.zeros(L, np.float32)}
    shape = json.dumps({"family": c.family, "n_layers": L, "n_heads": c.n_heads, "head_dim": c.head_dim,
                        "d_model": D})
    metadata = {"format": "tvjax-task-vector", "format_version": "2", "kind": "residual_edit", "model": shape,
                "info": "{}"}
    cases = {  # file -> (arrays, metadata, the message)
        "inf_add": ({**arrays, "add": np.full((L, D), np.inf, np.float32)}, metadata,
                    r"add has \d+ non-finite value\(s\)"),
        "short_target": ({**arrays, "target": np.zeros((L, D - 1), np.float32)}, metadata,
                         rf"target \({L}, {D - 1}\).* disagree"),
        "bad_kind": (arrays, {**metadata, "kind": "steering"}, "unknown kind 'steering'"),
    }
    for name, (a, m, message) in cases.items():
        save_file(a, str(tmp_path / f"{name}.safetensors"), metadata=m)
        with pytest.raises(TaskVectorError, match=f"{name}.safetensors: .*{message}"):
            tvjax.load_intervention(tmp_path / f"{name}.safetensors")
    with pytest.raises(TaskVectorError, match="cannot save an intervention of type Edit"):
        tvjax.save_intervention(tmp_path / "edit.safetensors", tvjax.Edit("heads", lambda x, l, d: x), c)


@pytest.mark.parametrize("positions,form", [("answer", "blend"), ("split", "blend"), ("split", "shift")])
def test_the_edit_positions_travel_with_the_file(tmp_path, tiny_lm, tiny_task, positions, form):
    """Where the vector acts and its form (the shift form's zero-shot means `base`) travel with the file."""
    settings = tvjax.FitConfig(steps=2, eval_every=1, batch_size=4, positions=positions, form=form)
    tv = tvjax.TaskVectorExtractor(tiny_lm, tiny_task, shots=2, n_prompts=2, fit_config=settings)
    tv.fit()
    loaded = load_task_vector(tv.save(tmp_path / "tv.safetensors"))
    assert loaded.positions == positions and loaded.info["fit"]["positions"] == positions
    assert (loaded.theta_answer is not None) == (positions == "split")
    if positions == "split":
        np.testing.assert_array_equal(loaded.theta_answer, tv.blend.theta_answer)
    assert (loaded.base is not None) == (form == "shift") == (tv.blend.base is not None)
    if form == "shift":  # the fit's zero-shot means of the train split
        np.testing.assert_allclose(loaded.base, tvjax.extract_means(tiny_lm, tiny_task, shots=0), rtol=1e-5, atol=1e-6)
    other = tvjax.TaskVectorExtractor(tiny_lm, tiny_task, shots=2)
    other.load(tmp_path / "tv.safetensors")
    assert other.positions == positions
    assert other.evaluate(("task_vector",)) == tv.evaluate(("task_vector",))
    assert load_task_vector(save_task_vector(tmp_path / "old.safetensors", loaded.theta, loaded.mu,
                                             tiny_lm.config)).positions == "last"  # files that do not say
    with pytest.raises(TaskVectorError, match="positions='all'"):
        save_task_vector(tmp_path / "bad.safetensors", loaded.theta, loaded.mu, tiny_lm.config, positions="all")
    with pytest.raises(ValueError, match="positions='every'"):
        tvjax.FitConfig(positions="every")


def test_split_files_hold_answer_logits_and_only_they_do(tmp_path, tiny_lm):
    from safetensors.numpy import save_file

    c = tiny_lm.config
    theta, mu = np.zeros((c.n_layers, c.n_heads)), np.zeros((c.n_layers, c.n_heads, c.head_dim))
    with pytest.raises(TaskVectorError, match="positions 'split' needs the answer-token logits theta_answer"):
        save_task_vector(tmp_path / "a.safetensors", theta, mu, c, positions="split")
    with pytest.raises(TaskVectorError, match="positions 'last' with theta_answer"):
        save_task_vector(tmp_path / "b.safetensors", theta, mu, c, theta)
    with pytest.raises(TaskVectorError, match=r"theta_answer \(2, 3\)"):
        save_task_vector(tmp_path / "c.safetensors", theta, mu, c, theta[:, :3], positions="split")
    with pytest.raises(TaskVectorError, match=r"base \(2, 3, \d+\)"):  # the shift form's zero-shot means
        save_task_vector(tmp_path / "e.safetensors", theta, mu, c, base=mu[:, :3])
    arrays = {"theta": theta, "mu": mu, "theta_answer": theta}
    save_file({k: v.astype(np.float32) for k, v in arrays.items()}, str(tmp_path / "d.safetensors"),
              metadata={"format": FORMAT, "format_version": "2", "kind": "head_blend",
                        "model": json.dumps(model_shape(c)), "info": "{}"})
    with pytest.raises(TaskVectorError, match="d.safetensors: positions 'last' with theta_answer"):
        load_task_vector(tmp_path / "d.safetensors")
