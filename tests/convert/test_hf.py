"""Loading Hugging Face checkpoint directories and hub ids, and their failure modes."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import tvjax
from tvjax.convert import hf as hf_module
from tvjax.convert.default import default_model_dir
from conftest import assert_logits_close, build_tiny, hf_logits

TOKENS = np.random.default_rng(3).integers(3, 97, size=(1, 12))


def test_sharded_checkpoint_with_index_file(tmp_path):
    model = build_tiny("llama", tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    config, params, _ = tvjax.load(str(tmp_path))
    assert_logits_close(tvjax.forward(params, jnp.asarray(TOKENS), config=config).logits, hf_logits(model, TOKENS))


def test_bfloat16_checkpoint_reads_without_torch_dtypes(tmp_path):
    model = build_tiny("qwen2", tmp_path)
    model.bfloat16().save_pretrained(tmp_path)
    config, params, _ = tvjax.load(str(tmp_path))
    assert_logits_close(tvjax.forward(params, jnp.asarray(TOKENS), config=config).logits,
                        hf_logits(model.float(), TOKENS), rel=1e-3)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(tvjax.UnsupportedArchitecture, match="bert.*supported model types: gemma2, gemma3_text, gpt2, gpt_neox, llama, mistral, qwen2, qwen3"):
        tvjax.load(str(tmp_path))


def test_missing_config_and_missing_weights(tmp_path):
    with pytest.raises(tvjax.CheckpointError, match="no config.json"):
        tvjax.load(str(tmp_path))
    build_tiny("llama", tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(tvjax.CheckpointError, match="no \\*.safetensors"):
        tvjax.load(str(tmp_path))


def test_missing_shard_is_named(tmp_path):
    build_tiny("llama", tmp_path, max_shard_size="50KB")
    victim = sorted(tmp_path.glob("*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(tvjax.CheckpointError, match=f"{victim.name}.*missing"):
        tvjax.load(str(tmp_path))


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_weights_are_a_clear_error(tmp_path, keep):
    build_tiny("llama", tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(tvjax.CheckpointError, match="truncated"):
        tvjax.load(str(tmp_path))


def test_weights_that_do_not_match_the_config(tmp_path):
    build_tiny("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(tvjax.CheckpointError, match="mlp.gate_proj.weight.*does not fit the config"):
        tvjax.load(str(tmp_path))


def test_hub_id_offline_says_how_to_use_a_local_directory(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Cannot reach the Hub and the files are not in the local cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(tvjax.CheckpointError, match=r"offline.*--local-dir DIR.*tvjax.load\('DIR'\)"):
        tvjax.load("meta-llama/Llama-3.2-1B")


def test_a_name_that_is_nothing(tmp_path):
    with pytest.raises(tvjax.CheckpointError, match="not a checkpoint directory, a .gguf file or a hub id"):
        tvjax.load(str(tmp_path / "nowhere"))


def test_tokenizer_is_loaded_when_present(tmp_path):
    build_tiny("gpt2", tmp_path)
    assert tvjax.load(str(tmp_path)).tokenizer is None
    shutil.copy(default_model_dir() / "tokenizer.json", tmp_path)
    shutil.copy(default_model_dir() / "tokenizer_config.json", tmp_path)
    assert tvjax.load(str(tmp_path)).tokenizer("Q: hot")["input_ids"]


def test_unsupported_rope_scaling_and_missing_fields_fail_at_load(tmp_path):
    build_tiny("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(tvjax.UnsupportedArchitecture, match="'yarn' is not supported.*llama3"):
        tvjax.load(str(tmp_path))
    del config["rope_parameters"], config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(tvjax.UnsupportedArchitecture, match="lacks the field 'hidden_size'"):
        tvjax.load(str(tmp_path))


def test_several_eos_ids_are_kept(tmp_path):
    build_tiny("llama", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["eos_token_id"] = [2, 7]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert tvjax.load(str(tmp_path)).config.eos_ids == (2, 7)
