"""A worked example, top to bottom: fit a task vector, see where it lives, look at what its
top heads attend to, and apply the same vector in PyTorch.

    python scripts/worked_example.py [--task antonym] [--steps 100] [--n-prompts 50] [--out results/example]

Writes `<out>/<task>.safetensors`, `<out>/<task>_soft_weights.png` (the weight of every head)
and `<out>/<task>_top_heads_pattern.png` (where the top heads look from the last token).
"""

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import tvjax
from tvjax.batching import encode
from tvjax.generation import generate_text
from tvjax.plot import head_heatmap


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="antonym")
    parser.add_argument("--steps", type=int, default=tvjax.FitConfig.steps)
    parser.add_argument("--n-prompts", type=int, default=50)
    parser.add_argument("--out", default="results/example")
    args = parser.parse_args(argv)
    out = Path(args.out)

    # 1. Fit: the heads' means over 10-shot prompts, then one blend weight per head.
    model = tvjax.load()
    tv = tvjax.TaskVectorExtractor(model, args.task, n_prompts=args.n_prompts,
                                   fit_config=tvjax.FitConfig(steps=args.steps))
    tv.fit()
    path = tv.save(out / f"{args.task}.safetensors")
    scores = tv.evaluate(("zero_shot", "task_vector"))
    print(f"saved {path}; test split: {scores}")

    # 2. Where it lives: sigmoid(theta), one weight per head, as a layers x heads map.
    weights = 1 / (1 + np.exp(-np.asarray(tv.blend.theta, np.float64)))  # [L, N]
    print(f"wrote {head_heatmap(weights, out / f'{args.task}_soft_weights.png', f'{args.task}: soft weights')}")
    top = np.argsort(weights, axis=None)[::-1][:4]
    top = [tuple(int(i) for i in np.unravel_index(t, weights.shape)) for t in top]  # (layer, head)
    print("top heads (layer, head, weight):", [(l, h, round(float(weights[l, h]), 3)) for l, h in top])

    # 3. What they attend to: the attention pattern of the last token of a 3-shot prompt.
    pair = tv.task.test[0]
    shots = "".join(tv.template.demonstration(p) for p in tv.task.train[:3])
    prompt = shots + tv.template.query(pair[0])[0]
    tokens, mask = encode(model.tokenizer, [prompt])
    last = jnp.array([tokens.shape[1] - 1])
    _, cache = tvjax.run_with_cache(model, tokens, ["pattern"], mask=mask, capture_at=last)
    pattern = np.asarray(cache["pattern"][0])  # [L, N, S]: every head's attention from the last token
    real = np.asarray(mask[0])  # the prompt without its left padding
    rows = np.stack([pattern[l, h][real] for l, h in top])  # [4, S]
    words = [model.tokenizer.decode([int(t)]) for t in tokens[0][real]]
    for (l, h), row in zip(top, rows):
        print(f"  head ({l}, {h}) attends most to {words[int(row.argmax())]!r} ({row.max():.2f})")
    print(f"wrote {pattern_plot(rows, words, top, out / f'{args.task}_top_heads_pattern.png')}")

    # 4. The same vector in PyTorch, on the same model (transformers loads the converted checkpoint).
    import torch
    from transformers import AutoModelForCausalLM

    from tvjax.convert.default import default_model_dir
    from tvjax.torch_port import apply_intervention

    hf = AutoModelForCausalLM.from_pretrained(str(default_model_dir()), dtype=torch.float32).eval()
    query = tv.template.query(pair[0])[0] + tv.lead()
    ids = torch.as_tensor([model.tokenizer(query)["input_ids"]])
    with apply_intervention(hf, path):
        new = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    answer = model.tokenizer.decode(new[0, ids.shape[1]:], skip_special_tokens=True)
    ours = generate_text(model, [query], 5, tv.blend)[0]
    print(f"{pair[0]!r} -> PyTorch {answer!r}, tvjax {ours!r} (target {pair[1]!r})")
    return {"file": path, "scores": scores, "top_heads": top, "pytorch": answer, "tvjax": ours}


def pattern_plot(rows: np.ndarray, words: list[str], heads: list[tuple[int, int]], path: Path) -> Path:
    """`rows` `[heads, S]`: each head's attention over the prompt's tokens, one row per head."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2 + 0.28 * len(words), 1.2 + 0.4 * len(heads)))
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(words)), [repr(w)[1:-1] for w in words], rotation=90, fontsize=7)
    ax.set_yticks(range(len(heads)), [f"L{l} H{h}" for l, h in heads])
    ax.set_title("attention from the last token", fontsize=9)
    fig.colorbar(image, ax=ax)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


if __name__ == "__main__":
    main()
