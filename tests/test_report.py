"""Readable summaries: the score table, and the means over tasks with standard errors and gains."""

import numpy as np

from tvjax.report import markdown_table, summary_table


def _scores(first: float, exact: float | None) -> dict:
    return {"first_token": first, "exact_match": exact}


ROWS = {"a": {"icl": _scores(0.5, 0.4), "task_vector": _scores(0.7, 0.6)},
        "b": {"icl": _scores(0.3, 0.3), "task_vector": _scores(0.2, 0.35)},
        "c": {"icl": _scores(0.9, 0.8), "task_vector": _scores(1.0, 0.8)}}


def test_means_with_standard_errors_and_paired_gains_over_icl():
    table = summary_table(ROWS, ("icl", "task_vector")).splitlines()
    assert table[0] == "| method | first token | exact match | gain over ICL: first token | exact match |"
    gains = np.array([0.2, -0.1, 0.1])  # first token, per task
    error = gains.std(ddof=1) / np.sqrt(3)
    assert table[3] == (f"| soft TV | 63.3 ± {100 * np.std([0.7, 0.2, 1.0], ddof=1) / np.sqrt(3):.1f} | 58.3 ± "
                        f"{100 * np.std([0.6, 0.35, 0.8], ddof=1) / np.sqrt(3):.1f} | +6.7 ± {100 * error:.1f} | "
                        f"+8.3 ± {100 * np.std([0.2, 0.05, 0.0], ddof=1) / np.sqrt(3):.1f} |")
    assert table[2].endswith("| +0.0 ± 0.0 | +0.0 ± 0.0 |")


def test_without_icl_no_gain_and_unmeasured_scores_are_dashes():
    rows = {**ROWS, "d": {"icl": _scores(0.5, None), "task_vector": _scores(0.5, 0.5)}}
    assert summary_table(rows, ("task_vector",)).splitlines()[0] == "| method | first token | exact match |"
    assert summary_table(rows, ("icl", "task_vector")).splitlines()[2:] == [
        "| ICL | 55.0 ± 12.6 | - | +0.0 ± 0.0 | - |", "| soft TV | 60.0 ± 16.8 | 56.2 ± 9.4 | +5.0 ± 6.5 | - |"]
    assert markdown_table(rows, ("icl",)).splitlines()[-1] == "| **mean** | **55 / -** |"
