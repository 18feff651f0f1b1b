"""An intervention kind defined here, outside the package, registered in one record: saved, loaded,
applied in `forward`, evaluated by `tvjax eval --intervention` and applied from PyTorch.

Importing this module registers the kind (`tvjax --plugin test_intervention_kinds ...` does).
"""

import dataclasses
import functools
import json
import sys
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tvjax
from tvjax.cli import main
from tvjax.taskvector import KINDS, Kind, TaskVectorError, register_kind
from tvjax.torch_port import Intervention, PromptHook, apply_intervention, attention_outputs

from conftest import assert_logits_close, hf_logits


@functools.partial(jax.tree_util.register_dataclass, data_fields=["scale"], meta_fields=["positions"])
@dataclasses.dataclass(frozen=True)
class HeadScale:
    """Multiply each head's output by `scale[l, n]` `[L, N]` at the edited positions."""

    scale: jax.Array
    positions: str = "last"
    site: ClassVar[str] = "heads"

    def check(self, config) -> None:
        if jnp.shape(self.scale) != (config.n_layers, config.n_heads):
            raise ValueError(f"HeadScale needs scale ({config.n_layers}, {config.n_heads}), got {jnp.shape(self.scale)}")

    def apply(self, heads, layer, edit_mask):
        factor = jnp.where(edit_mask[:, :, None, None], self.scale.astype(jnp.float32)[None, None, :, None], 1.0)
        return (heads.astype(jnp.float32) * factor).astype(heads.dtype)

    def axes(self) -> "HeadScale":
        return HeadScale(None, self.positions)


class HeadScaleHook(PromptHook):
    """`HeadScale` on a transformers model: the attention output projection recomputed at the edited token."""

    def __init__(self, model, scale, positions: str = "last"):
        super().__init__(model, positions=positions)
        self.scale = torch.as_tensor(scale, dtype=torch.float32)  # [L, N]
        self.layer = {name: layer for layer, name in enumerate(attention_outputs(model))}

    def edit(self, module, inputs, output, name):
        x = inputs[0]  # [B, T, N * H]
        rows, at = self.edited(x)
        heads = x[rows, at].reshape(x.shape[0], self.scale.shape[1], -1).float()  # [B, N, H]
        heads = heads * self.scale[self.layer[name]][:, None]
        output = output.clone()
        output[rows, at] = module.forward(heads.to(x.dtype).reshape(x.shape[0], 1, -1))[:, 0]
        return output


def head_scale_hook(model, loaded) -> Intervention:
    return Intervention(attention_outputs(model), HeadScaleHook(model, loaded.scale, loaded.positions))


KIND = register_kind(Kind("head_scale", lambda model: {"scale": (model["n_layers"], model["n_heads"])}, HeadScale,
                          head_scale_hook))


def _scale(config, seed: int = 0) -> np.ndarray:
    return (1 + np.random.default_rng(seed).normal(size=(config.n_layers, config.n_heads))).astype(np.float32)


@pytest.mark.parametrize("positions", ["last", "answer"])
def test_a_kind_of_your_own_is_saved_loaded_and_applied_alike_in_jax_and_pytorch(tiny_models, tmp_path, positions):
    hf, (config, params, _), _ = tiny_models("llama")
    ours = HeadScale(jnp.asarray(_scale(config)), positions)
    path = tvjax.save_intervention(tmp_path / "scale.safetensors", ours, config, note="mine")
    loaded = tvjax.load_intervention(path)
    assert (loaded.kind, loaded.positions, loaded.info) == ("head_scale", positions, {"note": "mine"})
    np.testing.assert_array_equal(loaded.scale, ours.scale)
    assert loaded.intervention() == HeadScale(loaded.scale, positions)
    tokens = np.random.default_rng(1).integers(3, config.vocab_size, size=(2, 6))
    logits = tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=loaded.intervention()).logits
    with apply_intervention(hf, path):
        assert_logits_close(logits, hf_logits(hf, tokens))
        new = tvjax.generate(params, tokens[:1], config=config, max_new_tokens=5, intervention=ours, eos_token_id=-1)
        out = hf.generate(torch.as_tensor(tokens[:1]), max_new_tokens=5, do_sample=False)
        np.testing.assert_array_equal(new[0], out[0, tokens.shape[1]:].numpy())
    assert np.abs(np.asarray(logits) - hf_logits(hf, tokens)).max() > 1e-3, "the edit should change the logits"


def test_a_kind_of_your_own_scales_alike_in_jax_and_pytorch(tiny_models, tmp_path):
    """Nothing in the record says how to scale it: `tvjax.scaled` and `apply_intervention(..., scale=)`
    move each edited value `scale` times as far, on both sides."""
    hf, (config, params, _), _ = tiny_models("llama")
    ours = HeadScale(jnp.asarray(_scale(config)))
    path = tvjax.save_intervention(tmp_path / "scale.safetensors", ours, config)
    tokens = np.random.default_rng(2).integers(3, config.vocab_size, size=(2, 6))
    logits = tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=tvjax.scaled(ours, -0.5)).logits
    with apply_intervention(hf, path, scale=-0.5):
        assert_logits_close(logits, hf_logits(hf, tokens))
    expected = HeadScale(1 - 0.5 * (ours.scale - 1))  # each head's output o moved to o - 0.5 * (scale * o - o)
    np.testing.assert_allclose(logits, tvjax.forward(params, jnp.asarray(tokens), config=config, intervention=expected)
                               .logits, rtol=1e-5, atol=1e-5)


def test_tvjax_eval_takes_a_kind_of_your_own_from_a_plugin(tmp_path, capsys, tiny_lm, tiny_lm_dir, tiny_task):
    path = tvjax.save_intervention(tmp_path / "scale.safetensors", HeadScale(jnp.asarray(_scale(tiny_lm.config))),
                                   tiny_lm.config, method="head_scale")
    task = tmp_path / "upper.json"
    task.write_text(json.dumps([{"input": x, "output": y} for x, y in tiny_task.train + tiny_task.valid + tiny_task.test]))
    argv = ["eval", "--model", str(tiny_lm_dir), "--task", str(task), "--tv", str(path), "--shots", "2",
            "--out", str(tmp_path / "out")]
    registered, module = KINDS.pop("head_scale"), sys.modules.pop(__name__)
    try:  # a kind nobody registered: the file names it, the error says how to register it
        assert main(argv) == 2
        assert "unknown kind 'head_scale'" in capsys.readouterr().err
        assert main(["--plugin", __name__, *argv]) == 0  # imports this module anew: it registers the kind
    finally:
        KINDS.setdefault("head_scale", registered)
        sys.modules[__name__] = module
    assert "head_scale" in capsys.readouterr().out
    scores = json.loads((tmp_path / "out" / "upper.eval.json").read_text())["scores"]["head_scale"]
    expected = tvjax.evaluate(tiny_lm, tvjax.load_task(str(task)), intervention=tvjax.load_intervention(path)
                              .intervention())
    assert scores == expected.as_dict()


def test_a_bad_file_of_your_kind_is_refused(tmp_path, tiny_lm):
    c = tiny_lm.config
    with pytest.raises(TaskVectorError, match=r"head_scale arrays scale \(2, 3\)"):
        tvjax.save_intervention(tmp_path / "bad.safetensors", HeadScale(np.ones((c.n_layers, 3))), c)
    with pytest.raises(TaskVectorError, match="positions='split'"):
        tvjax.save_intervention(tmp_path / "bad.safetensors", HeadScale(_scale(c), "split"), c)
