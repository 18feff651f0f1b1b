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

A thin command over `tvjax.experiments` (`sweep`, `sweep_table`, `parse_recipe`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import tvjax
from tvjax.experiments import SUITE, SWEEP, parse_recipe, sweep, sweep_table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default=",".join(SUITE))
    parser.add_argument("--recipe", nargs="+", action="append", metavar="NAME [FIELD=VALUE]",
                        help=f"repeatable; default: {', '.join(SWEEP)}")
    parser.add_argument("--out", default="results/sweep.json")
    parser.add_argument("--split", default="valid", choices=("valid", "test"),
                        help="where recipes are scored: choose on valid; test only reports the chosen ones")
    args = parser.parse_args(argv)
    try:
        recipes = dict(parse_recipe(words) for words in (args.recipe or [[name] for name in SWEEP]))
        model = tvjax.load(args.model)
        tasks = [tvjax.load_task(name) for name in args.tasks.split(",")]
        done = sweep(model, tasks, recipes, Path(args.out), args.split)
    except ValueError as error:  # the package's errors say what to fix
        raise SystemExit(str(error)) from None
    print(sweep_table(done, [t.name for t in tasks]))


if __name__ == "__main__":
    main()
