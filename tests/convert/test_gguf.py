"""GGUF conversion: a tiny Llama written as GGUF (q/k permuted as llama.cpp does) loads back exactly."""

import json

import gguf
import jax
import numpy as np
import pytest

import tvjax
from tvjax.convert.gguf import hf_name, read_gguf, unpermute_qk
from tvjax.convert.architectures import config_from_hf
from tvjax.convert.hf import SafetensorsReader, convert
from conftest import build_tiny


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
    with pytest.raises(tvjax.CheckpointError, match="Q8_1.*cannot dequantise"):
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
