"""How the fitting defaults are chosen: fitting recipes over a task suite, scored on the valid split.

    python scripts/sweep_fit.py [--tasks antonym,uppercase,...] [--recipe NAME [FIELD=VALUE ...]] ...
                                [--out results/sweep.json] [--split valid]

A recipe is a name from RECIPES, or a new name followed by overrides of `FitConfig` fields
(`steps=200 positions=split`) and of the means (`n_prompts=`, `shots=`). The means of every
task are extracted once per mean set, in shared batches; each recipe fits every task in one
loop (`fit_many`) and scores them on the valid split (`evaluate_many`), next to zero-shot and
10-shot ICL on the same split. The test split is read only with `--split test`, to report
recipes already chosen on valid. Results go to `--out` as they come (a rerun skips the
recipes already there), and a Markdown table is printed: per recipe, the mean first-token /
exact-match / contains accuracy, the exact match per task, and the fit time.

Two more overrides change the fit's data, not its settings (the means always come from the
whole train split): `train_fraction=0.5` fits on the first half of each task's train pairs
(a learning curve), and `fit_on_scored=true` fits on, and chooses the step on, the scored
split itself: not a recipe but a ceiling, what the vector's form can reach on those very
items when generalisation is taken out of the way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

import tvjax
from tvjax.data.tasks import Task
from tvjax.evaluation import evaluate_many
from tvjax.extract import extract_means_many
from tvjax.fitting import fit_many

# The 11 built-in tasks where 10-shot ICL reaches 30% on the default model (docs/task_table.md).
SUITE = ("antonym,capitalize,comparative,country_capital,first_letter,lowercase,next_number,number_to_word,"
         "present_past,singular_plural,uppercase")
RECIPES = {
    "default": {},
    "answer": {"positions": "answer"},
    "split": {"positions": "split"},
    "shift": {"form": "shift"},
    "shift_split": {"positions": "split", "form": "shift"},
    "published": {"learning_rate": 0.2, "batch_size": 1, "steps": 400, "eval_every": 40},  # init 0: weights 0.5
}
MEANS = {"n_prompts": 50, "shots": 10}  # extract_means' defaults
DATA = {"train_fraction": 1.0, "fit_on_scored": False}  # what the fit trains and chooses on


def recipe(words: list[str]) -> tuple[str, dict]:
    """`(name, overrides)` of `NAME [FIELD=VALUE ...]`, values parsed as JSON where they can be."""
    name, *pairs = words
    if not pairs:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}: give its overrides (FIELD=VALUE) or one of {', '.join(RECIPES)}")
        return name, RECIPES[name]
    fields = {f.name for f in dataclasses.fields(tvjax.FitConfig)} | set(MEANS) | set(DATA)
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in fields:
            raise SystemExit(f"recipe {name}: {key!r} is not a FitConfig field, a mean setting or a data setting ({', '.join(sorted(fields))})")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default=SUITE)
    parser.add_argument("--recipe", nargs="+", action="append", metavar="NAME [FIELD=VALUE]",
                        help=f"repeatable; default: {', '.join(RECIPES)}")
    parser.add_argument("--out", default="results/sweep.json")
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="where recipes are scored: choose on valid; test only reports the chosen ones")
    args = parser.parse_args()
    recipes = dict(recipe(words) for words in (args.recipe or [[name] for name in RECIPES]))
    names = args.tasks.split(",")
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}

    model = tvjax.load(args.model)
    tasks = [tvjax.load_task(name) for name in names]
    if done.setdefault("scored_on", args.split) != args.split:
        raise SystemExit(f"{out} holds scores on the {done['scored_on']} split; write the {args.split} split elsewhere")
    for baseline, shots in (("zero_shot", 0), ("icl", MEANS["shots"])):
        if not set(done.get(baseline, {}).get("scores", {})) >= set(names):
            scores = evaluate_many(model, tasks, shots=shots, split=args.split)
            done[baseline] = {"scores": {n: s.as_dict() for n, s in zip(names, scores)}}
            _write(out, done)
    means = {}
    for name, overrides in recipes.items():
        if done.get(name, {}).get("overrides") == overrides and set(done[name]["scores"]) >= set(names):
            continue
        mean_set = {k: overrides.get(k, v) for k, v in MEANS.items()}
        key = tuple(mean_set.values())
        if key not in means:
            means[key] = extract_means_many(model, tasks, **mean_set)
        settings = tvjax.FitConfig(**{k: v for k, v in overrides.items() if k not in MEANS and k not in DATA})
        fitted_on = [fit_data(task, args.split, **{k: overrides.get(k, v) for k, v in DATA.items()}) for task in tasks]
        bases = None
        if settings.form == "shift":  # the zero-shot means, once per seed, from the whole train split
            if ("base", settings.seed) not in means:
                means["base", settings.seed] = extract_means_many(model, tasks, shots=0, seed=settings.seed)
            bases = means["base", settings.seed]
        start = time.perf_counter()
        results = fit_many(model, fitted_on, means[key], settings, bases=bases)
        seconds = time.perf_counter() - start
        scores = evaluate_many(model, tasks, blends=[r.blend for r in results], split=args.split,
                               positions=settings.positions)
        done[name] = {"overrides": overrides, "fit_seconds": seconds,
                      "best_step": {n: r.best_step for n, r in zip(names, results)},
                      "scores": {n: s.as_dict() for n, s in zip(names, scores)}}
        _write(out, done)
        print(f"{name}: fitted in {seconds:.0f} s; {args.split} exact match "
              f"{_mean(done[name], names, 'exact_match'):.1f}%", flush=True)
    print(table(done, names))


def fit_data(task: Task, split: str, train_fraction: float, fit_on_scored: bool) -> Task:
    """`task` as the fit sees it: its first `train_fraction` of train pairs, or `split` to fit and choose on."""
    if fit_on_scored:
        scored = task.split(split)
        return dataclasses.replace(task, train=scored, valid=scored)
    if not 0 < train_fraction <= 1:
        raise SystemExit(f"train_fraction must be in (0, 1], not {train_fraction}")
    return dataclasses.replace(task, train=task.train[:max(1, round(train_fraction * len(task.train)))])


def _write(path: Path, done: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(done, indent=1))


def _mean(entry: dict, names: list[str], metric: str) -> float:
    return 100 * float(np.mean([entry["scores"][n][metric] for n in names]))


def table(done: dict, names: list[str]) -> str:
    """Markdown: one row per recipe (ICL first), mean first token / exact / contains, exact per task."""
    lines = ["| recipe | overrides | first token / exact / contains | " + " | ".join(names) + " | fit s |",
             "|---" * (len(names) + 4) + "|"]
    for name, entry in done.items():
        if not isinstance(entry, dict) or not set(entry["scores"]) >= set(names):
            continue
        means = " / ".join(f"{_mean(entry, names, m):.1f}" for m in ("first_token", "exact_match", "contains"))
        exact = " | ".join(f"{100 * entry['scores'][n]['exact_match']:.0f}" for n in names)
        overrides = " ".join(f"{k}={v}" for k, v in entry.get("overrides", {}).items()) or "-"
        seconds = f"{entry['fit_seconds']:.0f}" if "fit_seconds" in entry else "-"
        lines.append(f"| {name} | {overrides} | {means} | {exact} | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
