"""tvjax interventions on a Hugging Face transformers PyTorch model (no JAX needed).

Hooks in the style of PyTorch hook libraries: an `Intervention(targets, hook)` context
manager registers a `Hook` on every target module (`register_forward_hook`) and calls it
with the target's name; `SaveInputsHook` records what the targets receive;
`TaskVectorHook` applies a head blend (the soft task vector, a hard head set) on each
layer's attention output projection, whose input is the per-head site (`[B, T, N * H]`,
head-major); `ResidualHook` applies a residual edit (a function vector, a layer patch) on
each decoder layer's output, the residual stream.

    with apply_intervention(hf_model, "antonym.safetensors"):   # any kind of file
        out = hf_model.generate(ids, max_new_tokens=8, do_sample=False)

`apply_intervention(..., scale=s)` applies it at strength `s`, as `tvjax.scaled` does in JAX: every
output `y` a hook puts in place of a module's own `x` becomes `x + s * (y - x)`.

At the last prompt token every head output `o` becomes `o + weight * (mu - o)`,
`weight = sigmoid(theta)` (the shift form, a file with `base`: `o + weight * (mu - base)`,
`weight = 2 * sigmoid(theta)`), computed in float32 as in `tvjax.interventions.blend_heads`; a
residual edit makes layer `l`'s output `x` into `(1 - weight[l]) * x + weight[l] *
target[l] + add[l]`, as `tvjax.ResidualEdit` does.
As in `tvjax.generation`, only the prompt (the forward call that starts from an empty KV
cache) is edited, never the generated tokens. Dimension letters: B batch, T tokens,
L layers, N heads, H head dim, D model width.

`from_torch` goes the other way: blend weights and means held as PyTorch tensors become
a tvjax `TaskVector`.
"""

from __future__ import annotations

import functools
import os

import numpy as np

try:
    import torch
except ModuleNotFoundError as e:
    if e.name != "torch":
        raise
    raise ImportError(f"tvjax.torch_port needs PyTorch ({e}): pip install 'tvjax[torch]'") from e

from tvjax.config import ModelConfig
from tvjax.convert.architectures import HF_ATTENTION_OUTPUTS, MODEL_TYPES, SUPPORTED, config_from_hf
from tvjax.taskvector import KINDS, InterventionFile, TaskVector, TaskVectorError, load_intervention, resolve
from tvjax.vocabulary import SHIFT_RANGE, blend_weights, check_positions
from tvjax.vocabulary import model_shape as _shape

# the KV cache keyword of Hugging Face forwards (renamed from `past_key_values` in transformers 5)
CACHE_KWARGS = ("cache", "past_key_values")


class Hook:
    """What an `Intervention` runs on its targets: subclass and implement `__call__`.

    `__call__(module, inputs, output, name)` runs after every forward of each target, as
    a `register_forward_hook` hook would, with the target's `name`; returning a value
    replaces the module's output, returning None keeps it. A hook that overrides `attach`
    passes `scale` on to this one.
    """

    def __call__(self, module: torch.nn.Module, inputs: tuple, output, name: str):
        raise NotImplementedError

    def attach(self, targets: dict[str, torch.nn.Module], scale: float = 1.0) -> list:
        """Register on every target; returns the handles that `Intervention` removes on exit.

        With `scale` `s`, an output `y` returned in place of a module's own `x` becomes `x + s * (y - x)`
        (in float32): the edit at strength `s` where the module's output is the edited site or affine
        in it (the built-in hooks: a decoder layer's output, an output projection recomputed).
        """
        hook = self if scale == 1 else functools.partial(_scaled, self, scale)
        return [module.register_forward_hook(functools.partial(hook, name=name)) for name, module in targets.items()]


def _scaled(hook: Hook, scale: float, module, inputs, output, name):
    """What `hook` returns for `output`, at strength `scale` (see `Hook.attach`)."""
    new = hook(module, inputs, output, name)
    return None if new is None else _toward(output, new, scale)


def _toward(old, new, scale: float):
    """`old + scale * (new - old)` of a module output: a tensor (in float32), or a tuple of them
    and other values (kept as `new` has them)."""
    if isinstance(new, tuple):
        return tuple(_toward(a, b, scale) for a, b in zip(old, new))
    if not isinstance(new, torch.Tensor) or new is old:
        return new
    return (old.float() + scale * (new.float() - old.float())).to(new.dtype)


class Intervention:
    """Context manager: `hook` runs on `targets` (name -> module) while it is active, its edits at
    strength `scale` (see `Hook.attach`).

    `with Intervention({"moduleA": model.model.layers[0].mlp}, hook) as hook: ...`
    """

    def __init__(self, targets: dict[str, torch.nn.Module], hook: Hook, scale: float = 1.0):
        self.targets, self.hook, self.scale, self.handles = dict(targets), hook, scale, []

    def __enter__(self) -> Hook:
        self.handles = self.hook.attach(self.targets, self.scale)
        return self.hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class SaveInputsHook(Hook):
    """Records every target's first positional input, one tensor per forward call.

    `hook[name]` is the list of inputs target `name` received (detached copies), so
    after a 4-token `generate` (prompt, then 3 cached steps) `len(hook[name]) == 4`.
    """

    def __init__(self):
        self.inputs: dict[str, list[torch.Tensor]] = {}

    def __call__(self, module, inputs, output, name):
        self.inputs.setdefault(name, []).append(inputs[0].detach().clone())

    def __getitem__(self, name: str) -> list[torch.Tensor]:
        return self.inputs.get(name, [])


class PromptHook(Hook):
    """A hook that edits the prompt forward, at one position per row: the call whose KV cache
    (passed by keyword, as `generate` does) starts empty, which a forward pre-hook on `model`
    checks, at the last token or at `at` `[B]`. With `positions` 'answer' or 'split' it also edits
    each later cached step's new token (every generated token). (`generate(..., use_cache=False)`
    reruns the whole sequence each step, and each step's last token would be edited.)
    Subclasses set `self.layer` (target name -> layer index) and implement `edit`.
    """

    def __init__(self, model: torch.nn.Module, at=None, positions: str = "last"):
        self.model = model
        self.at = None if at is None else torch.as_tensor(at, dtype=torch.long)
        self.every_token = check_positions(positions) != "last"
        self.prefill = True

    def attach(self, targets, scale: float = 1.0):
        start = self.model.register_forward_pre_hook(self._start, with_kwargs=True)
        return [start] + super().attach(targets, scale)

    def _start(self, module, args, kwargs) -> None:
        cache = next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)
        self.prefill = cache is None or cache.get_seq_length() == 0

    def edited(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(rows, at)`, each `[B]`: the edited position of each row of `x` `[B, T, ...]`."""
        B, T = x.shape[:2]
        rows = torch.arange(B, device=x.device)
        if self.at is None or not self.prefill:
            return rows, torch.full((B,), T - 1, device=x.device)
        return rows, self.at.to(x.device)

    def __call__(self, module, inputs, output, name):
        if not (self.prefill or self.every_token):
            return None
        return self.edit(module, inputs, output, name)


class TaskVectorHook(PromptHook):
    """A head blend (soft task vector, hard head set) on the attention output projections of `model`.

    Args:
      model: a Hugging Face transformers model of a supported architecture.
      weight: `[L, N]` blend weights (sigmoid of theta), in [0, 1].
      mu: `[L, N, H]` head means.
      at: optional `[B]` position to edit in each row (default: the last token).
      positions: 'last' (the prompt forward only), 'answer' (also every generated token) or
        'split' (as 'answer', with `weight_answer` at the generated tokens).
      weight_answer: `[L, N]` blend weights at the generated tokens (positions 'split').
      base: `[L, N, H]` zero-shot head means: the shift form, `o + weight * (mu - base)`.
    """

    def __init__(self, model: torch.nn.Module, weight, mu, at=None, positions: str = "last", weight_answer=None,
                 base=None):
        super().__init__(model, at, positions)
        shape = model_shape(model.config)
        self.n_heads = shape["n_heads"]
        self.weight = torch.as_tensor(weight, dtype=torch.float32)
        self.weight_answer = self.weight if weight_answer is None else torch.as_tensor(weight_answer,
                                                                                        dtype=torch.float32)
        self.mu = torch.as_tensor(mu, dtype=torch.float32)
        self.base = None if base is None else torch.as_tensor(base, dtype=torch.float32)
        want = (shape["n_layers"], shape["n_heads"], shape["head_dim"])
        base_shape = want if base is None else tuple(self.base.shape)
        if self.weight.shape != want[:2] or self.weight_answer.shape != want[:2] or self.mu.shape != want or \
                base_shape != want:
            got_base, needs_base = ("", "") if base is None else (f", base {base_shape}", f" and base {want}")
            raise TaskVectorError(f"got weight {tuple(self.weight.shape)}, weight_answer "
                                  f"{tuple(self.weight_answer.shape)}, mu {tuple(self.mu.shape)}{got_base}; "
                                  f"model {shape} needs weight and weight_answer {want[:2]}, mu{needs_base} {want}")
        self.layer = {name: l for l, name in enumerate(attention_outputs(model))}

    def edit(self, module, inputs, output, name):
        """Recompute the projection at the edited token from blended heads (`[B, T, D]` out)."""
        x = inputs[0]  # [B, T, N * H]
        B = x.shape[0]
        rows, at = self.edited(x)
        l = self.layer[name]
        o = x[rows, at].reshape(B, self.n_heads, -1).float()  # [B, N, H]
        w = (self.weight if self.prefill else self.weight_answer)[l].to(x.device)[:, None]  # [N, 1]
        origin = o if self.base is None else self.base[l].to(x.device)
        heads = o + w * (self.mu[l].to(x.device) - origin)
        edited = module.forward(heads.to(x.dtype).reshape(B, 1, -1))  # [B, 1, D]
        output = output.clone()
        output[rows, at] = edited[:, 0]
        return output


class ResidualHook(PromptHook):
    """A residual edit (function vector, layer patch) on the decoder layers' outputs of `model`.

    At the edited position layer `l`'s output `x` `[D]` becomes `(1 - weight[l]) * x +
    weight[l] * target[l] + add[l]`, in float32; layers with `weight = 0` and `add = 0` are
    not touched.

    Args:
      model: a Hugging Face transformers model of a supported architecture.
      add: `[L, D]` vectors added.
      target: `[L, D]` states patched in, with weight `weight`.
      weight: `[L]`.
      at: optional `[B]` position to edit in each row (default: the last token).
      positions: 'last' (the prompt forward only) or 'answer' (also every generated token).
    """

    def __init__(self, model: torch.nn.Module, add, target, weight, at=None, positions: str = "last"):
        super().__init__(model, at, positions)
        shape = model_shape(model.config)
        self.add, self.target, self.weight = (torch.as_tensor(a, dtype=torch.float32) for a in (add, target, weight))
        L, D = shape["n_layers"], shape["d_model"]
        got = tuple(tuple(a.shape) for a in (self.add, self.target, self.weight))
        if got != ((L, D), (L, D), (L,)):
            raise TaskVectorError(f"got add, target, weight of shapes {got}; model {shape} needs {(L, D)}, "
                                  f"{(L, D)}, {(L,)}")
        edited = (self.weight != 0) | (self.add != 0).any(-1)
        layers = list(decoder_layers(model).items())
        self.layer = {name: l for l, (name, _) in enumerate(layers) if edited[l]}
        self.targets = {name: module for name, module in layers if name in self.layer}  # the layers it touches

    def edit(self, module, inputs, output, name):
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, D]
        rows, at = self.edited(hidden)
        l = self.layer[name]
        x = hidden[rows, at].float()
        w = self.weight[l].to(x.device)
        new = (1 - w) * x + w * self.target[l].to(x.device) + self.add[l].to(x.device)
        hidden = hidden.clone()
        hidden[rows, at] = new.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def decoder_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each decoder layer (its output is the residual stream), by qualified module name, in order."""
    layers, _ = HF_ATTENTION_OUTPUTS[_model_config(model.config).family]
    names = {module: name for name, module in model.named_modules()}
    return {names[layer]: layer for layer in model.base_model.get_submodule(layers)}


def attention_outputs(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each layer's attention output projection, by qualified module name, in layer order.

    `model`: a Hugging Face model (with or without LM head) of a supported architecture.
    """
    path = HF_ATTENTION_OUTPUTS[_model_config(model.config).family][1]
    return {f"{name}.{path}": layer.get_submodule(path) for name, layer in decoder_layers(model).items()}


def model_shape(config) -> dict:
    """The tvjax model shape (`family`, `n_layers`, `n_heads`, `head_dim`, `d_model`) of a HF config."""
    return _shape(_model_config(config))


def apply_intervention(model: torch.nn.Module, intervention: str | os.PathLike | InterventionFile,
                       scale: float = 1.0) -> Intervention:
    """An `Intervention` applying an intervention file of any registered kind (or a loaded one) to
    `model`, with the kind's own hook: a head blend on the attention output projections, a residual
    edit on the decoder layers, a kind of your own as its `Kind.torch_hook` says; at strength `scale`
    (as `tvjax.scaled`: 0 leaves the model as it is, 2 doubles the edit).

    Raises `TaskVectorError` naming both models if it was made for another model.
    """
    loaded = intervention if isinstance(intervention, InterventionFile) else load_intervention(intervention)
    loaded.check(_model_config(model.config), model.config.name_or_path or None)
    hooked = resolve(KINDS[loaded.kind].torch_hook)(model, loaded)
    return Intervention(hooked.targets, hooked.hook, scale)


def head_blend_hook(model: torch.nn.Module, loaded: TaskVector) -> Intervention:
    """The `head_blend` kind's PyTorch form: a `TaskVectorHook` on the attention output projections."""
    weight, weight_answer = (None if theta is None else blend_weights(theta, loaded.base)
                             for theta in (loaded.theta, loaded.theta_answer))
    return Intervention(attention_outputs(model), TaskVectorHook(model, weight, loaded.mu, positions=loaded.positions,
                                                                 weight_answer=weight_answer, base=loaded.base))


def residual_hook(model: torch.nn.Module, loaded: InterventionFile) -> Intervention:
    """The `residual_edit` kind's PyTorch form: a `ResidualHook` on the decoder layers it edits."""
    hook = ResidualHook(model, loaded.add, loaded.target, loaded.weight, positions=loaded.positions)
    return Intervention(hook.targets, hook)


def from_torch(weight, mu, model, weight_answer=None, base=None, **info) -> TaskVector:
    """A tvjax `TaskVector` from PyTorch blend weights and means fitted on `model`.

    Args:
      weight: `[L, N]` per-head blend weights after the sigmoid, in [0, 1]; theta is
        their logit, so 0 and 1 become -inf and +inf (exactly the plain head and exactly
        the mean, as in `blend_heads`).
      mu: `[L, N, H]` or `[L, N, 1, H]` head means.
      model: the Hugging Face model (or its config) they were made for.
      weight_answer: optional `[L, N]` weights at the answer tokens (then positions 'split').
      base: optional zero-shot head means, shaped as `mu`: the shift form, each head moved by
        `weight * (mu - base)`, its weights in [0, SHIFT_RANGE] (theta is the logit of weight / 2).
      info: free-form metadata for the file.
    Returns:
      A `TaskVector`; `.save(path)` writes it, `tvjax.load_task_vector` reads it back.
    """
    shape = model_shape(getattr(model, "config", model))
    L, N, H = shape["n_layers"], shape["n_heads"], shape["head_dim"]
    mu, base = (None if m is None else _means(m, name, shape) for m, name in ((mu, "mu"), (base, "base")))
    scale = 1.0 if base is None else SHIFT_RANGE
    theta, theta_answer = (None if w is None else _logit(w, (L, N), shape, scale) for w in (weight, weight_answer))
    arrays = {"theta": theta, "mu": mu, "theta_answer": theta_answer, "base": base}
    return TaskVector("head_blend", {k: v for k, v in arrays.items() if v is not None}, shape, info,
                      "last" if theta_answer is None else "split")


def _means(mu, name: str, shape: dict) -> np.ndarray:
    """`[L, N, H]` float32 head means from `[L, N, H]` or `[L, N, 1, H]`."""
    L, N, H = shape["n_layers"], shape["n_heads"], shape["head_dim"]
    mu = _numpy(mu)
    if mu.shape == (L, N, 1, H):
        mu = mu[:, :, 0]
    if mu.shape != (L, N, H):
        raise TaskVectorError(f"got {name} {mu.shape}; model {shape} needs {name} {(L, N, H)} or {(L, N, 1, H)}")
    return mu.astype(np.float32)


def _logit(weight, want: tuple[int, int], shape: dict, scale: float = 1.0) -> np.ndarray:
    """theta `[L, N]` float32 of blend weights in [0, scale] (0 and scale become -inf and +inf)."""
    weight = _numpy(weight)
    if weight.shape != want:
        raise TaskVectorError(f"got weight {weight.shape}; model {shape} needs weight {want}")
    if not ((weight >= 0) & (weight <= scale)).all():
        raise TaskVectorError(f"blend weights must lie in [0, {scale:g}] (they are {scale:g} * sigmoid(theta)); "
                              f"got values from {np.nanmin(weight)} to {np.nanmax(weight)}")
    weight = weight / scale
    with np.errstate(divide="ignore"):
        return (np.log(weight) - np.log1p(-weight)).astype(np.float32)


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double()
    return np.asarray(x, np.float64)


def _model_config(config) -> ModelConfig:
    """The tvjax `ModelConfig` of a Hugging Face config, translated as the checkpoint converter does."""
    if config.model_type not in MODEL_TYPES:
        raise TaskVectorError(f"no task-vector port for model_type {config.model_type!r}; supported: {SUPPORTED}")
    return config_from_hf(config.to_dict())
