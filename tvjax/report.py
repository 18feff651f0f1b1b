"""Readable summaries of results: Markdown tables of scores per task and method."""

from __future__ import annotations

LABELS = {"zero_shot": "zero-shot", "icl": "ICL", "task_vector": "soft TV", "layer_patching": "layer patching",
          "function_vector": "function vector", "reinforce": "REINFORCE"}


def markdown_table(rows: dict[str, dict], methods, mean: bool = True) -> str:
    """`rows[task][method] = {"first_token": .., "exact_match": ..}` -> a Markdown table (with a mean row).

    Each cell is `first-token / exact-match` accuracy in percent.
    """
    header = "| task | " + " | ".join(LABELS.get(m, m) for m in methods) + " |"
    lines = [header, "|---" * (len(methods) + 1) + "|"]
    for task, scores in rows.items():
        lines.append(f"| {task} | " + " | ".join(_cell(scores[m]) for m in methods) + " |")
    if mean:
        avg = {m: {k: sum(r[m][k] for r in rows.values()) / len(rows) for k in ("first_token", "exact_match")}
               for m in methods}
        lines.append("| **mean** | " + " | ".join(f"**{_cell(avg[m])}**" for m in methods) + " |")
    return "\n".join(lines)


def _cell(score: dict) -> str:
    return f"{100 * score['first_token']:.0f} / {100 * score['exact_match']:.0f}"
