"""Shared fixtures: tiny random Hugging Face models of every supported family.

Each is built with transformers + torch, saved as safetensors and loaded back through
tvjax's torch-free path, so tests compare tvjax against the PyTorch model as oracle.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TVJAX_COMPILE_CACHE", "off")  # CLI runs in tests leave the user's compile cache alone
# Subprocesses (all on tiny models) compile with most XLA optimisations off; in this process the
# `_compile_for_the_model_size` fixture decides per test.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import tvjax  # noqa: E402
from tvjax.torch_port import Intervention, TaskVectorHook, attention_outputs  # noqa: E402

V = 97
_LLAMA = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
TINY_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_LLAMA),
    "llama3_tied": lambda: transformers.LlamaConfig(
        **_LLAMA, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}),
    "llama_bias": lambda: transformers.LlamaConfig(**_LLAMA, attention_bias=True, mlp_bias=True),
    "mistral": lambda: transformers.MistralConfig(**_LLAMA, sliding_window=7),
    "qwen2": lambda: transformers.Qwen2Config(**_LLAMA),
    "qwen3": lambda: transformers.Qwen3Config(**_LLAMA, head_dim=24),  # head_dim != hidden / heads
    # Windows shorter than the tests' prompts; soft caps small enough to bite on random weights.
    "gemma2": lambda: transformers.Gemma2Config(**_LLAMA, head_dim=16, query_pre_attn_scalar=24, sliding_window=5,
                                                attn_logit_softcapping=1.5, final_logit_softcapping=4.0),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **{**_LLAMA, "num_hidden_layers": 4}, head_dim=16, query_pre_attn_scalar=20, sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=3, n_head=4, n_positions=128,
                                            bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                   num_hidden_layers=3, num_attention_heads=4, rotary_pct=0.25,
                                                   max_position_embeddings=128, bos_token_id=1, eos_token_id=2),
    "gpt_neox_sequential": lambda: transformers.GPTNeoXConfig(
        vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        use_parallel_residual=False, max_position_embeddings=128, bos_token_id=1, eos_token_id=2),
}
FAMILIES = sorted(TINY_CONFIGS)


@pytest.fixture(autouse=True)
def _compile_for_the_model_size(request):
    """Tiny models compile with most XLA optimisations off: their tests spend their time compiling
    (about 1.5x less test time). Tests on a real model (marked `default_model` or `slow`) keep them:
    their compute outweighs compiling."""
    import jax

    real = any(request.node.get_closest_marker(m) for m in ("default_model", "slow"))
    jax.config.update("jax_disable_most_optimizations", not real)


def build_tiny(name: str, directory, seed: int = 0, **save_kwargs):
    """A random float32 HF model (every weight perturbed, biases and norms included), saved to `directory`."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[name]()
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens in parity tests
    model.save_pretrained(directory, **save_kwargs)
    return model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """name -> (hf_model, tvjax Model), built once per session."""
    cache = {}

    def get(name: str):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            hf = build_tiny(name, directory)
            cache[name] = (hf, tvjax.load(str(directory)), directory)
        return cache[name]

    return get


def torch_blend(hf_model, weight, mu, at=None) -> Intervention:
    """The PyTorch reference for `HeadBlend`: `tvjax.torch_port`'s hook on every attention output projection.

    weight `[L, N]` (after the sigmoid), mu `[L, N, H]`, at `[B]` (default: the last token); in
    `generate` only the prompt is edited.
    """
    return Intervention(attention_outputs(hf_model), TaskVectorHook(hf_model, weight, mu, at))


def hf_logits(hf_model, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    kwargs = {}
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask), dtype=torch.long)
        kwargs = {"attention_mask": m, "position_ids": (m.cumsum(-1) - 1).clamp(min=0)}
    with torch.no_grad():
        return hf_model(ids, **kwargs).logits.float().numpy()


def assert_logits_close(actual, expected, rel: float = 1e-4):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = np.abs(expected).max()
    err = np.abs(actual - expected).max()
    assert err <= rel * scale, f"max abs diff {err:.3g} > {rel} x logit scale {scale:.3g}"


def save_tiny_lm(directory, n_heads: int = 4, n_kv_heads: int = 2):
    """A tiny random Llama (D=64, F=128, L=2) with the default model's tokenizer (vocab 49152), saved to `directory`."""
    import shutil

    from tvjax.convert.default import default_model_dir

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # varied greedy answers (see echo_task)
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir() / name, directory)
    return directory


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random Llama checkpoint with the default model's tokenizer (vocab 49152)."""
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    """The tiny random Llama with a real tokenizer, loaded: fast pipeline tests."""
    return tvjax.load(str(tiny_lm_dir))


@pytest.fixture(scope="session")
def tiny_task():
    """A small synthetic task: lowercase words -> uppercase."""
    words = ["apple", "river", "stone", "cloud", "green", "house", "light", "music", "ocean", "paper", "quiet",
             "sharp", "table", "water", "young", "zebra", "bread", "chair", "dream", "earth", "flame", "grape",
             "heart", "ivory", "jelly", "knife", "lemon", "maple", "night", "olive"]
    return tvjax.Task.from_pairs("upper", [(w, w.upper()) for w in words], seed=0)


@pytest.fixture(scope="session")
def echo_task(tiny_lm):
    """A task whose outputs are the tiny model's own greedy first answer tokens.

    Plain zero-shot first-token accuracy is 100% on it by construction, so a scoring bug
    or a misplaced edit shows up as a change, and a blend moves accuracy away from 100%.
    """
    from tvjax.batching import encode
    from tvjax.data import Template, build_texts, tokenize

    config, params, tokenizer = tiny_lm
    words = [x for x, _ in tvjax.load_task("capitalize").train][:60]
    tokens, mask = encode(tokenizer, [Template().query(w)[0] for w in words])
    first = dict(zip(words, tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=1)[:, 0]))
    pairs = [(w, tokenizer.decode([int(t)]).strip()) for w, t in first.items()]
    encoded, _ = tokenize(tokenizer, build_texts(Template(), [p for p in pairs if p[1]], 0, [], 0))
    kept = [p.pair for p in encoded if p.answer[0] == first[p.pair[0]]]
    assert len(kept) >= 20, f"only {len(kept)} echo pairs"
    return tvjax.Task.from_pairs("echo", kept, seed=0)


def positional_blend(theta, mu, theta_answer, start: int, length: int, base=None) -> tvjax.Edit:
    """A reference for the answer positions: an `Edit` blending position `start` with `theta`
    and every later one with `theta_answer`, from explicit per-position weights `[L, T, N]`
    (with `base`, the shift form: heads move by `2 * sigmoid * (mu - base)`)."""
    scale = 1.0 if base is None else 2.0
    weight = scale * jnp.where((jnp.arange(length) == start)[None, :, None], jax.nn.sigmoid(theta)[:, None],
                               jax.nn.sigmoid(theta_answer)[:, None])
    data = {"weight": weight, "mu": mu} | ({} if base is None else {"base": base})
    return tvjax.Edit("heads", _blend_at_positions, data)


def _blend_at_positions(heads, layer, data):
    origin = data["base"][None, None] if "base" in data else heads
    return heads + data["weight"][None, :, :, None] * (data["mu"][None, None] - origin)
