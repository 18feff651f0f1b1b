"""PNG figures with matplotlib (its object API, Agg canvas, no pyplot state): head heatmaps over
layers x heads and the method-comparison bar chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvjax.files import replacing



def head_heatmap(scores, path, title: str = "", label: str = "", panels: tuple[str, ...] = ()) -> Path:
    """A `[L, N]` array as a layers (rows, 0 at the top) x heads heatmap; signed values get a diverging map.

    With `panels` (one title each), `scores` is `[P, L, N]`: side-by-side heatmaps on one colour
    scale, e.g. a split task vector's weights at the last prompt token and at the answer tokens.
    """
    from matplotlib.figure import Figure

    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2 + bool(panels) or (panels and len(panels) != scores.shape[0]):
        raise ValueError(f"a head heatmap needs a [L, N] array, or [P, L, N] with P panel titles; got shape "
                         f"{scores.shape} and {len(panels)} panel titles")
    stack = scores if panels else scores[None]
    L, N = stack.shape[1:]
    limit = float(np.abs(stack).max()) or 1.0
    colours = dict(cmap="RdBu_r", vmin=-limit, vmax=limit) if stack.min() < 0 else \
        dict(cmap="viridis", vmin=float(stack.min()), vmax=float(stack.max()))
    fig = Figure(figsize=(1.6 + 0.35 * N * len(stack), 1.2 + 0.22 * L))
    axes = fig.subplots(1, len(stack), squeeze=False)[0]
    for ax, panel, name in zip(axes, stack, panels or (title,)):
        image = ax.imshow(panel, aspect="auto", **colours)
        ax.set_xlabel("head")
        ax.set_xticks(range(N))
        ax.set_yticks(range(0, L, max(1, L // 15)))
        ax.set_title(name if not panels else f"{title}\n{name}", fontsize=9)
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[-1], label=label)  # one scale for every panel
    return _save(fig, path)


def comparison_chart(rows: dict[str, dict], methods, labels: dict[str, str], path) -> Path:
    """Grouped bars: per task (and the mean), each method's first-token and exact-match accuracy (%).

    `rows[task][method] = {"first_token": .., "exact_match": ..}`.
    """
    from matplotlib.figure import Figure

    names = [*rows, "mean"]
    fig = Figure(figsize=(2 + 0.9 * len(names) * max(1, len(methods) / 5), 6.5))
    width = 0.8 / len(methods)
    for i, metric in enumerate(("first_token", "exact_match")):
        ax = fig.add_subplot(2, 1, i + 1)
        for j, method in enumerate(methods):
            values = [100 * rows[t][method][metric] for t in rows]
            values.append(float(np.mean(values)))
            ax.bar(np.arange(len(names)) + (j - (len(methods) - 1) / 2) * width, values, width,
                   label=labels.get(method, method))
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{metric.replace('_', '-')} accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(fontsize=7, ncol=min(len(methods), 6), loc="upper center", bbox_to_anchor=(0.5, 1.25))
    return _save(fig, path)


def _save(fig, path) -> Path:
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return Path(path)
