"""Run on 8 simulated CPU devices by tests/test_sharding.py (the flag must precede importing JAX).

    python tests/sharding_worker.py MODEL_DIR OUT.json MESH [MESH ...]    (e.g. data=2,fsdp=2,tensor=2)

For each mesh: load the model onto the mesh and compare with one device:
params, logits, extracted means, a short fit and greedy generation with the fitted vector.
Writes the largest differences (and a few param shardings) as JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import tvjax  # noqa: E402
from tvjax.batching import encode  # noqa: E402
from tvjax.sharding import Placement, make_mesh  # noqa: E402

WORDS = ["apple", "river", "stone", "cloud", "green", "house", "light", "music", "ocean", "paper", "quiet", "sharp",
         "table", "water", "young", "zebra", "bread", "chair", "dream", "earth", "flame", "grape", "heart", "ivory"]
FIT = tvjax.FitConfig(steps=4, eval_every=2, batch_size=8, learning_rate=0.2)
SHOWN = {"q": ("layers", "attn", "q", "kernel"), "k": ("layers", "attn", "k", "kernel"),
         "down": ("layers", "mlp", "down", "kernel"), "embed": ("embed", "embedding")}


@functools.partial(jax.jit, static_argnames="config")
def _logits(params, tokens, mask, blend, *, config):
    return tvjax.forward(params, tokens, config=config, mask=mask, blend=blend).logits


def run(model, task) -> dict:
    """Everything the tests compare, as numpy."""
    config, params, tokenizer = model
    tokens, mask = encode(tokenizer, [f"Q: {w}\nA:" for w in WORDS[:8]])
    rng = np.random.default_rng(0)
    blend = tvjax.HeadBlend(jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads)), jnp.float32),
                            jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads, config.head_dim)),
                                        jnp.float32))
    place = Placement.of(params)
    logits = place.run(_logits, (params, tokens, mask, blend),
                       (place.params(params), place.batch(tokens), place.batch(mask), place.interventions(blend)),
                       place.replicated, config=config)
    mu = tvjax.extract_means(model, task, n_prompts=8, shots=3)
    result = tvjax.fit(model, task, mu, FIT)
    new_tokens = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=4, blend=result.blend)
    return {"params": jax.tree.map(np.asarray, params), "logits": np.asarray(logits), "mu": mu,
            "theta": np.asarray(result.blend.theta), "losses": [h["valid_loss"] for h in result.history],
            "tokens": new_tokens}


def main(model_dir: str, out: str, *meshes: str) -> None:
    task = tvjax.Task.from_pairs("upper", [(w, w.upper()) for w in WORDS], seed=0)
    reference = run(tvjax.load(model_dir), task)
    report = {"devices": jax.device_count()}
    for spec in meshes:
        mesh = make_mesh(spec)
        model = tvjax.load(model_dir, mesh=mesh)
        shardings = {name: str(functools.reduce(lambda t, k: t[k], path, model.params).sharding.spec)
                     for name, path in SHOWN.items()}
        got = run(model, task)
        params_diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                                       got["params"], reference["params"])))
        report[spec] = {
            "shardings": shardings,
            "params": params_diff,
            "logits": float(np.abs(got["logits"] - reference["logits"]).max()),
            "logit_scale": float(np.abs(reference["logits"]).max()),
            "mu": float(np.abs(got["mu"] - reference["mu"]).max()),
            "theta": float(np.abs(got["theta"] - reference["theta"]).max()),
            "losses": float(np.abs(np.subtract(got["losses"], reference["losses"])).max()),
            "tokens": int((got["tokens"] != reference["tokens"]).sum()),
        }
    with open(out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
