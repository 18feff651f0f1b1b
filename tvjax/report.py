"""Readable summaries of results: Markdown tables of scores and of seconds per task and method,
and the timing of phases (with a progress bar over them)."""

from __future__ import annotations

import contextlib
import time

from tvjax.methods import METHODS, labels


def markdown_table(rows: dict[str, dict], methods, mean: bool = True) -> str:
    """`rows[task][method] = {"first_token": .., "exact_match": ..}` -> a Markdown table (with a mean row).

    Each cell is `first-token / exact-match` accuracy in percent.
    """
    header = "| task | " + " | ".join(labels().get(m, m) for m in methods) + " |"
    lines = [header, "|---" * (len(methods) + 1) + "|"]
    for task, scores in rows.items():
        lines.append(f"| {task} | " + " | ".join(_cell(scores[m]) for m in methods) + " |")
    if mean:
        avg = {m: {k: _mean([r[m][k] for r in rows.values()]) for k in ("first_token", "exact_match")}
               for m in methods}
        lines.append("| **mean** | " + " | ".join(f"**{_cell(avg[m])}**" for m in methods) + " |")
    return "\n".join(lines)


def summary_table(rows: dict[str, dict], methods, baseline: str = "icl") -> str:
    """Markdown: per method, the mean over the tasks of `rows` (as `markdown_table`'s) with its
    standard error, and (where `baseline` is among `methods`) the mean gain over it with the
    standard error of the paired differences; first token and exact match, in points."""
    header = ["method", "first token", "exact match"] + (
        [f"gain over {labels().get(baseline, baseline)}: first token", "exact match"] if baseline in methods else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method in methods:
        cells = [_spread([r[method][k] for r in rows.values()]) for k in ("first_token", "exact_match")]
        if baseline in methods:
            cells += [_spread([None if r[method][k] is None or r[baseline][k] is None else r[method][k] - r[baseline][k]
                               for r in rows.values()], sign=True) for k in ("first_token", "exact_match")]
        lines.append(f"| {labels().get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(values: list, sign: bool = False) -> str:
    """`mean ± standard error` of fractions, in percent points ('-' with a value not measured)."""
    if None in values or not values:
        return "-"
    n = len(values)
    mean = sum(values) / n
    error = (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5 if n > 1 else 0.0
    return f"{100 * mean:{'+' if sign else ''}.1f} ± {100 * error:.1f}"


def _mean(values: list) -> float | None:
    return None if None in values else sum(values) / len(values)


def _cell(score: dict) -> str:
    """`first-token / exact-match` in percent; '-' for a score not measured (first-token-only runs)."""
    return " / ".join("-" if score[k] is None else f"{100 * score[k]:.0f}" for k in ("first_token", "exact_match"))


def shared_methods(results: dict[str, dict]) -> tuple[str, ...]:
    """The methods every task's result (`tvjax.compare.compare_task`) has, in the order of `METHODS`."""
    return tuple(m for m in METHODS if all(m in r["scores"] for r in results.values()))


def seconds_table(results: dict[str, dict]) -> str:
    """Markdown: per task (and on average), the shared means' seconds and each method's fit + evaluation seconds."""

    def cell(seconds: dict, method: str) -> str:
        evaluation = f"{seconds[f'eval_{method}']:.0f}"
        return evaluation if f"fit_{method}" not in seconds else f"{seconds[f'fit_{method}']:.0f} + {evaluation}"

    methods = shared_methods(results)
    phases = set.intersection(*(set(r["seconds"]) for r in results.values()))
    mean = {k: sum(r["seconds"][k] for r in results.values()) / len(results) for k in phases}
    lines = ["| task | means | " + " | ".join(labels().get(m, m) for m in methods) + " |",
             "|---" * (len(methods) + 2) + "|"]
    for name, seconds in [*((n, r["seconds"]) for n, r in results.items()), ("**mean**", mean)]:
        lines.append(f"| {name} | {seconds.get('means', 0):.0f} | " + " | ".join(cell(seconds, m) for m in methods)
                     + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def timed(seconds: dict, name: str, progress=None, label: str | None = None, count: int = 1):
    """Time a phase into `seconds[name]` (2 decimals); a tqdm bar (if any) shows `label` (default
    `name`) while it runs, then counts it done (`count` times: a phase shared by that many tasks)."""
    if progress is not None:
        progress.set_postfix_str(label or name)
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 2)
    if progress is not None:
        progress.update(count)
