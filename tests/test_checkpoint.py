"""Orbax checkpoints of the training loop: exact resume of `fit` and of REINFORCE after SIGKILL,
of `fit_many`, refusals, cross-mesh restore."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvjax
from tvjax.checkpoint import FitCheckpoints, ResumeError

SETTINGS = dict(steps=40, eval_every=4, batch_size=4, learning_rate=0.1)
LAST = {"positions": "last", "form": "blend"}  # one stage (positions 'split' checkpoints each in a folder)
# method -> (function, settings class, settings): both run on the one training loop
METHODS = {"fit": ("fit", "FitConfig", dict(SETTINGS, **LAST)),
           "reinforce": ("select_heads", "ReinforceConfig", dict(SETTINGS, samples=4))}

CHILD = """
import sys, numpy as np, tvjax
model = tvjax.load(sys.argv[1])
tvjax.{function}(model, tvjax.load_task(sys.argv[2]), np.load(sys.argv[3]), tvjax.{settings}(**{values}),
                 checkpoint_dir=sys.argv[4], resume=True)
"""


@pytest.fixture()
def run_files(tmp_path, tiny_lm, tiny_task):
    """The tiny task as a file and random means `[L, N, H]`, as a child process needs them."""
    task_file = tmp_path / "upper.json"
    task_file.write_text(json.dumps([{"input": x, "output": y} for x, y in tiny_task.train + tiny_task.valid
                                     + tiny_task.test]))
    c = tiny_lm.config
    mu = np.random.default_rng(0).normal(size=(c.n_layers, c.n_heads, c.head_dim)).astype(np.float32)
    np.save(tmp_path / "mu.npy", mu)
    return task_file, tmp_path / "mu.npy", mu


def _steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.exists() else []


def _fingerprint(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_after_sigkill_is_exact(tmp_path, tiny_lm, tiny_lm_dir, run_files, method):
    task_file, mu_file, mu = run_files
    task = tvjax.load_task(task_file)
    function, settings, values = METHODS[method]
    run, config = getattr(tvjax, function), getattr(tvjax, settings)(**values)
    reference = run(tiny_lm, task, mu, config)

    ckpt = tmp_path / "ckpt"
    kill_after = int(np.random.default_rng().integers(8, 28))  # a random step
    child_code = CHILD.format(function=function, settings=settings, values=values)
    child = subprocess.Popen([sys.executable, "-c", child_code, str(tiny_lm_dir), str(task_file), str(mu_file),
                              str(ckpt)], stderr=subprocess.PIPE)
    while child.poll() is None and (_steps(ckpt) or [0])[-1] < kill_after:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    stderr = child.communicate()[1].decode()
    assert child.returncode == -signal.SIGKILL, f"the fit ended before it was killed:\n{stderr[-2000:]}"
    killed_at = _steps(ckpt)[-1]
    assert killed_at < config.steps

    resumed = run(tiny_lm, task, None, config, checkpoint_dir=ckpt, resume=True)
    np.testing.assert_array_equal(resumed.blend.theta, reference.blend.theta)  # bitwise
    np.testing.assert_array_equal(resumed.blend.mu, mu)
    if method == "reinforce":
        np.testing.assert_array_equal(resumed.probabilities, reference.probabilities)
    assert (resumed.best_step, resumed.best_valid_loss) == (reference.best_step, reference.best_valid_loss)
    assert resumed.history == reference.history
    assert _steps(ckpt)[-1] == config.steps


@pytest.mark.parametrize("form", ["blend", "shift"])
def test_a_split_fit_resumes_from_either_stage(tmp_path, tiny_lm, run_files, form):
    """positions 'split' checkpoints each stage in its own folder; a run stopped after the first
    stage resumes into the second and ends as the uninterrupted run (the shift form's zero-shot
    means from the checkpoint too)."""
    task_file, _, mu = run_files
    task = tvjax.load_task(task_file)
    config = tvjax.FitConfig(steps=8, eval_every=4, batch_size=4, positions="split", form=form, answer_steps=8)
    reference = tvjax.fit(tiny_lm, task, mu, config)
    ckpt = tmp_path / "ckpt"
    tvjax.fit(tiny_lm, task, mu, dataclasses.replace(config, positions="last"), checkpoint_dir=ckpt / "last")
    resumed = tvjax.fit(tiny_lm, task, None, config, checkpoint_dir=ckpt, resume=True)
    np.testing.assert_array_equal(resumed.blend.logits(), reference.blend.logits())
    assert (resumed.blend.base is None) == (form == "blend")
    if form == "shift":
        np.testing.assert_array_equal(resumed.blend.base, reference.blend.base)
    assert resumed.best_step == reference.best_step  # the first stage's rows laid out apart: losses to rounding
    assert [(h["stage"], h["step"]) for h in resumed.history] == [(h["stage"], h["step"]) for h in reference.history]
    np.testing.assert_allclose([h["valid_loss"] for h in resumed.history],
                               [h["valid_loss"] for h in reference.history], rtol=1e-6)
    assert sorted(p.name for p in ckpt.iterdir()) == ["answer", "last"]


def test_fit_many_resumes_to_the_uninterrupted_run(tmp_path, tiny_lm, run_files):
    """fit_many checkpoints every task's state in one folder; a run whose last steps are lost
    resumes from the latest one left and ends as the uninterrupted run, every task's best included."""
    task_file, _, mu = run_files
    task = tvjax.load_task(task_file)
    tasks = [task, tvjax.Task.from_pairs("other", task.train + task.valid + task.test, seed=1)]
    config = tvjax.FitConfig(steps=12, eval_every=4, batch_size=4, learning_rate=0.1, **LAST)
    reference = tvjax.fit_many(tiny_lm, tasks, [mu, -mu], config)
    ckpt = tmp_path / "ckpt"
    tvjax.fit_many(tiny_lm, tasks, [mu, -mu], config, checkpoint_dir=ckpt)
    assert _steps(ckpt) == [4, 8, 12]
    shutil.rmtree(ckpt / "12")  # as if the run had stopped after step 8
    resumed = tvjax.fit_many(tiny_lm, tasks, None, config, checkpoint_dir=ckpt, resume=True)
    for a, (ours, theirs) in enumerate(zip(resumed, reference)):
        np.testing.assert_array_equal(ours.blend.theta, theirs.blend.theta)  # bitwise
        np.testing.assert_array_equal(ours.blend.mu, [mu, -mu][a])
        assert (ours.best_step, ours.best_valid_loss, ours.history) == (theirs.best_step, theirs.best_valid_loss,
                                                                        theirs.history)
    with pytest.raises(ResumeError, match="task"):
        tvjax.fit_many(tiny_lm, tasks[::-1], [mu, -mu], config, checkpoint_dir=ckpt, resume=True)


def test_refusals_leave_checkpoints_untouched(tmp_path, tiny_lm, run_files):
    task_file, _, mu = run_files
    task = tvjax.load_task(task_file)
    config = tvjax.FitConfig(steps=8, eval_every=4, batch_size=4, **LAST)
    ckpt = tmp_path / "ckpt"
    tvjax.fit(tiny_lm, task, mu, config, checkpoint_dir=ckpt)
    before = _fingerprint(ckpt)

    with pytest.raises(ResumeError, match="already holds checkpoints"):
        tvjax.fit(tiny_lm, task, mu, config, checkpoint_dir=ckpt)
    other = tvjax.Task.from_pairs("other", task.train + task.valid + task.test, seed=1)
    with pytest.raises(ResumeError, match="another run.*task 'upper' \\(now 'other'\\)"):
        tvjax.fit(tiny_lm, other, mu, config, checkpoint_dir=ckpt, resume=True)
    with pytest.raises(ResumeError, match="learning_rate"):
        tvjax.fit(tiny_lm, task, mu, tvjax.FitConfig(steps=8, eval_every=4, batch_size=4, learning_rate=0.01, **LAST),
                  checkpoint_dir=ckpt, resume=True)
    with pytest.raises(ResumeError, match="past the 4 steps"):
        tvjax.fit(tiny_lm, task, mu, tvjax.FitConfig(steps=4, eval_every=4, batch_size=4, **LAST), checkpoint_dir=ckpt,
                  resume=True)
    with pytest.raises(ValueError, match="needs the head means"):
        tvjax.fit(tiny_lm, task, None, config, checkpoint_dir=tmp_path / "empty", resume=True)
    assert _fingerprint(ckpt) == before

    biggest = max((p for p in (ckpt / "8").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # truncate the latest step
    before = _fingerprint(ckpt)
    with pytest.raises(ResumeError, match="step 8 .* unreadable"):
        tvjax.fit(tiny_lm, task, mu, config, checkpoint_dir=ckpt, resume=True)
    assert _fingerprint(ckpt) == before


MESH_CHILD = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tvjax.checkpoint import FitCheckpoints
mesh = jax.make_mesh((2, 4), ("data", "tensor"))
sharding = NamedSharding(mesh, P("data", "tensor"))
theta = jax.device_put(np.arange(32, dtype=np.float32).reshape(4, 8), sharding)
state = {"theta": theta, "count": jnp.int32(7)}
if sys.argv[1] == "save":
    ckpt = FitCheckpoints(sys.argv[2], {"run": 1})
    ckpt.save(3, state, {"note": "8 devices"}, 0.5)
    ckpt.close()
else:
    ckpt = FitCheckpoints(sys.argv[2], {"run": 1}, resume=True)
    step, restored, progress = ckpt.restore(state)
    assert restored["theta"].sharding == sharding and len(restored["theta"].addressable_shards) == 8
    np.testing.assert_array_equal(restored["theta"], np.arange(32).reshape(4, 8) + 1)
    assert (step, progress["note"]) == (5, "1 device")
    print("restored onto 8 devices")
"""


def test_restore_across_meshes(tmp_path):
    """Written sharded on 8 simulated devices, restored onto 1, saved there and restored onto 8."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = lambda *args: subprocess.run([sys.executable, "-c", textwrap.dedent(MESH_CHILD), *map(str, args)],
                                       env=env, capture_output=True, text=True, check=True)
    run("save", tmp_path / "eight")
    like = {"theta": jnp.zeros((4, 8), jnp.float32), "count": jnp.int32(0)}
    eight = FitCheckpoints(tmp_path / "eight", {"run": 1}, resume=True)
    step, state, progress = eight.restore(like)
    eight.close()
    assert (step, progress["note"]) == (3, "8 devices") and len(jax.devices()) == 1
    np.testing.assert_array_equal(state["theta"], np.arange(32).reshape(4, 8))
    assert int(state["count"]) == 7

    one = FitCheckpoints(tmp_path / "one", {"run": 1})
    one.save(5, {"theta": state["theta"] + 1, "count": state["count"]}, {"note": "1 device"}, 0.5)
    one.close()
    assert "restored onto 8 devices" in run("restore", tmp_path / "one").stdout
