"""How the fitting defaults were chosen: a grid over learning rate and initial theta.

    python scripts/sweep_fit.py [--tasks antonym,country_capital,present_past] [--lrs 0.03,0.1,0.3] [--inits -2,0]

For each task the means are extracted once; each setting is fitted with the default
steps and batch size and scored by its best validation loss (the test split is not
used). Prints a Markdown table of validation losses, with the mean over tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import tvjax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default="antonym,country_capital,present_past")
    parser.add_argument("--lrs", default="0.03,0.1,0.3")
    parser.add_argument("--inits", default="-2,0")
    parser.add_argument("--steps", type=int, default=tvjax.FitConfig.steps)
    args = parser.parse_args()

    model = tvjax.load(args.model)
    grid = list(itertools.product(map(float, args.lrs.split(",")), map(float, args.inits.split(","))))
    losses = {}
    for name in args.tasks.split(","):
        task = tvjax.load_task(name)
        mu = tvjax.extract_means(model, task)
        for lr, init in grid:
            config = dataclasses.replace(tvjax.FitConfig(), learning_rate=lr, init=init, steps=args.steps)
            result = tvjax.fit(model, task, mu, config)
            losses[name, lr, init] = result.best_valid_loss
            print(f"{name} lr={lr} init={init}: best valid loss {result.best_valid_loss:.3f} "
                  f"at step {result.best_step}", flush=True)
    tasks = args.tasks.split(",")
    print("\n| learning rate | init | " + " | ".join(tasks) + " | mean |")
    print("|---" * (len(tasks) + 3) + "|")
    for lr, init in grid:
        row = [losses[t, lr, init] for t in tasks]
        print(f"| {lr} | {init} | " + " | ".join(f"{x:.3f}" for x in row) + f" | {sum(row) / len(row):.3f} |")


if __name__ == "__main__":
    main()
