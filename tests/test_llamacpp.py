"""Function vectors as llama.cpp control vectors: written with `gguf`, read back with `gguf`."""

import gguf
import numpy as np
import pytest

import tvjax
from tvjax.llamacpp import save_control_vector
from tvjax.taskvector import TaskVectorError


def test_function_vector_becomes_a_control_vector(tmp_path, tiny_lm):
    config = tiny_lm.config
    vector = np.random.default_rng(0).normal(size=config.d_model).astype(np.float32)
    edit = tvjax.ResidualEdit.adding(config, 1, vector)
    path = tvjax.save_intervention(tmp_path / "fv.safetensors", edit, config, method="function_vector")
    reader = gguf.GGUFReader(str(save_control_vector(tmp_path / "fv.gguf", path, model_hint="llama")))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama" and fields["controlvector.layer_count"] == 1
    assert [t.name for t in reader.tensors] == ["direction.1"]
    np.testing.assert_array_equal(np.asarray(reader.tensors[0].data), vector)
    scaled = gguf.GGUFReader(str(save_control_vector(tmp_path / "fv2.gguf", path, scale=-2.0)))
    np.testing.assert_array_equal(np.asarray(scaled.tensors[0].data), -2 * vector)  # as tvjax.scaled(edit, -2)


def test_what_a_control_vector_cannot_carry_is_refused(tmp_path, tiny_lm):
    config = tiny_lm.config
    state = np.ones(config.d_model, np.float32)
    cases = [  # (the intervention, the message)
        (tvjax.ResidualEdit.patching(config, 1, state), r"patches layer\(s\) \[1\]"),
        (tvjax.ResidualEdit.adding(config, 0, state), "layer 0"),
        (tvjax.HeadBlend(np.zeros((config.n_layers, config.n_heads)),
                         np.zeros((config.n_layers, config.n_heads, config.head_dim))), "acts on attention heads"),
    ]
    for n, (intervention, message) in enumerate(cases):
        path = tvjax.save_intervention(tmp_path / f"{n}.safetensors", intervention, config)
        with pytest.raises(TaskVectorError, match=message):
            save_control_vector(tmp_path / f"{n}.gguf", path)
        assert not (tmp_path / f"{n}.gguf").exists()
