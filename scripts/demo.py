"""Demo on the embedded default model (SmolLM2-135M-Instruct).

Loads the model (converting the GGUF into the tvjax cache on first use), then shows
in-context learning: a few-shot antonym prompt is answered, the zero-shot one is not.
That gap is what a task vector closes.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import tvjax
from tvjax.batching import encode
from tvjax.generate import generate_text

SHOTS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("happy", "sad"), ("light", "dark")]
QUERY = "fast"


def prompt(shots, query: str) -> str:
    return "".join(f"Q: {x}\nA: {y}\n\n" for x, y in shots) + f"Q: {query}\nA:"


def main() -> None:
    start = time.perf_counter()
    model = tvjax.load()
    config, params, tokenizer = model
    print(f"loaded {config.family} model: {config.n_layers} layers x {config.n_heads} heads "
          f"(head dim {config.head_dim}) in {time.perf_counter() - start:.1f} s")

    prompts = {"5-shot": prompt(SHOTS, QUERY), "zero-shot": prompt([], QUERY)}
    tokens, mask = encode(tokenizer, list(prompts.values()))
    start = time.perf_counter()
    logits = tvjax.forward(params, jnp.asarray(tokens), config=config, mask=jnp.asarray(mask),
                           logits_at=jnp.full((len(prompts),), tokens.shape[1] - 1)).logits
    probs = jax.nn.softmax(logits)
    top_p, top_i = jax.lax.top_k(probs, 5)
    completions = generate_text(model, list(prompts.values()), max_new_tokens=12)
    elapsed = time.perf_counter() - start
    for (name, text), completion, p, i in zip(prompts.items(), completions, top_p, top_i):
        print(f"\n== {name} prompt ==\n{text}", end="")
        first_line = (completion.strip().splitlines() or [""])[0]
        print(f" {first_line}    <- generated")
        print("next-token predictions: " + ", ".join(f"{tokenizer.decode([int(t)])!r} {float(q):.2f}"
                                                     for t, q in zip(i, p)))
    print(f"\nforward + greedy generation (compile included): {elapsed:.1f} s")


if __name__ == "__main__":
    main()
