"""Run on 8 simulated CPU devices by tests/test_sharding.py (the flag must precede importing JAX).

    python tests/sharding_worker.py MODEL_DIR OUT.json MESH [MESH ...]    (e.g. data=2,fsdp=2,tensor=2)

For each mesh: load the model onto the mesh and compare with one device:
params, logits (with a blend, and with an intervention class of the user's own), extracted
means, a short fit, greedy generation with the fitted vector, a short REINFORCE search,
a function vector (indirect effects and the layer sweep), layer patching and two tasks fitted
together (`fit_many`).
Writes the largest differences (and a few param shardings) as JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import functools  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import tvjax  # noqa: E402
from tvjax.batching import encode  # noqa: E402
from tvjax.sharding import axes_of  # noqa: E402
from tvjax.sharding import make_mesh, on_mesh, put  # noqa: E402

WORDS = ["apple", "river", "stone", "cloud", "green", "house", "light", "music", "ocean", "paper", "quiet", "sharp",
         "table", "water", "young", "zebra", "bread", "chair", "dream", "earth", "flame", "grape", "heart", "ivory"]
FIT = tvjax.FitConfig(steps=4, eval_every=2, batch_size=8, learning_rate=0.2)
REINFORCE = tvjax.ReinforceConfig(steps=2, eval_every=1, samples=4, batch_size=4, learning_rate=0.5)
FUNCTION_VECTOR = tvjax.FunctionVectorConfig(k=3, n_prompts=4, shots=2, sweep=True, batch_size=4)


class ScaleAttention(NamedTuple):
    """A user's own intervention: the attention output scaled per layer, `factor` `[L]`."""

    factor: jax.Array
    site = "attn"

    def check(self, config):
        assert self.factor.shape == (config.n_layers,)

    def apply(self, x, layer, edit_mask):
        return jnp.where(edit_mask[..., None], x * self.factor, x)
SHOWN = {"q": ("layers", "attn", "q", "kernel"), "k": ("layers", "attn", "k", "kernel"),
         "down": ("layers", "mlp", "down", "kernel"), "embed": ("embed", "embedding")}


@functools.partial(jax.jit, static_argnames="config")
def _logits(params, tokens, mask, blend, *, config):
    return tvjax.forward(params, tokens, config=config, mask=mask, intervention=blend).logits


def run(model, task) -> dict:
    """Everything the tests compare, as numpy."""
    config, params, tokenizer = model
    tokens, mask = encode(tokenizer, [f"Q: {w}\nA:" for w in WORDS[:8]])
    rng = np.random.default_rng(0)
    blend = tvjax.HeadBlend(jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads)), jnp.float32),
                            jnp.asarray(rng.normal(size=(config.n_layers, config.n_heads, config.head_dim)),
                                        jnp.float32))
    own = ScaleAttention(jnp.linspace(0.5, 1.5, config.n_layers))
    with on_mesh(params):
        logits, own_logits = (_logits(params, *put((tokens, mask), "BT"), put(i, axes_of(i)), config=config)
                              for i in (blend, own))
    mu = tvjax.extract_means(model, task, n_prompts=8, shots=3)
    result = tvjax.fit(model, task, mu, FIT)
    new_tokens = tvjax.generate(params, tokens, config=config, mask=mask, max_new_tokens=4, intervention=result.blend)
    heads = tvjax.select_heads(model, task, mu, REINFORCE)
    fv = tvjax.function_vector_for(model, task, mu, FUNCTION_VECTOR)
    states = tvjax.site_means(model, tvjax.extract.mean_prompts(tokenizer, task, n_prompts=4, shots=2), ("resid",))
    patch = tvjax.layer_patch(model, task, states["resid"])
    lower = tvjax.Task.from_pairs("lower", [(w.upper(), w) for w in WORDS[:12]], seed=0)
    many = tvjax.fit_many(model, [task, lower], [mu, mu], FIT)
    return {"params": jax.tree.map(np.asarray, params), "logits": np.asarray(logits), "mu": mu,
            "own_logits": np.asarray(own_logits), "theta": np.asarray(result.blend.theta),
            "losses": [h["valid_loss"] for h in result.history], "tokens": new_tokens,
            "reinforce": np.asarray(heads.probabilities), "reinforce_losses": [h["valid_loss"] for h in heads.history],
            "effects": fv.effects, "fv_losses": fv.layer_losses, "patch_losses": patch.layer_losses,
            "many_theta": np.stack([r.blend.theta for r in many])}


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
            **{k: float(np.abs(np.subtract(got[k], reference[k])).max())
               for k in ("own_logits", "reinforce", "reinforce_losses", "effects", "fv_losses", "patch_losses",
                         "many_theta")},
        }
    with open(out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
