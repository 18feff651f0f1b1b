"""Intervention pytrees and the pure functions that apply them inside the model.

An intervention is data: it travels through `jax.jit`, `jax.grad`, `jax.vmap`,
shardings, Optax and Orbax like any other pytree. `None` means no intervention and
compiles to the plain model. Every leaf carries a leading `L` axis, so the scan over
layers hands each layer its own slice.

The protocol (`Intervention`) is open: any pytree with a `site`, `check(config)`,
`apply(x, layer, edit_mask)` and (optionally) `axes()` works in `tvjax.forward`, under
`jit`, `grad` and `vmap` and on a mesh. The built-in ones are `HeadBlend` (soft and hard
head replacement), `ResidualEdit` (function vectors, layer patching) and `Edit` (your
function on a named site); `scaled(intervention, scale)` sets the strength of any of them.

Sites: the named places, in every layer, where interventions act and `forward` captures,
in the order a layer computes them (TransformerLens hook names in brackets are accepted too):

  resid_pre   `[B, T, D]`     the residual stream entering the layer      (hook_resid_pre)
  q           `[B, T, N, H]`  queries, before rotary embeddings           (attn.hook_q)
  k, v        `[B, T, K, H]`  keys (before rotary) and values, per kv head (attn.hook_k, attn.hook_v)
  pattern     `[B, T, N, S]`  attention probabilities of each query       (attn.hook_pattern)
  heads       `[B, T, N, H]`  each head's output, before the output projection (attn.hook_z)
  attn        `[B, T, D]`     the attention block's output                (hook_attn_out)
  resid_mid   `[B, T, D]`     resid_pre + attn; the MLP's input stream    (hook_resid_mid)
  mlp_hidden  `[B, T, F]`     the MLP's hidden activations                (mlp.hook_post)
  mlp         `[B, T, D]`     the MLP block's output                      (hook_mlp_out)
  resid       `[B, T, D]`     the residual stream leaving the layer       (hook_resid_post)

In a parallel-residual model (GPT-NeoX) the MLP reads resid_pre, not resid_mid; an edit of
resid_mid then reaches the layer's output but not the MLP. Edited k and v are what the KV
cache keeps.

An intervention edits its site at the edited positions (`edit_mask`, by default each
row's last token) and leaves every other position as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, Protocol, Sequence

import jax
import jax.numpy as jnp

from tvjax.config import ModelConfig
from tvjax.vocabulary import SHIFT_RANGE, Form, Positions, check_positions

SITES = ("resid_pre", "q", "k", "v", "pattern", "heads", "attn", "resid_mid", "mlp_hidden", "mlp", "resid")
HOOK_NAMES = {"hook_resid_pre": "resid_pre", "attn.hook_q": "q", "attn.hook_k": "k", "attn.hook_v": "v",
              "attn.hook_pattern": "pattern", "attn.hook_z": "heads", "hook_attn_out": "attn",
              "hook_resid_mid": "resid_mid", "mlp.hook_post": "mlp_hidden", "hook_mlp_out": "mlp",
              "hook_resid_post": "resid"}  # TransformerLens -> tvjax


def site_of(name: str) -> str:
    """The site a name means: a site itself, or a TransformerLens hook name without the layer."""
    if not name:
        raise ValueError(f"empty site name; sites: {', '.join(SITES)}")
    site = HOOK_NAMES.get(name, name)
    if site not in SITES:
        raise ValueError(f"unknown site {name!r}; sites: {', '.join(SITES)} (or TransformerLens names: "
                         f"{', '.join(HOOK_NAMES)})")
    return site


def parse_name(name: str) -> tuple[str, int | None]:
    """`(site, layer)` of a site name (`layer` None: every layer) or a TransformerLens name with
    its layer, `blocks.{l}.attn.hook_z` -> `('heads', l)`."""
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit():
        return site_of(parts[2]), int(parts[1])
    return site_of(name), None


def check_site(site) -> None:
    """Raise a ValueError naming the known sites when `site` is not one of them."""
    site_of(site)


class Intervention(Protocol):
    """What `tvjax.forward(..., intervention=...)` accepts: any pytree with these members.

    Attributes:
      site: where it acts, one of `SITES` (a class attribute, not a pytree leaf).
    Methods:
      check(config): raise a ValueError, naming both shapes, when it does not fit the
        `ModelConfig` (called before tracing, on the whole intervention).
      apply(x, layer, edit_mask): the site's value `x` `[B, T, ...]` edited by one layer's
        slice of the intervention (every leaf indexed along its leading `L` axis); `layer`
        is the layer index (int32 scalar), `edit_mask` `[B, T]` bool the edited positions,
        which must be the only ones that change.
      axes() (optional): how its leaves shard on a mesh: a pytree prefix of it whose
        leaves are dimension letters (`'LNH'`, see `tvjax.sharding.LETTERS`) or None
        (replicated). Without it, every leaf is replicated.
    """

    site: str

    def check(self, config: ModelConfig) -> None: ...

    def apply(self, x: jax.Array, layer: jax.Array, edit_mask: jax.Array) -> jax.Array: ...


def is_intervention(x) -> bool:
    """Whether `x` implements the `Intervention` protocol (has `site`, `check` and `apply`)."""
    return isinstance(getattr(x, "site", None), str) and callable(getattr(x, "check", None)) and \
        callable(getattr(x, "apply", None))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["theta", "mu", "theta_answer", "base"],
                   meta_fields=["positions", "per_row"])
@dataclasses.dataclass(frozen=True)
class HeadBlend:
    """Soft task vector: blend each head's output with its task mean.

    At edited positions every head output `o` becomes `o + sigmoid(theta) * (mu - o)`.
    `theta = +inf` replaces a head by its mean exactly, `-inf` leaves it exactly alone.

    The blend is its own state: how a head moves and where it acts are its fields.
    With `base` (the shift form, `FitConfig(form="shift")`), `o` keeps what it carries about
    the query and moves by the task's difference of means instead:
    `o + SHIFT_RANGE * sigmoid(theta) * (mu - base)`, `base` the head's mean on zero-shot prompts.
    `positions` (see `tvjax.vocabulary`): 'last' edits the last prompt token, 'answer' also
    every answer token, 'split' (exactly when it has `theta_answer`) as 'answer', the first
    edited position of each row (the last prompt token) with `theta` and every later one (the
    answer tokens) with `theta_answer`; `answer()` is the blend a generated token gets.

    Layouts: one vector, theta `[L, N]`, mu `[L, N, H]`; one vector per row, theta `[L, B, N]`,
    mu `[L, B, N, H]` (`rows`), which `forward` applies row by row; many tasks' vectors with a
    leading task axis, theta `[A, L, N]`, mu `[A, L, N, H]` (`stack`), which hold many tasks
    and go to `forward` through `rows`.

    Attributes:
      theta: `[L, N]` blend logits (sigmoid(theta) is the weight on the mean).
      mu: `[L, N, H]` per-head mean outputs (before the output projection).
      theta_answer: `[L, N]` blend logits at the answer tokens, or None (`theta` everywhere).
      base: `[L, N, H]` zero-shot head means (the shift form), or None (the blend form).
      positions: where it acts; None: 'split' with `theta_answer`, else 'last' (static).
      per_row: whether it holds one vector per row, theta `[L, B, N]` (static; made by `rows`).
    """

    theta: jax.Array
    mu: jax.Array
    theta_answer: jax.Array | None = None
    base: jax.Array | None = None
    positions: Positions | None = None
    per_row: bool = False
    site: ClassVar[str] = "heads"

    def __post_init__(self):
        if self.positions is None:
            object.__setattr__(self, "positions", "split" if self.theta_answer is not None else "last")

    @property
    def form(self) -> Form:
        """'shift' with zero-shot means `base`, else 'blend'."""
        return "blend" if self.base is None else "shift"

    def replace(self, **changes) -> "HeadBlend":
        return dataclasses.replace(self, **changes)

    @classmethod
    def zeros(cls, config: ModelConfig, init: float = 0.0) -> "HeadBlend":
        """A blend with every logit at `init` and zero means, shaped for `config`."""
        L, N, H = config.n_layers, config.n_heads, config.head_dim
        return cls(jnp.full((L, N), init, jnp.float32), jnp.zeros((L, N, H), jnp.float32))

    @classmethod
    def hard(cls, heads: jax.Array, mu: jax.Array) -> "HeadBlend":
        """Hard replacement: heads where `heads` (`[L, N]` bool) is set become their means `mu` `[L, N, H]`."""
        return cls(jnp.where(jnp.asarray(heads, bool), jnp.inf, -jnp.inf), jnp.asarray(mu, jnp.float32))

    @classmethod
    def stack(cls, blends: Sequence["HeadBlend"]) -> "HeadBlend":
        """`A` blends of one form and positions as one with a leading task axis (float32)."""
        if len({(b.form, b.positions) for b in blends}) > 1:
            raise ValueError("blends stacked together need one form and one positions: got "
                             + ", ".join(sorted({f"{b.form}/{b.positions}" for b in blends})))
        return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]), *blends)

    def task(self, a: int) -> "HeadBlend":
        """Task `a`'s blend of a stacked one."""
        return jax.tree.map(lambda x: x[a], self)

    def rows(self, task: jax.Array) -> "HeadBlend":
        """One vector per row from a stacked blend: row `b` takes task `task[b]`'s (`task`: `[B]` int);
        theta `[A, L, N]` -> `[L, B, N]`, mu `[A, L, N, H]` -> `[L, B, N, H]`."""
        return jax.tree.map(lambda x: jnp.swapaxes(jnp.asarray(x)[task], 0, 1), self).replace(per_row=True)

    def logits(self) -> jax.Array:
        """theta `[..., L, N]`, or `[..., 2, L, N]` stacked with `theta_answer`."""
        return self.theta if self.theta_answer is None else jnp.stack([self.theta, self.theta_answer], axis=-3)

    def fitting(self, logits: jax.Array) -> "HeadBlend":
        """This blend with `logits` as the ones a fit trains: `theta_answer` of a split blend (its `theta`
        frozen), else `theta`."""
        return self.replace(**{"theta" if self.theta_answer is None else "theta_answer": logits})

    def check(self, config: ModelConfig) -> None:
        check_blend(config, self)

    def axes(self) -> "HeadBlend":
        """One vector: theta replicated (every process holds the fitted weights), mu and base split over
        heads. One per row: split over rows like the batch, mu over heads too. Many tasks': theta
        replicated, mu and base split over tasks and heads."""
        if self.per_row:
            return HeadBlend("LBN", "LBNH", "LBN", "LBNH", self.positions, True)
        if jnp.ndim(self.mu) == 4:
            return HeadBlend(None, "ALNH", None, "ALNH", self.positions)
        return HeadBlend(None, "LNH", None, "LNH", self.positions)

    def answer(self) -> "HeadBlend":
        """The blend at generated answer tokens: `theta_answer`'s if it has one, else itself."""
        return self if self.theta_answer is None else self.replace(theta=self.theta_answer, theta_answer=None,
                                                                   positions="answer")

    def apply(self, heads: jax.Array, layer: jax.Array, edit_mask: jax.Array) -> jax.Array:
        """One layer's blend (`self` is that layer's slice) on `heads` `[B, T, N, H]`."""
        return blend_heads(heads, self.theta, self.mu, edit_mask, self.theta_answer, self.base)


def check_blend(config: ModelConfig, blend: HeadBlend) -> None:
    """Raise a ValueError naming both shapes when `blend` does not fit `config` (one vector, or one per row)."""
    L, N, H = config.n_layers, config.n_heads, config.head_dim
    check_positions(blend.positions)
    if (blend.positions == "split") != (blend.theta_answer is not None):
        raise ValueError(f"HeadBlend with positions {blend.positions!r} " +
                         ("needs theta_answer (the logits at the answer tokens)" if blend.theta_answer is None else
                          "has theta_answer: only positions 'split' has answer-token logits"))
    B = jnp.shape(blend.theta)[1:2] if blend.per_row else ()  # one vector per row
    want = {"theta": (L, *B, N), "mu": (L, *B, N, H)} | \
        ({} if blend.theta_answer is None else {"theta_answer": (L, *B, N)}) | \
        ({} if blend.base is None else {"base": (L, *B, N, H)})
    got = {name: tuple(jnp.shape(getattr(blend, name))) for name in want}
    if got != want:
        raise ValueError(
            f"HeadBlend does not fit this model: got {', '.join(f'{k} {v}' for k, v in got.items())}; "
            f"the model ({config.family}, L={L} layers, N={N} heads, H={H} head dim) needs "
            f"{', '.join(f'{k} {v}' for k, v in want.items())}"
        )


def blend_heads(heads: jax.Array, theta: jax.Array, mu: jax.Array, edit_mask: jax.Array,
                theta_answer: jax.Array | None = None, base: jax.Array | None = None) -> jax.Array:
    """Apply one layer's soft task vector to its head outputs.

    Args:
      heads: `[B, T, N, H]` head outputs before the output projection.
      theta: `[N]` blend logits for this layer (or `[B, N]`, one vector per row).
      mu: `[N, H]` mean head outputs for this layer (or `[B, N, H]`).
      edit_mask: `[B, T]` bool, positions to edit.
      theta_answer: like `theta`, the logits at each row's edited positions after its first
        one (None: `theta` there too).
      base: like `mu`, the zero-shot means of the shift form (None: the blend form).
    Returns:
      `[B, T, N, H]` in `heads.dtype`: `o + sigmoid(theta) * (mu - o)` (blend) or
      `o + SHIFT_RANGE * sigmoid(theta) * (mu - base)` (shift), computed in float32.
    """
    weight = jax.nn.sigmoid(theta.astype(jnp.float32))[..., None, :, None]  # [1, N, 1] or [B, 1, N, 1]
    if theta_answer is not None:
        first = (jnp.cumsum(edit_mask, axis=1) == 1)[:, :, None, None]  # [B, T, 1, 1]; masked below
        weight = jnp.where(first, weight, jax.nn.sigmoid(theta_answer.astype(jnp.float32))[..., None, :, None])
    weight = weight * edit_mask[:, :, None, None].astype(jnp.float32)  # [B, T, N, 1]
    h32 = heads.astype(jnp.float32)
    mu32 = mu.astype(jnp.float32)[..., None, :, :]  # [1, N, H] or [B, 1, N, H]
    if base is None:
        return (h32 + weight * (mu32 - h32)).astype(heads.dtype)
    return (h32 + SHIFT_RANGE * weight * (mu32 - base.astype(jnp.float32)[..., None, :, :])).astype(heads.dtype)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["add", "target", "weight"],
                   meta_fields=["positions"])
@dataclasses.dataclass(frozen=True)
class ResidualEdit:
    """Residual-stream edit: at edited positions the output `x` of layer `l` becomes

        (1 - weight[l]) * x + weight[l] * target[l] + add[l]

    (computed in float32), so `weight = 1` patches a state in exactly (ICL layer patching,
    Hendel et al. 2023), `add` adds a vector (function vectors, Todd et al. 2023), and a
    layer with `weight = 0`, `add = 0` is left exactly as it was.

    Attributes:
      add: `[L, D]` vectors added.
      target: `[L, D]` states patched in, with weight `weight`.
      weight: `[L]` weight on `target`.
      positions: where it acts, 'last' (the last prompt token) or 'answer' (also every answer
        token); static.
    """

    add: jax.Array
    target: jax.Array
    weight: jax.Array
    positions: Positions = "last"
    site: ClassVar[str] = "resid"

    @classmethod
    def adding(cls, config: ModelConfig, layer: int, vector) -> "ResidualEdit":
        """Add `vector` `[D]` to the output of `layer` only."""
        return cls.at_layer(config, layer, add=vector)

    @classmethod
    def patching(cls, config: ModelConfig, layer: int, state) -> "ResidualEdit":
        """Replace the output of `layer` by `state` `[D]`, other layers untouched."""
        return cls.at_layer(config, layer, target=state, weight=1.0)

    @classmethod
    def at_layer(cls, config: ModelConfig, layer: int, *, add=None, target=None, weight: float = 0.0) -> "ResidualEdit":
        """An edit of `layer` only: `add`, `target` `[D]` (default zeros) and the scalar `weight`."""
        L, D = config.n_layers, config.d_model
        check_layer(config, layer)
        rows = {}
        for name, vector in (("add", add), ("target", target)):
            vector = jnp.zeros((D,), jnp.float32) if vector is None else jnp.asarray(vector, jnp.float32)
            if vector.shape != (D,):
                raise ValueError(f"ResidualEdit {name} must be [D] = ({D},) for this model, got {vector.shape}")
            rows[name] = jnp.zeros((L, D), jnp.float32).at[layer].set(vector)
        return cls(rows["add"], rows["target"], jnp.zeros((L,), jnp.float32).at[layer].set(weight))

    def check(self, config: ModelConfig) -> None:
        L, D = config.n_layers, config.d_model
        check_positions(self.positions, ("last", "answer"))
        got = tuple(tuple(jnp.shape(a)) for a in (self.add, self.target, self.weight))
        if got != ((L, D), (L, D), (L,)):
            raise ValueError(f"ResidualEdit does not fit this model: got add {got[0]}, target {got[1]}, weight "
                             f"{got[2]}; the model (L={L} layers, D={D}) needs add ({L}, {D}), target ({L}, {D}), "
                             f"weight ({L},)")

    def apply(self, x: jax.Array, layer: jax.Array, edit_mask: jax.Array) -> jax.Array:
        """One layer's edit (`self` is that layer's slice) on `x` `[B, T, D]`."""
        x32 = x.astype(jnp.float32)
        w = self.weight.astype(jnp.float32)
        edited = (1 - w) * x32 + w * self.target.astype(jnp.float32) + self.add.astype(jnp.float32)
        return jnp.where(edit_mask[:, :, None], edited, x32).astype(x.dtype)


def check_layer(config: ModelConfig, layer: int) -> None:
    """Raise a ValueError when `layer` is not in `[0, L)`."""
    if not 0 <= int(layer) < config.n_layers:
        raise ValueError(f"layer {layer} out of range: the model has {config.n_layers} layers (0 to "
                         f"{config.n_layers - 1})")


@functools.partial(jax.tree_util.register_dataclass, data_fields=["data"], meta_fields=["site", "fn"])
@dataclasses.dataclass(frozen=True)
class Edit:
    """Edit a named site with your own function, inside the jitted forward.

    At edited positions the site's value `x` (`[B, T, ...]`, see `SITES`; a TransformerLens
    hook name without the layer, such as `attn.hook_z`, names its site) of every layer
    becomes `fn(x, layer, data)` (its other positions are kept), where `layer` is the
    layer index (a traced int32 scalar) and `data` that layer's slice of `data` (a
    pytree whose leaves have a leading `L` axis, or None). `site` and `fn` are static:
    define `fn` once (not as a fresh lambda per call) so that compiled code is reused.

    Example: zero head 3 of layer 5 at the last token,
        Edit("heads", lambda x, layer, _: jnp.where(layer == 5, x.at[..., 3, :].set(0), x))
    """

    site: str
    fn: Callable
    data: Any = None

    def __post_init__(self):
        if self.site in HOOK_NAMES:  # a TransformerLens name: keep the site it means
            object.__setattr__(self, "site", HOOK_NAMES[self.site])

    def check(self, config: ModelConfig) -> None:
        check_site(self.site)
        for leaf in jax.tree.leaves(self.data):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != config.n_layers:
                raise ValueError(f"Edit data leaves need a leading L = {config.n_layers} axis, got shape "
                                 f"{jnp.shape(leaf)}")

    def apply(self, x: jax.Array, layer: jax.Array, edit_mask: jax.Array) -> jax.Array:
        y = self.fn(x, layer, self.data)
        return jnp.where(edit_mask.reshape(edit_mask.shape + (1,) * (x.ndim - 2)), y, x)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["intervention"], meta_fields=["scale"])
@dataclasses.dataclass(frozen=True)
class Scaled:
    """Any intervention at a strength: where `intervention` would turn a site's value `x` into `y`,
    this one gives `x + scale * (y - x)` (in float32), and every other position stays as it was.

    So a head blend moves each head `scale` times as far (`o + scale * sigmoid(theta) * (mu - o)`;
    the shift form `o + scale * 2 * sigmoid(theta) * (mu - base)`, `theta_answer` at the answer
    tokens alike), a residual edit changes `x` by `scale * (weight * (target - x) + add)`, and an
    `Edit` gives `x + scale * (fn(x) - x)`. Scale 0 leaves the model as it is, 2 doubles the edit,
    a negative scale pushes the other way. Made by `scaled`; a file holds the unscaled
    intervention (save `.intervention`).

    Attributes:
      intervention: the intervention scaled (its leaves are this one's).
      scale: the strength, static: each value compiles once, as `positions` does.
    """

    intervention: Any
    scale: float

    @property
    def site(self) -> str:
        return self.intervention.site

    @property
    def positions(self) -> Positions:
        return getattr(self.intervention, "positions", "last")

    def check(self, config: ModelConfig) -> None:
        self.intervention.check(config)

    def apply(self, x: jax.Array, layer: jax.Array, edit_mask: jax.Array) -> jax.Array:
        """One layer's edit (`self` is that layer's slice) on the site's value `x` `[B, T, ...]`, scaled."""
        x32 = x.astype(jnp.float32)
        y = self.intervention.apply(x, layer, edit_mask).astype(jnp.float32)
        return (x32 + self.scale * (y - x32)).astype(x.dtype)

    def axes(self) -> "Scaled":
        axes = getattr(self.intervention, "axes", None)
        return Scaled(axes() if callable(axes) else None, self.scale)

    def answer(self) -> "Scaled":
        """What acts at generated answer tokens, at this strength (see `at_answer`)."""
        answer = getattr(self.intervention, "answer", None)
        return Scaled(answer() if callable(answer) else self.intervention, self.scale)


def scaled(intervention, scale: float):
    """`intervention` (one, a sequence of them: each, or None) at strength `scale` (see `Scaled`);
    scale 1 returns it as it is."""
    if not math.isfinite(scale):
        raise ValueError(f"scale {scale}: an intervention's strength is a finite number")
    if scale == 1 or intervention is None:
        return intervention
    each = tuple(Scaled(i, float(scale)) for i in as_interventions(intervention))
    return each[0] if is_intervention(intervention) else each


def as_interventions(intervention) -> tuple:
    """`None`, one intervention or a sequence of them -> a tuple of interventions (applied in order)."""
    if intervention is None:
        return ()
    if is_intervention(intervention):
        return (intervention,)
    if isinstance(intervention, (tuple, list)) and all(map(is_intervention, intervention)):
        return tuple(intervention)
    raise ValueError(f"expected an intervention (a pytree with site, check and apply, e.g. HeadBlend, "
                     f"ResidualEdit or Edit), a sequence of them or None, got {type(intervention).__name__}")


def at_answer(intervention):
    """What acts at generated answer tokens: of each intervention whose `positions` is 'answer' or
    'split', its `answer()` where it has one (a split `HeadBlend`'s answer weights), else itself;
    None when none acts there (an intervention without `positions` acts at the last prompt token)."""
    acting = tuple(i.answer() if callable(getattr(i, "answer", None)) else i for i in as_interventions(intervention)
                   if getattr(i, "positions", "last") != "last")
    return None if not acting else acting[0] if is_intervention(intervention) else acting


def apply_at(site: str, x: jax.Array, interventions: tuple, layer, edit_mask) -> jax.Array:
    """Apply this layer's slices of the `interventions` that act on `site` to its value `x`, in order."""
    for intervention in interventions:
        if intervention.site == site:
            x = intervention.apply(x, layer, edit_mask)
    return x
