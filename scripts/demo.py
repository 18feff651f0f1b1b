"""`make demo`: soft task vectors on the embedded default model (SmolLM2-135M-Instruct).

For a few built-in tasks: extract head means from 10-shot prompts, fit one blend
weight per head, and compare zero-shot, 10-shot ICL and zero-shot + soft task
vector on the test split, with the time each phase took.

    python scripts/demo.py [--tasks antonym,country_capital,present_past]
"""

from __future__ import annotations

import argparse
import time

from tqdm.auto import tqdm

import tvjax
from tvjax.data import prompts_for
from tvjax.extractor import SCORED as METHODS, fit_tasks
from tvjax.generation import generate_text
from tvjax.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="antonym,country_capital,present_past")
    args = parser.parse_args()

    start = time.perf_counter()
    model = tvjax.load()
    config = model.config
    print(f"SmolLM2-135M-Instruct: {config.n_layers} layers x {config.n_heads} heads = "
          f"{config.n_layers * config.n_heads} task-vector parameters; loaded in {time.perf_counter() - start:.1f} s")

    rows, timings, tasks = {}, {}, args.tasks.split(",")
    # one bar over every task's phases (means, fit, three evaluations), with the time left
    with tqdm(total=len(tasks) * (2 + len(METHODS)), desc="demo", unit="phase", disable=None) as bar:
        for tv, scores in fit_tasks(model, tasks, progress=bar):
            name, task = tv.task.name, tv.task
            rows[name], timings[name] = {m: s.as_dict() for m, s in scores.items()}, tv.timings
            lines = [f"\n{name} ({len(task.train)} train / {len(task.valid)} valid / {len(task.test)} test pairs): "
                     + ", ".join(f"{m} {100 * s.first_token:.0f}%" for m, s in scores.items())]
            prompts, _ = prompts_for(model.tokenizer, task, "test", 0, limit=3)
            ids = [p.ids for p in prompts]
            for p, plain, steered in zip(prompts, generate_text(model, ids, 6),
                                         generate_text(model, ids, 6, tv.blend)):
                lines.append(f"    {p.pair[0]!r}: zero-shot {_line(plain)!r} -> with the task vector "
                             f"{_line(steered)!r}")
            bar.write("\n".join(lines))

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
