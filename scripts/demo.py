"""`make demo`: soft task vectors on the embedded default model (SmolLM2-135M-Instruct).

For a few built-in tasks: extract head means from 10-shot prompts, fit one blend
weight per head, and compare zero-shot, 10-shot ICL and zero-shot + soft task
vector on the test split, with the time each phase took.

    python scripts/demo.py [--tasks antonym,country_capital,english_french]
"""

from __future__ import annotations

import argparse
import time

import tvjax
from tvjax.generate import generate_text
from tvjax.report import markdown_table

METHODS = ("zero_shot", "icl", "task_vector")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="antonym,country_capital,english_french")
    args = parser.parse_args()

    start = time.perf_counter()
    model = tvjax.load()
    config = model.config
    print(f"SmolLM2-135M-Instruct: {config.n_layers} layers x {config.n_heads} heads = "
          f"{config.n_layers * config.n_heads} task-vector parameters; loaded in {time.perf_counter() - start:.1f} s")

    rows, timings = {}, {}
    for name in args.tasks.split(","):
        tv = tvjax.TaskVectorExtractor(model, name)
        print(f"\n{name}: {len(tv.task.train)} train / {len(tv.task.valid)} valid / {len(tv.task.test)} test pairs")
        tv.fit()
        scores = tv.evaluate(METHODS)
        rows[name] = {m: s.as_dict() for m, s in scores.items()}
        timings[name] = tv.timings
        print("  " + ", ".join(f"{m} {100 * s.first_token:.0f}%" for m, s in scores.items())
              + "   (" + ", ".join(f"{k} {v:.0f}s" for k, v in tv.timings.items()) + ")")
        queries = [x for x, _ in tv.task.test[:3]]
        prompts = [tvjax.Template().query(q)[0] for q in queries]
        for q, plain, steered in zip(queries, generate_text(model, prompts, 6), generate_text(model, prompts, 6, tv.blend)):
            print(f"    {q!r}: zero-shot {_line(plain)!r} -> with task vector {_line(steered)!r}")

    print("\nTest-split accuracy, first token / exact match (%):\n")
    print(markdown_table(rows, METHODS))
    phases = sorted({k for t in timings.values() for k in t})
    print("\nSeconds per phase:  " + "  ".join(f"{p}" for p in phases))
    for name, t in timings.items():
        print(f"  {name:<16}" + "  ".join(f"{t.get(p, 0):>{len(p)}.1f}" for p in phases))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def _line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


if __name__ == "__main__":
    main()
