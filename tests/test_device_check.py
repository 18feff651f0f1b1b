"""`scripts/device_check.py` runs end to end on CPU with tiny configs, so it is ready for a lent accelerator."""

import runpy
from pathlib import Path

import jax
import numpy as np

import tvjax

device_check = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "device_check.py"))


def test_device_check_reports_throughput_mfu_and_the_pytorch_ratio(tmp_path):
    out = tmp_path / "report.json"
    report = device_check["main"](["--tiny", "--out", str(out), "--batch", "2", "--length", "48", "--fit-batch", "2",
                                   "--new", "4", "--repeats", "1", "--peak-tflops", "1"])
    assert out.exists() and report["device"]["platform"] == "cpu" and report["device"]["peak_bf16_tflops"] == 1
    assert set(report["models"]) == {"tiny"}
    for model in report["models"].values():
        for workload in ("means_forward_einsum", "means_forward_dot_product", "fit_step", "generate"):
            assert model[workload]["tokens_per_second"] > 0 and 0 < model[workload]["mfu"] < 1, workload
        assert model["fit_step"]["ratio_pytorch_over_tvjax"] > 0  # PyTorch on the same (CPU) device


def test_model_flops_count_two_per_matmul_weight_per_token():
    TINY, forward_flops = device_check["TINY"], device_check["forward_flops"]
    config = tvjax.ModelConfig(**TINY)
    params = tvjax.init_params(config, jax.random.PRNGKey(0))
    layers = params["layers"]
    matmul_weights = sum(np.size(layers[block][name]["kernel"]) for block, names in
                         (("attn", "qkvo"), ("mlp", ("up", "gate", "down"))) for name in names)
    assert forward_flops(config, 1, 1, 0, logits=0) == 2 * matmul_weights
    assert forward_flops(config, 1, 1, 0, logits=1) - forward_flops(config, 1, 1, 0, logits=0) == \
        2 * np.size(params["embed"]["embedding"])
    attention = forward_flops(config, 2, 3, 5, logits=0) - forward_flops(config, 2, 3, 0, logits=0)
    assert attention == 2 * 2 * 2 * 3 * 5 * config.n_layers * config.n_heads * config.head_dim  # q.k and p.v
