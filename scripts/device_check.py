"""Accelerator check, ready to run on a lent GPU or TPU in under 10 minutes; writes a JSON report.

    python scripts/device_check.py --out device_report.json        # on the accelerator
    python scripts/device_check.py --tiny --out /tmp/report.json   # the same code on CPU, a tiny config (tests)

1. Parity on the accelerator: the logit, blend and greedy-generation tests against transformers
   (float32, `JAX_DEFAULT_MATMUL_PRECISION=highest` so TF32 does not stand in for float32), run
   with pytest where PyTorch is installed.
2. Throughput in bfloat16, for the default model (its real weights when installed, else random
   weights of its config) and for a 1B-class Llama config with random weights
   (`scripts/configs/llama-3.2-1b.json`):
   - means forward: `--batch` prompts of `--length` tokens, heads captured at the last token,
     once per attention implementation (`einsum`, `dot_product`: cuDNN on GPUs);
   - fit step: one soft-task-vector Adam step on `--fit-batch` cached rows (prefix `--length`);
     against the same step as PyTorch hooks on the same device where PyTorch sees it;
   - generate: `--new` greedy tokens for `--batch` prompts.
   Model FLOPs utilisation (MFU) = model FLOPs / seconds / the device's peak bfloat16 FLOP/s
   (a table of known devices, or `--peak-tflops`). Model FLOPs count the matmuls: 2 per
   weight per token, 4 L N H T S for the attention scores and values (every query against
   every key slot, as computed), and for the fit step twice the forward (the backward pass
   computes activation gradients, no weight gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# Dense bfloat16 peak FLOP/s, matched against `device_kind` (substring, first match).
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10G": 125,
                    "TPU v6": 918, "TPU v5p": 459, "TPU v5": 197, "TPU v4": 275}
PARITY_TESTS = ["tests/test_model.py::test_logits_match_transformers",
                "tests/test_interventions.py::test_blend_matches_pytorch_hook_reference",
                "tests/test_generation.py::test_greedy_generation_matches_transformers"]
TINY = dict(family="llama", vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16,
            mlp_dim=96, eos_token_id=2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="device_report.json")
    parser.add_argument("--tiny", action="store_true", help="a tiny random config, no parity tests (CI on CPU)")
    parser.add_argument("--parity", choices=("run", "skip"), default="run")
    parser.add_argument("--batch", type=int, default=16, help="prompts per means forward and generate call")
    parser.add_argument("--length", type=int, default=512, help="tokens per prompt")
    parser.add_argument("--fit-batch", type=int, default=16, help="rows per fit step")
    parser.add_argument("--new", type=int, default=32, help="generated tokens")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s")
    args = parser.parse_args(argv)

    import jax

    device = jax.devices()[0]
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device.device_kind), None)
    report = {"device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count(),
                         "peak_bf16_tflops": peak}, "jax": jax.__version__, "settings": vars(args)}
    start = time.perf_counter()
    if not args.tiny and args.parity == "run":
        report["parity"] = parity()
    report["models"] = {name: bench_model(name, config, params, args, peak) for name, config, params in models(args)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


def parity() -> dict:
    """The parity tests against transformers, run by pytest on the default (accelerator) backend."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "PyTorch is not installed"}
    env = {**os.environ, "JAX_DEFAULT_MATMUL_PRECISION": "highest", "JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARITY_TESTS],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-500:],
            "seconds": round(time.perf_counter() - start, 1)}


def models(args):
    """`(name, config, params)` in bfloat16: a tiny random config, or the default model and a 1B Llama."""
    import jax

    import tvjax
    from tvjax.convert.architectures import config_from_hf

    def random(config):
        return tvjax.init_params(config, jax.random.PRNGKey(0))

    if args.tiny:
        config = tvjax.ModelConfig(**TINY, dtype="bfloat16")
        yield "tiny", config, random(config)
        return
    try:
        config, params, _ = tvjax.load(dtype="bfloat16")
        yield "smollm2-135m", config, params
    except Exception as error:  # the package or its conversion is unavailable: same shapes, random weights
        print(f"default model unavailable ({error}); random weights of its config", file=sys.stderr)
        config = config_from_hf(json.loads((HERE / "configs" / "smollm2-135m.json").read_text()))
        config = config.replace(dtype="bfloat16")
        yield "smollm2-135m (random weights)", config, random(config)
    config = config_from_hf(json.loads((HERE / "configs" / "llama-3.2-1b.json").read_text())).replace(dtype="bfloat16")
    yield "llama-3.2-1b (random weights)", config, random(config)


def bench_model(name: str, config, params, args, peak: float | None) -> dict:
    import jax
    import jax.numpy as jnp

    import tvjax
    from tvjax.extract import _last_token_sites

    rng = np.random.default_rng(0)
    B, T = args.batch, args.length
    tokens = jnp.asarray(rng.integers(3, config.vocab_size, size=(B, T)), jnp.int32)
    mask = jnp.ones((B, T), bool)
    result = {"params": int(sum(x.size for x in jax.tree.leaves(params))), "config": {
        "layers": config.n_layers, "d_model": config.d_model, "heads": config.n_heads, "kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim, "mlp": config.mlp_dim, "vocab": config.vocab_size}}
    for attention in ("einsum", "dot_product"):
        c = config.replace(attention=attention)
        run = lambda: _last_token_sites(params, tokens, mask, config=c, sites=("heads",))
        seconds = _median(run, args.repeats)
        result[f"means_forward_{attention}"] = _rate(seconds, forward_flops(config, B, T, T, logits=B), peak,
                                                     tokens=B * T)
    result["fit_step"] = _fit_step(config, params, args, peak)
    new = args.new
    run = lambda: tvjax.generate(params, np.asarray(tokens), config=config, max_new_tokens=new, eos_token_id=-1)
    flops = forward_flops(config, B, T, T + new, logits=B) + sum(
        forward_flops(config, B, 1, T + new, logits=B) for _ in range(new - 1))
    result["generate"] = _rate(_median(run, max(2, args.repeats // 2)), flops, peak, tokens=B * new)
    return result


def _fit_step(config, params, args, peak):
    """One soft-TV Adam step on cached rows; the PyTorch hook step on the same device if it is there."""
    import jax.numpy as jnp

    import tvjax
    from tvjax.data.prompts import Prompt
    from tvjax.fitting import FitConfig, fit_step
    from tvjax.interventions import HeadBlend
    from tvjax.rows import prepare_rows
    from tvjax.sharding import placed
    from tvjax.train import batch_indices, optimizer

    rng = np.random.default_rng(1)
    n_rows, B, T = 4 * args.fit_batch, args.fit_batch, args.length
    prompts = [Prompt(rng.integers(3, config.vocab_size, size=T).tolist(), [int(rng.integers(3, config.vocab_size))],
                      ("", "")) for _ in range(n_rows)]
    rows = prepare_rows(tvjax.Model(config, params, None), prompts)
    mu = jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads, config.head_dim)), jnp.float32)
    fc = FitConfig(batch_size=B)
    theta = jnp.zeros((1, config.n_layers, config.n_heads))  # one task
    state = [theta, optimizer(fc.optimizer, fc.learning_rate).init(theta), 0]
    blend, task = HeadBlend(None, mu[None]), jnp.zeros(B, jnp.int32)

    def step():
        index = jnp.asarray(batch_indices(n_rows, B, state[2], 0))
        state[0], state[1], loss = placed(fit_step(fc))(params, state[0], state[1], blend, rows, index, task, 0.0,
                                            config=config)
        state[2] += 1
        loss.block_until_ready()

    seconds = _median(step, args.repeats)
    result = _rate(seconds, 2 * forward_flops(config, B, 1, T + 1, logits=B), peak, tokens=B)
    result["pytorch"] = _torch_fit_step(config, prompts[:B], np.asarray(mu), fc, args.repeats)
    if "seconds" in result["pytorch"]:
        result["ratio_pytorch_over_tvjax"] = round(result["pytorch"]["seconds"] / seconds, 2)
    return result


def _torch_fit_step(config, prompts, mu, fc, repeats: int) -> dict:
    """The same step the usual PyTorch way (`scripts/torch_reference.py`), random weights in bfloat16."""
    try:
        import torch
        import transformers
    except ImportError:
        return {"skipped": "PyTorch is not installed"}
    import jax

    if jax.devices()[0].platform == "gpu" and not torch.cuda.is_available():
        return {"skipped": "PyTorch does not see the GPU"}
    if jax.devices()[0].platform == "tpu":
        return {"skipped": "no PyTorch on TPU here"}
    device = "cuda" if jax.devices()[0].platform == "gpu" else "cpu"
    sys.path.insert(0, str(HERE))
    from torch_reference import TorchPipeline

    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.mlp_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, head_dim=config.head_dim,
        num_key_value_heads=config.n_kv_heads, tie_word_embeddings=config.tie_embeddings)
    hf = transformers.LlamaForCausalLM(hf_config).to(device=device, dtype=torch.bfloat16)
    pipeline = TorchPipeline(hf, 0)
    step, _, _ = pipeline.step_fn(torch.tensor(mu), fc)
    batch = {k: v.to(device) for k, v in pipeline.batch(prompts).items()}
    targets = torch.tensor([p.answer[0] for p in prompts], device=device)

    def run():
        step(batch, targets)
        if device == "cuda":
            torch.cuda.synchronize()

    return {"seconds": _median(run, repeats), "device": device}


def forward_flops(config, B: int, T: int, S: int, logits: int) -> float:
    """Matmul FLOPs of a forward of `B` x `T` new tokens over `S` key slots, with `logits` rows of logits."""
    c = config
    attention = c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.d_model
    mlp = (3 if c.gated_mlp else 2) * c.d_model * c.mlp_dim
    weights = 2 * B * T * c.n_layers * (attention + mlp) + 2 * logits * c.d_model * c.vocab_size
    return weights + 4 * B * c.n_layers * c.n_heads * c.head_dim * T * S


def _rate(seconds: float, flops: float, peak: float | None, tokens: int) -> dict:
    return {"seconds": round(seconds, 5), "tokens_per_second": round(tokens / seconds, 1),
            "tflops_per_second": round(flops / seconds / 1e12, 3),
            "mfu": None if peak is None else round(flops / seconds / (peak * 1e12), 4)}


def _median(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call (compilation)."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


if __name__ == "__main__":
    main()
