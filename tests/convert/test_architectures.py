"""The per-model-type records: the tables other modules read are read off them."""

import pytest

import tvjax
from tvjax.convert.architectures import (ARCHITECTURES, GGUF_ARCHITECTURES, HF_ATTENTION_OUTPUTS, MODEL_TYPES,
                                         SUPPORTED, config_from_hf)


def test_tables_are_read_off_the_records():
    assert MODEL_TYPES == {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma2": "llama",
                           "gemma3_text": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}
    assert SUPPORTED == "gemma2, gemma3_text, gpt2, gpt_neox, llama, mistral, qwen2, qwen3"
    assert HF_ATTENTION_OUTPUTS == {"llama": ("layers", "self_attn.o_proj"), "gpt2": ("h", "attn.c_proj"),
                                    "gpt_neox": ("layers", "attention.dense")}
    assert {arch: a.model_type for arch, a in GGUF_ARCHITECTURES.items()} == {
        "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3_text"}


def test_model_types_of_a_family_share_its_weights():
    """One weight table and one hook point per `ModelConfig.family`; each GGUF architecture is one record's."""
    families = {}
    for a in ARCHITECTURES.values():
        assert families.setdefault(a.weights.family, a.weights) is a.weights, a.model_type
    assert len(GGUF_ARCHITECTURES) == sum(a.gguf is not None for a in ARCHITECTURES.values())


def test_family_and_position_embedding_come_from_the_record():
    gpt2 = config_from_hf({"model_type": "gpt2", "vocab_size": 97, "n_embd": 64, "n_layer": 2, "n_head": 4,
                           "n_positions": 32})
    assert (gpt2.family, gpt2.position_embedding, gpt2.max_positions) == ("gpt2", "learned", 32)
    qwen2 = config_from_hf({"model_type": "qwen2", "vocab_size": 97, "hidden_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "intermediate_size": 96})
    assert (qwen2.family, qwen2.position_embedding, qwen2.qkv_bias) == ("llama", "rope", True)
    with pytest.raises(ValueError, match="ModelConfig.position_embedding='alibi'"):
        tvjax.ModelConfig(family="llama", vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=2,
                          head_dim=4, mlp_dim=8, position_embedding="alibi")
