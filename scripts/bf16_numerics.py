"""bfloat16 against float32 on a real model: logits, greedy tokens, and fitted task vectors.

    .venv/bin/python scripts/bf16_numerics.py [--model smollm2-135m] [--per-task 4] \
        [--fit-tasks antonym,country_capital,present_past] [--out results/bf16]

Prompts are 5-shot ICL prompts from the valid split of every built-in task. For each prompt:
the last position's logits in bfloat16 against float32 (max and mean |diff| over the vocabulary,
relative to the float32 logits' max |value|), and whether 16 greedy tokens agree. Then a task
vector is fitted in each dtype on each of `--fit-tasks` (means, fit and test-split evaluation
all in that dtype). Writes `<out>/bf16_numerics.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import tvjax
from tvjax.batching import pad_id, pad_left
from tvjax.data import prompts_for
from tvjax.data.tasks import builtin_names, load_task

DTYPES = ("float32", "bfloat16")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model name or path (default: the embedded default model)")
    parser.add_argument("--tasks", default=",".join(builtin_names()), help="tasks whose prompts are compared")
    parser.add_argument("--per-task", type=int, default=4, help="valid-split prompts per task")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--fit-tasks", default="antonym,country_capital,present_past")
    parser.add_argument("--steps", type=int, default=tvjax.FitConfig().steps, help="fit steps")
    parser.add_argument("--n-prompts", type=int, default=50, help="ICL prompts for the means")
    parser.add_argument("--out", default="results/bf16")
    args = parser.parse_args(argv)
    models = {dtype: tvjax.load(args.model, dtype=dtype) for dtype in DTYPES}

    rows = [_compare_prompts(models, task, args.per_task, args.new_tokens) for task in args.tasks.split(",")]
    fits = {task: {dtype: _fit(model, task, args) for dtype, model in models.items()}
            for task in filter(None, args.fit_tasks.split(","))}
    result = {"model": args.model or "default", "prompts": rows, "fits": fits,
              "logits_max_rel": max(r["max_rel"] for r in rows),
              "logits_mean_rel": float(np.mean([r["mean_rel"] for r in rows])),
              "greedy_identical": float(np.mean([r["greedy_identical"] for r in rows])),
              "first_token_agree": float(np.mean([r["first_token_agree"] for r in rows]))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16_numerics.json").write_text(json.dumps(result, indent=2))
    (out / "bf16_numerics.md").write_text(markdown(result, args.new_tokens))
    print(markdown(result, args.new_tokens))
    return result


def _compare_prompts(models: dict, task_name: str, per_task: int, new_tokens: int) -> dict:
    """One task's valid prompts in both dtypes: logit differences and greedy agreement."""
    tokenizer = models["float32"].tokenizer
    prompts, _ = prompts_for(tokenizer, load_task(task_name), "valid", 5, limit=per_task)
    tokens, mask = pad_left([p.ids for p in prompts], pad_id(tokenizer))
    last = np.full(len(tokens), tokens.shape[1] - 1)
    logits, greedy = {}, {}
    for dtype, (config, params, _) in models.items():
        logits[dtype] = np.asarray(tvjax.forward(params, tokens, config=config, mask=mask, logits_at=last).logits)
        greedy[dtype] = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=new_tokens,
                                       eos_token_id=-1)
    ref, low = logits["float32"], logits["bfloat16"]
    scale = np.abs(ref).max(-1)  # [B]
    diff = np.abs(low - ref)
    same = greedy["float32"] == greedy["bfloat16"]  # [B, new_tokens]
    return {"task": task_name, "prompts": len(tokens), "tokens": int(tokens.shape[1]),
            "max_rel": float((diff.max(-1) / scale).max()), "mean_rel": float((diff.mean(-1) / scale).mean()),
            "first_token_agree": float(same[:, 0].mean()), "greedy_identical": float(same.all(-1).mean()),
            "agree_before_divergence": float(np.mean([np.argmin(s) if not s.all() else len(s) for s in same]))}


def _fit(model, task: str, args) -> dict:
    tv = tvjax.TaskVectorExtractor(model, task, n_prompts=args.n_prompts, fit_config=tvjax.FitConfig(steps=args.steps))
    tv.fit()
    scores = tv.evaluate(("task_vector",))["task_vector"]
    return {"first_token": scores.first_token, "exact_match": scores.exact_match, "best_step": tv.result.best_step,
            "seconds": {k: round(v, 1) for k, v in tv.timings.items()}}


def markdown(result: dict, new_tokens: int) -> str:
    lines = [f"Logits at the last prompt token, bfloat16 vs float32 (|diff| relative to the float32 logits' max "
             f"|value|), and {new_tokens} greedy tokens:", "",
             "| task | prompts | tokens | max rel. diff | mean rel. diff | first token agrees | "
             f"all {new_tokens} agree | tokens before divergence |", "|---|---|---|---|---|---|---|---|"]
    for r in result["prompts"]:
        lines.append(f"| {r['task']} | {r['prompts']} | {r['tokens']} | {r['max_rel']:.2e} | {r['mean_rel']:.2e} | "
                     f"{r['first_token_agree']:.0%} | {r['greedy_identical']:.0%} | "
                     f"{r['agree_before_divergence']:.1f} |")
    lines.append(f"| all | | | {result['logits_max_rel']:.2e} | {result['logits_mean_rel']:.2e} | "
                 f"{result['first_token_agree']:.0%} | {result['greedy_identical']:.0%} | |")
    if result["fits"]:
        lines += ["", "Task vectors fitted and evaluated in each dtype (test split, first token / exact match, %):",
                  "", "| task | float32 | bfloat16 | fit seconds float32 / bfloat16 |", "|---|---|---|---|"]
        for task, by_dtype in result["fits"].items():
            f32, b16 = by_dtype["float32"], by_dtype["bfloat16"]
            lines.append(f"| {task} | {f32['first_token']:.0%} / {f32['exact_match']:.0%} | "
                         f"{b16['first_token']:.0%} / {b16['exact_match']:.0%} | "
                         f"{f32['seconds'].get('fit', 0):.0f} / {b16['seconds'].get('fit', 0):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
