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

A thin command over `tvjax.experiments.oracle_ceiling`.
"""

from __future__ import annotations

import argparse

import tvjax
from tvjax.experiments import ORACLE, SUITE, oracle_ceiling
from tvjax.report import markdown_table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tasks", default=",".join(SUITE))
    parser.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    parser.add_argument("--shots", type=int, default=10)
    args = parser.parse_args(argv)
    model = tvjax.load(args.model)
    tasks = [tvjax.load_task(name) for name in args.tasks.split(",")]
    rows = oracle_ceiling(model, tasks, args.split, args.shots)
    print(f"\nfirst token / exact match (%), {args.split} split\n")
    print(markdown_table(rows, ("zero_shot", "icl", ORACLE)))


if __name__ == "__main__":
    main()
