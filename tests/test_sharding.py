"""Meshes and sharding: the rule table in-process (one device), then equality with the
one-device run on 8 simulated CPU devices and a 2-process run, each in subprocesses
(the device-count flag must be set before JAX starts)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CONFIGS, save_tiny_lm
from jax.sharding import PartitionSpec as P

import tvjax
from tvjax.convert.architectures import config_from_hf
from tvjax.model import param_axes
from tvjax.sharding import logical_spec, make_mesh, parse_mesh, partition_spec

HERE = Path(__file__).parent
MESHES = ["data=8", "fsdp=8", "tensor=8", "data=2,fsdp=2,tensor=2"]
# Subprocesses compile with most XLA optimisations off (half the CPU time); each compares
# against a one-device run under the same setting.
CPU_ENV = {"JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "PYTHONPATH": str(HERE.parent)}


@pytest.fixture(scope="module")
def tiny8_dir(tmp_path_factory):
    """A tiny random Llama with N=8 heads (they divide tensor=8) and K=4 kv heads (they don't),
    D=64, F=128, L=2 and the default model's tokenizer."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny8"), n_heads=8, n_kv_heads=4)


def test_mesh_specs_parse_and_default_to_data():
    assert parse_mesh("data=2, fsdp=2,tensor=2") == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="axis=size"):
        parse_mesh("model=2")
    assert dict(make_mesh().shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    assert dict(make_mesh("fsdp=-1").shape)["fsdp"] == jax.device_count()
    with pytest.raises(ValueError, match=f"does not use the {jax.device_count()} devices"):
        make_mesh({"data": 2 * jax.device_count()})


def test_one_rule_table_for_params_and_activations(tiny_lm):
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    L, D, N, K, H, B, T = 2, 64, 8, 4, 8, 8, 16
    axes = param_axes(tiny_lm.config)  # the params' letters, declared by the modules' einsums
    assert axes["layers"]["attn"]["q"]["kernel"] == "LDNH" and axes["embed"]["embedding"] == "VD"
    assert partition_spec("LDNH", (L, D, N, H), mesh) == P(None, "fsdp", "tensor", None)
    assert partition_spec("VD", (49152, D), mesh) == P("tensor", "fsdp")
    assert partition_spec("BTD", (B, T, D), mesh) == logical_spec(("batch", "length", "embed"), (B, T, D), mesh)
    # activations: the batch takes data x fsdp, so `embed` stays whole ...
    assert logical_spec(("batch", "length", "embed"), (B, T, D), mesh) == P(("data", "fsdp"), None, None)
    # ... unless fsdp does not divide the batch
    assert logical_spec(("batch", "length", "embed"), (2, T, D), mesh) == P("data", None, "fsdp")
    # a mesh axis that does not divide a dimension leaves it replicated: K=4 kv heads on tensor=8
    assert partition_spec(axes["layers"]["attn"]["k"]["kernel"], (L, D, K, H), {"tensor": 8}) == \
        P(None, None, None, None)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_every_param_of_every_family_has_logical_axes(family):
    config = config_from_hf(TINY_CONFIGS[family]().to_dict())
    shapes = jax.eval_shape(lambda key: tvjax.init_params(config, key), jax.random.PRNGKey(0))
    axes = param_axes(config)
    assert jax.tree.structure(axes) == jax.tree.structure(shapes)
    for letters, leaf in zip(jax.tree.leaves(axes), jax.tree.leaves(shapes)):
        assert len(letters) == leaf.ndim


def test_loading_slices_the_memory_mapped_checkpoint(tiny8_dir):
    """Every Llama param is a view of the memory-mapped tensors: a device's shard reads only its slice."""
    from tvjax.convert.architectures import weight_table
    from tvjax.convert.hf import SafetensorsReader, read_config

    get = SafetensorsReader(tiny8_dir)
    glob, layer = weight_table(config_from_hf(read_config(tiny8_dir)))
    for name, transform in [*glob.values(), *((n.format(i=1), t) for n, t in layer.values())]:
        assert isinstance(get(name), np.memmap) and np.shares_memory(transform(get(name)), get(name)), name


def test_activation_constraints_only_with_a_mesh(tiny_models):
    _, (config, params, _), _ = tiny_models("llama")
    tokens = jnp.ones((2, 8), jnp.int32)
    jaxpr = lambda: str(jax.make_jaxpr(lambda p: tvjax.forward(p, tokens, config=config).logits)(params))
    assert "sharding_constraint" not in jaxpr()
    with jax.set_mesh(make_mesh()):
        assert "sharding_constraint" in jaxpr()


def test_bfloat16_model_with_float32_blend_and_loss(tiny8_dir):
    from tvjax.data import prompts_for
    from tvjax.rows import mean_loss, prepare_rows

    model = tvjax.load(str(tiny8_dir), dtype="bfloat16")
    config, params, tokenizer = model
    task = tvjax.Task.from_pairs("upper", [(w, w.upper()) for w in ["apple", "river", "stone", "cloud", "green"]])
    rows = prepare_rows(model, prompts_for(tokenizer, task, "train", 0)[0][:2])
    blend = tvjax.HeadBlend.zeros(config)
    loss, grad = jax.value_and_grad(lambda theta: mean_loss(params, blend.replace(theta=theta), rows,
                                                            config=config))(blend.theta)
    assert rows.cache.k.dtype == jnp.bfloat16 and loss.dtype == grad.dtype == jnp.float32


@pytest.fixture(scope="module")
def mesh_report(tiny8_dir, tmp_path_factory):
    """tests/sharding_worker.py's differences from the one-device run, on 8 simulated devices
    (two workers side by side, half the meshes each)."""
    outs = [tmp_path_factory.mktemp("meshes") / f"report{i}.json" for i in range(2)]
    _run_all([[sys.executable, str(HERE / "sharding_worker.py"), str(tiny8_dir), str(out), *MESHES[i::2]]
              for i, out in enumerate(outs)], [CPU_ENV] * 2)
    return {k: v for out in outs for k, v in json.loads(out.read_text()).items()}


@pytest.mark.parametrize("mesh", MESHES)
def test_a_mesh_gives_the_one_device_results(mesh_report, mesh):
    assert mesh_report["devices"] == 8
    got = mesh_report[mesh]
    assert got["params"] == 0  # sharded loading places the same values
    assert got["logits"] <= 1e-5 * got["logit_scale"]
    assert got["mu"] <= 1e-5
    assert got["theta"] <= 1e-4 and got["losses"] <= 1e-5
    assert got["tokens"] == 0  # greedy generation with the fitted vector


@pytest.mark.parametrize("mesh", MESHES)
def test_every_method_on_a_mesh_gives_the_one_device_results(mesh_report, mesh):
    got = mesh_report[mesh]
    assert got["own_logits"] <= 1e-5 * got["logit_scale"]  # an intervention class defined by the user
    assert got["reinforce"] <= 1e-4 and got["reinforce_losses"] <= 1e-5  # REINFORCE
    assert got["effects"] <= 1e-5 and got["fv_losses"] <= 1e-5  # function vector: indirect effects, layer sweep
    assert got["patch_losses"] <= 1e-5  # layer patching (scoring of stacked edits)
    assert got["many_theta"] <= 1e-4  # two tasks fitted together


def test_params_are_sharded_by_the_table(mesh_report):
    assert mesh_report["data=2,fsdp=2,tensor=2"]["shardings"] == {
        "q": str(P(None, "fsdp", "tensor", None)), "k": str(P(None, "fsdp", "tensor", None)),
        "down": str(P(None, "tensor", "fsdp")), "embed": str(P("tensor", "fsdp"))}
    # tensor=8: the 8 query heads split, the 4 kv heads stay replicated
    assert mesh_report["tensor=8"]["shardings"]["q"] == str(P(None, None, "tensor", None))
    assert mesh_report["tensor=8"]["shardings"]["k"] == str(P(None, None, None, None))


def test_two_processes_fit_like_one(tiny8_dir, tmp_path):
    """`tvjax fit` as 2 processes x 4 CPU devices (gloo collectives) on one 8-device mesh."""
    task = tmp_path / "caps.jsonl"
    task.write_text("\n".join(json.dumps({"input": w, "output": w.upper()}) for w in
                              ["apple", "river", "stone", "cloud", "green", "house", "light", "music", "ocean",
                               "paper", "quiet", "sharp", "table", "water", "young", "zebra"]))
    fit = [sys.executable, "-m", "tvjax.cli", "fit", "--model", str(tiny8_dir), "--task", str(task), "--shots", "2",
           "--n-prompts", "8", "--steps", "4", "--batch-size", "8", "--eval-every", "2"]
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    multi = {**CPU_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2"}
    on_mesh = fit + ["--mesh", "data=2,fsdp=2,tensor=2", "--out", str(tmp_path / "two")]
    outputs = _run_all([fit + ["--out", str(tmp_path / "one")], on_mesh, on_mesh],
                       [CPU_ENV] + [{**multi, "JAX_PROCESS_ID": str(i)} for i in range(2)])
    assert "saved" in outputs[1] and "saved" not in outputs[2]  # only process 0 writes
    one, two = (tvjax.load_task_vector(tmp_path / d / "caps.safetensors") for d in ("one", "two"))
    np.testing.assert_allclose(two.theta, one.theta, atol=1e-4)
    np.testing.assert_allclose(two.mu, one.mu, atol=1e-5)
    results = [json.loads((tmp_path / d / "caps.json").read_text()) for d in ("one", "two")]
    assert results[0]["scores"] == results[1]["scores"]


def test_memory_plan_compiles_the_sharded_step_on_abstract_shapes(tiny8_dir):
    out = _run([sys.executable, str(HERE.parent / "scripts" / "plan_memory.py"), str(tiny8_dir / "config.json"),
                "--mesh", "data=2,fsdp=2,tensor=2", "--rows", "16"], CPU_ENV)
    (plan,) = json.loads(out)
    assert plan["task_vector"] == 2 * 8 and plan["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert 0 < plan["arguments"] < plan["total"]


def test_memory_plan_of_means_extraction_per_attention_path(tiny8_dir):
    out = _run([sys.executable, str(HERE.parent / "scripts" / "plan_memory.py"), str(tiny8_dir / "config.json"),
                "--step", "means", "--mesh", "data=2,fsdp=2,tensor=2", "--batch-size", "4", "--prompt-length", "512",
                "--attention", "einsum,dot_product", "--attention-chunk", "none,64"], CPU_ENV)
    plans = {(p["attention"], p["attention_chunk"]): p for p in json.loads(out)}
    assert len(plans) == 4 and all(p["step"] == "means" and p["prompt_length"] == 512 for p in plans.values())
    for attention in ("einsum", "dot_product"):  # blocks of 64 queries hold an eighth of the scores
        assert plans[attention, 64]["temporaries"] < plans[attention, None]["temporaries"] / 2


def _run(command, env) -> str:
    return _run_all([command], [env])[0]


def _run_all(commands, envs, timeout: int = 600) -> list[str]:
    """Run commands side by side; their stdout, or a failure with their stderr."""
    procs = [subprocess.Popen(c, env={**os.environ, **e}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, e in zip(commands, envs)]
    try:
        results = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()  # a no-op for those that ended; frees the others when one fails
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in results]
