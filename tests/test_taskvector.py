import subprocess
import sys

import numpy as np
import pytest

import tvjax
from tvjax.taskvector import TaskVectorError, load_task_vector, save_task_vector


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
    with pytest.raises(TaskVectorError, match="made for model.*cannot be applied to model"):
        tv.check(c.replace(n_layers=5))


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
