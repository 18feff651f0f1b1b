"""Speed of the indirect effects of all L x N heads: batched against one head per forward, in one run.

    python scripts/indirect_effects_speed.py [--model NAME] [--task antonym] [--prompts 8] [--heads 27]

Three ways to the same `[L, N]` effects on `--prompts` shuffled-label 10-shot prompts:

  batched      `tvjax.function_vectors.indirect_effects`: prompt prefixes cached once, then
               `--batch-size` heads per vmapped forward of the last token (all heads timed)
  one, cached  one head per forward of the last token on the same cached prefixes
  one, full    `indirect_effects_reference`: one full forward of the prompts per head

The one-head-at-a-time ways run on the first `--heads` heads (each head's forward has the
same shapes, so its time is the same for every head) and are scaled to all heads; every
time is after a warm-up call (compilation excluded). Effects of the timed heads are
checked equal across the three.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def main(argv=None) -> None:
    import tvjax
    from tvjax.function_vectors import indirect_effects, indirect_effects_reference, one_hot_heads, \
        shuffled_label_prompts
    from tvjax.interventions import HeadBlend
    from tvjax.rows import prepare_rows, stacked_row_losses

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--task", default="antonym")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--heads", type=int, default=27, help="heads timed one at a time")
    parser.add_argument("--batch-size", type=int, default=27, help="heads per batched forward")
    args = parser.parse_args(argv)

    model = tvjax.load(args.model)
    config, params, tokenizer = model
    L, N = config.n_layers, config.n_heads
    task = tvjax.load_task(args.task)
    mu = tvjax.extract_means(model, task, n_prompts=8)
    prompts = shuffled_label_prompts(tokenizer, task, n_prompts=args.prompts)
    print(f"{L} layers x {N} heads = {L * N} heads, {len(prompts)} prompts of 10 shots "
          f"(up to {max(len(p.ids) for p in prompts)} tokens), {jax.devices()[0].platform}", flush=True)

    def timed(fn, *args):
        fn(*(a[:1] for a in args))  # warm-up with one head (the same shapes): compilation
        start = time.perf_counter()
        result = fn(*args)
        return time.perf_counter() - start, result

    batched_s, effects = timed(lambda: indirect_effects(model, prompts, mu, args.batch_size))
    rows = prepare_rows(model, prompts)
    base = np.exp(-np.asarray(stacked_row_losses(params, HeadBlend.hard(np.zeros((1, L, N), bool), mu[None]), rows,
                                                 config=config, batch_size=1)))[0]

    def one_cached(heads):  # [K, L, N] one-hot
        return [float((np.exp(-np.asarray(stacked_row_losses(params, HeadBlend.hard(h[None], mu[None]), rows,
                                                             config=config, batch_size=1)))[0] - base).mean())
                for h in heads]

    cached_s, cached = timed(one_cached, one_hot_heads(L, N)[:args.heads])
    full_s, full = timed(lambda heads: indirect_effects_reference(model, prompts, mu, heads),
                         np.argwhere(np.ones((L, N), bool))[:args.heads])
    np.testing.assert_allclose(cached, effects.reshape(-1)[:args.heads], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(full, effects.reshape(-1)[:args.heads], rtol=1e-3, atol=1e-7)
    scale = L * N / args.heads
    print(f"  batched ({args.batch_size} heads per forward, all {L * N} heads): {batched_s:8.1f} s")
    print(f"  one head per forward, cached prefixes: {cached_s * scale:8.1f} s "
          f"({cached_s / args.heads * 1e3:.0f} ms per head, timed on {args.heads})")
    print(f"  one head per forward, full prompts:    {full_s * scale:8.1f} s "
          f"({full_s / args.heads * 1e3:.0f} ms per head, timed on {args.heads})")
    print(f"speed-up of batched over one head per full forward: {full_s * scale / batched_s:.1f}x; "
          f"over one head per cached forward: {cached_s * scale / batched_s:.1f}x")


if __name__ == "__main__":
    main()
