"""A soft task vector end to end on the Python API: load -> task -> means -> fit -> evaluate -> save.

    python scripts/train.py [--task antonym] [--model NAME_OR_PATH] [--out results]

The counterpart of the PyTorch task-vectors package's `experiments/train.py`.
"""

import argparse
from pathlib import Path

import tvjax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="antonym", help="built-in task name or a task file / directory")
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()

    model = tvjax.load(args.model)  # (config, params, tokenizer)
    task = tvjax.load_task(args.task)  # seeded train / valid / test splits
    print(f"{task.name}: {len(task.train)} train, {len(task.valid)} valid, {len(task.test)} test pairs")

    # 1. Means: every head's output at the last token of 50 ten-shot ICL prompts -> mu [L, N, H].
    mu = tvjax.extract_means(model, task, n_prompts=50, shots=10)

    # 2. Fit theta [L, N] with Adam on zero-shot train prompts; keep the best-validation theta.
    result = tvjax.fit(model, task, mu, tvjax.FitConfig(steps=100, learning_rate=0.3))
    print(f"best validation loss {result.best_valid_loss:.3f} at step {result.best_step}")

    # 3. Evaluate on the test split: zero-shot, 10-shot ICL, zero-shot + soft task vector.
    methods = (("zero-shot", {}), ("10-shot ICL", {"shots": 10}), ("soft task vector", {"intervention": result.blend}))
    for name, kwargs in methods:
        scores = tvjax.evaluate(model, task, **kwargs)
        print(f"{name:>17}: first token {scores.first_token:.0%}, exact match {scores.exact_match:.0%}")

    # 4. Save: a small safetensors file with JSON metadata, checked against the model on load.
    path = tvjax.save_task_vector(Path(args.out) / f"{task.name}.safetensors", result.blend.theta, mu,
                                  model.config, task=task.name)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
