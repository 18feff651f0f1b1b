"""A ceiling for head-output task vectors: edit each zero-shot prompt with its own ICL prompt's heads.

    python scripts/oracle_ceiling.py [--tasks antonym,uppercase,...] [--split valid] [--shots 10]

For every prompt of the split, the 10-shot ICL prompt with the same query is run and every
head's output at its last token is kept; the zero-shot prompt is then generated with every
head at its last token replaced by those outputs (a hard blend, theta = +inf, with that
prompt's own heads as the means). No task mean can carry more of a given prompt's ICL
computation through the heads at the last token than this oracle does, so it bounds
what the `last` position can reach; the gap to ICL is what the rest of the ICL prompt
(the MLPs, the residual stream, the answer tokens' own attention to the demonstrations)
adds. Prints a Markdown table of first token / exact match per task: zero-shot, ICL, oracle.
"""

from __future__ import annotations

import argparse

import numpy as np

import tvjax
from tvjax.batching import bucket_length, chunks, pad_id, pad_left
from tvjax.data import prompts_for
from tvjax.evaluation import answer_budget, evaluate_many, score_row
from tvjax.extract import site_means
from tvjax.interventions import RowBlend
from tvjax.generation import generate
from sweep_fit import SUITE


def oracle_scores(model, task, split: str, shots: int, batch_size: int = 16) -> np.ndarray:
    """`[first token, exact match, contains]` of the oracle on `task`'s `split`."""
    config, params, tokenizer = model
    zero, _ = prompts_for(tokenizer, task, split, 0)
    icl, _ = prompts_for(tokenizer, task, split, shots)
    by_pair = {p.pair: i for i, p in enumerate(icl)}
    zero = [p for p in zero if p.pair in by_pair]  # the queries both prompt sets could tokenise
    icl = [icl[by_pair[p.pair]] for p in zero]
    heads = site_means(model, icl, ("heads",), groups=np.arange(len(icl)), desc=f"oracle heads {task.name}")["heads"]
    theta = np.full(heads.shape[:3], np.inf, np.float32)  # [P, L, N]: every head replaced
    length, budget, hits = bucket_length(max(len(p.ids) for p in zero)), answer_budget(zero), np.zeros(3)
    for chunk, real in chunks(list(enumerate(zero)), batch_size):  # padded: one compiled shape
        tokens, mask = pad_left([p.ids for _, p in chunk], pad_id(tokenizer), length)
        new = generate(params, tokens, config=config, mask=mask, max_new_tokens=budget,
                       intervention=RowBlend.gather(theta, heads, np.asarray([i for i, _ in chunk])))
        hits += sum(score_row(tokenizer, row, p, config.eos_ids) for (_, p), row in zip(chunk[:real], new[:real]))
    return hits / len(zero)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default=SUITE)
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument("--shots", type=int, default=10)
    args = parser.parse_args()
    model = tvjax.load(args.model)
    tasks = [tvjax.load_task(name) for name in args.tasks.split(",")]
    zero, icl = (evaluate_many(model, tasks, shots=shots, split=args.split) for shots in (0, args.shots))
    rows = []
    for task, z, i in zip(tasks, zero, icl):
        oracle = oracle_scores(model, task, args.split, args.shots)
        rows.append([100 * np.array([z.first_token, z.exact_match]), 100 * np.array([i.first_token, i.exact_match]),
                     100 * oracle[:2]])
        print(f"{task.name}: oracle {oracle[0]:.2f} / {oracle[1]:.2f}", flush=True)
    print(f"\nfirst token / exact match (%), {args.split} split\n")
    print("| task | zero-shot | ICL | oracle (ICL heads at the last token) |\n|---|---|---|---|")
    for task, row in zip(tasks, rows):
        print(f"| {task.name} | " + " | ".join(f"{a:.0f} / {b:.0f}" for a, b in row) + " |")
    mean = np.mean(rows, axis=0)
    print("| **mean** | " + " | ".join(f"**{a:.0f} / {b:.0f}**" for a, b in mean) + " |")


if __name__ == "__main__":
    main()
