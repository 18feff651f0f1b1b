"""Benchmarks: tvjax against a PyTorch (transformers) baseline, measured side by side in one run.

    python scripts/benchmark.py forward [--batch 8] [--length 128] [--repeats 10]

Timings are medians after warm-up; the ratio (PyTorch time / tvjax time) is what to
compare across machines, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_forward(args) -> None:
    """Logits of the default model for a batch of prompts (extraction-style forward)."""
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM

    import tvjax
    from tvjax.convert.default import default_model_dir

    directory = default_model_dir()  # converts on first use, so the load below is the cached one
    start = time.perf_counter()
    config, params, _ = tvjax.load()
    load_s = time.perf_counter() - start

    tokens = np.random.default_rng(0).integers(100, config.vocab_size, size=(args.batch, args.length))
    jax_tokens = jnp.asarray(tokens)
    run_jax = lambda: tvjax.forward(params, jax_tokens, config=config).logits.block_until_ready()
    start = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - start
    run_jax()

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    torch_tokens = torch.as_tensor(tokens)

    def run_torch():
        with torch.inference_mode():
            model(torch_tokens).logits

    run_torch()
    ours = median_seconds(run_jax, args.repeats)
    theirs = median_seconds(run_torch, args.repeats)
    print(f"forward, default model, batch {args.batch} x {args.length} tokens, float32, "
          f"{jax.devices()[0].platform}, torch threads {torch.get_num_threads()}")
    print(f"  tvjax (jit)          median {ours * 1e3:9.1f} ms")
    print(f"  transformers (torch) median {theirs * 1e3:9.1f} ms")
    print(f"  ratio torch / tvjax  {theirs / ours:9.2f}x")
    print(f"  tvjax first call (trace + compile + run) {compile_s:.1f} s; cached load of the default model {load_s:.1f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="workload", required=True)
    forward = sub.add_parser("forward", help="logits for a batch of long prompts")
    forward.add_argument("--batch", type=int, default=8)
    forward.add_argument("--length", type=int, default=128)
    forward.add_argument("--repeats", type=int, default=10)
    forward.set_defaults(run=bench_forward)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
