"""The per-task table: zero-shot vs 10-shot ICL vs soft task vector, on every built-in task.

    python scripts/task_table.py [--model NAME] [--tasks antonym,country_capital,...] [--out results/table]

Writes `<out>.json` and `<out>.md` (first-token accuracy and exact match per task,
and their mean) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import tvjax
from tvjax.extractor import METHODS, fit_tasks
from tvjax.report import markdown_table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--tasks", default=",".join(tvjax.builtin_names()))
    parser.add_argument("--out", default="results/task_table")
    parser.add_argument("--steps", type=int, default=tvjax.FitConfig.steps)
    args = parser.parse_args(argv)

    model = tvjax.load(args.model)
    rows = {}
    start = time.perf_counter()
    for tv, scores in fit_tasks(model, args.tasks.split(","), fit_config=tvjax.FitConfig(steps=args.steps)):
        name = tv.task.name
        rows[name] = {m: s.as_dict() for m, s in scores.items()} | {"seconds": tv.timings}
        print(f"{name}: " + ", ".join(f"{m} {s.first_token:.2f}/{s.exact_match:.2f}" for m, s in scores.items()),
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, METHODS)
    out.with_suffix(".json").write_text(json.dumps({"model": args.model or "smollm2-135m", "results": rows,
                                                    "total_seconds": time.perf_counter() - start}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
