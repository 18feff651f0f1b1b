"""The Flax decoder: one definition for every supported architecture.

Layers run under `nn.scan` with layer-stacked params (leading `L` axis); the
interventions (`tvjax.interventions`) and the KV cache are scanned alongside them, so
each layer sees its own slice. Dimension letters are listed in `tvjax.config`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from tvjax.attention import attend, attention_mask, einsum_attention
from tvjax.config import ModelConfig
from tvjax.interventions import Intervention, apply_at, as_interventions, parse_name, site_of
from tvjax.rope import apply_rope, inverse_frequencies
from tvjax.sharding import constrain

Params = Any
_INIT = nn.initializers.normal(0.02)
_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class KVCache(NamedTuple):
    """Keys and values of every layer, written left to right.

    Attributes:
      k, v: `[L, B, S, K, H]`.
      mask: `[B, S]` bool, which slots hold real (non-pad) tokens.
      end: int32 scalar, the next slot to write.
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    end: jax.Array

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, length: int) -> "KVCache":
        shape = (config.n_layers, batch, length, config.n_kv_heads, config.head_dim)
        zeros = jnp.zeros(shape, config.jnp_dtype)
        return cls(zeros, zeros, jnp.zeros((batch, length), bool), jnp.zeros((), jnp.int32))


class Output(NamedTuple):
    """What `forward` returns.

    Attributes:
      logits: float32 `[B, T, V]`, or `[B, V]` when `logits_at` was given.
      captured: site name -> its value in every layer (None when nothing was captured):
        `[B, L, ...]` at `capture_at`, else `[B, L, T, ...]` (at `capture_at`: heads and q
        `[B, L, N, H]`, k and v `[B, L, K, H]`, pattern `[B, L, N, S]`, mlp_hidden `[B, L, F]`,
        the others `[B, L, D]`).
      cache: the updated `KVCache` (None when none was passed).
    """

    logits: jax.Array
    captured: dict[str, jax.Array] | None
    cache: KVCache | None

    @property
    def heads(self) -> jax.Array | None:
        """The captured head outputs, `[B, L, N, H]` at `capture_at` (None when not captured)."""
        return None if self.captured is None else self.captured.get("heads")


def _param(module: nn.Module, name: str, init, shape: tuple[int, ...], dtype, letters: str) -> jax.Array:
    """`module.param` whose dimensions are named by dimension `letters` (read back by `param_axes`)."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(letters)), shape, dtype)


class Einsum(nn.Module):
    """A linear map written as an einsum, e.g. `'BTD,DNH->BTNH'`, with an optional bias.

    The kernel's letters (`DNH`) name its dimensions, and so its sharding; the bias has
    the output's dimensions that the kernel has (`NH`).
    """

    shape: tuple[int, ...]
    equation: str
    bias: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs, output = self.equation.split("->")
        letters = inputs.split(",")[1]
        kernel = _param(self, "kernel", _INIT, self.shape, self.dtype, letters)
        y = jnp.einsum(self.equation, x, kernel)
        if self.bias:
            bias_letters = "".join(c for c in output if c in letters)
            bias_shape = tuple(self.shape[letters.index(c)] for c in bias_letters)
            y = y + _param(self, "bias", nn.initializers.zeros, bias_shape, self.dtype, bias_letters)
        return y


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last axis, computed in float32 (`[..., D] -> [..., D]`).

    Attributes:
      axis: the normalised dimension's letter: `D` (the residual stream) or `H` (q/k norms).
    """

    config: ModelConfig
    axis: str = "D"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        size = {"D": c.d_model, "H": c.head_dim}[self.axis]
        init = nn.initializers.zeros if c.norm_plus_one else nn.initializers.ones
        scale = _param(self, "scale", init, (size,), c.jnp_dtype, self.axis)
        x32 = x.astype(jnp.float32)
        if c.norm == "rms":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32**2, axis=-1, keepdims=True) + c.norm_eps)
            if c.norm_plus_one:  # Gemma: (1 + w) multiplied in float32, then cast
                return (y * (1 + scale.astype(jnp.float32))).astype(x.dtype)
            return scale * y.astype(x.dtype)
        bias = _param(self, "bias", nn.initializers.zeros, (size,), c.jnp_dtype, self.axis)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean((x32 - mean) ** 2, axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + c.norm_eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention; the per-head site is between the attention and `o`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, key_mask, window, edit, kv, write_at, pattern: bool = False, local=None):
        """
        Args:
          x: `[B, T, D]`.  positions: `[B, T]`.  key_mask: `[B, S]` bool, real keys.
          window: this layer's sliding window (int, a traced int32 scalar, or None: none).
          edit: `edit(site, value)`, this layer's interventions on a site (q, k, v, pattern, heads).
          kv: this layer's cached `(k, v)`, each `[B, S, K, H]`, or None (then S = T).
          write_at: int32 scalar, first cache slot to write (the first query's slot).
          pattern: whether the probabilities are edited or captured (static): only then are they
            laid out as the `pattern` site `[B, T, N, S]`, by the einsum path on all queries at once.
          local: bool scalar, this is a sliding-window layer (with `config.local_rope_theta`).
        Returns:
          out `[B, T, D]`, the sites `{q, k, v, heads[, pattern]}` (after their edits), updated
          `(k, v)` or None.
        """
        c = self.config
        D, N, K, H, dt = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.jnp_dtype
        q = edit("q", Einsum((D, N, H), "BTD,DNH->BTNH", c.qkv_bias, dt, name="q")(x))
        k = edit("k", Einsum((D, K, H), "BTD,DKH->BTKH", c.qkv_bias, dt, name="k")(x))
        v = edit("v", Einsum((D, K, H), "BTD,DKH->BTKH", c.qkv_bias, dt, name="v")(x))
        sites = {"q": q, "k": k, "v": v}
        if c.qk_norm:
            q, k = Norm(c, "H", name="q_norm")(q), Norm(c, "H", name="k_norm")(k)
        if c.position_embedding == "rope":
            inv_freq = inverse_frequencies(c)
            if c.local_rope_theta is not None:
                inv_freq = jnp.where(local, inverse_frequencies(c, local=True), inv_freq)
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        if kv is not None:
            k = jax.lax.dynamic_update_slice(kv[0], k, (0, write_at, 0, 0))
            v = jax.lax.dynamic_update_slice(kv[1], v, (0, write_at, 0, 0))
            kv = (k, v)
        mask = lambda start, length: attention_mask(key_mask, start, length, window)
        if pattern:  # every query at once, the probabilities laid out as the site
            heads, sites["pattern"] = einsum_attention(q, k, v, mask(write_at, q.shape[1]), c,
                                                        lambda probs: edit("pattern", probs))
        else:
            heads = attend(q, k, v, mask, write_at, c)
        sites["heads"] = heads = edit("heads", constrain(heads, "BTNH"))
        out = Einsum((N, H, D), "BTNH,NHD->BTD", c.out_bias, dt, name="o")(heads)
        return out, sites, kv


class MLP(nn.Module):
    """SwiGLU (`gated_mlp`) or plain two-layer MLP, `[B, T, D] -> [B, T, D]`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, edit):
        """`x` `[B, T, D]` -> `(out [B, T, D], hidden [B, T, F])`; `edit(site, value)` edits the hidden site."""
        c = self.config
        D, F, dt = c.d_model, c.mlp_dim, c.jnp_dtype
        act = _ACTIVATIONS[c.activation]
        up = Einsum((D, F), "BTD,DF->BTF", c.mlp_bias, dt, name="up")(x)
        if c.gated_mlp:
            h = act(Einsum((D, F), "BTD,DF->BTF", c.mlp_bias, dt, name="gate")(x)) * up
        else:
            h = act(up)
        h = edit("mlp_hidden", constrain(h, "BTF"))
        return Einsum((F, D), "BTF,FD->BTD", c.mlp_bias, dt, name="down")(h), h


class LayerInputs(NamedTuple):
    """What the scan hands each layer: its slices of the layer-stacked inputs.

    Attributes:
      interventions: a tuple of interventions, each leaf one layer's slice.
      kv: this layer's cached `(k, v)`, each `[B, S, K, H]`, or None without a cache.
      index: the layer's index (int32 scalar), or None without interventions.
      local: bool scalar, a sliding-window layer (None unless `config.local_layers`).
    """

    interventions: tuple = ()
    kv: tuple[jax.Array, jax.Array] | None = None
    index: jax.Array | None = None
    local: jax.Array | None = None


class SharedInputs(NamedTuple):
    """What every layer sees alike.

    Attributes:
      positions: `[B, T]` int32.  key_mask: `[B, S]` bool, real keys (cached and new).
      edit_mask: `[B, T]` bool, where interventions act (None without interventions).
      capture_at: `[B]` int, the position captured per row (None: every position).
      write_at: int32 scalar, the first cache slot the new tokens fill.
    """

    positions: jax.Array
    key_mask: jax.Array
    edit_mask: jax.Array | None
    capture_at: jax.Array | None
    write_at: jax.Array


class Block(nn.Module):
    """One decoder layer; `nn.scan` feeds it one layer's params, interventions and cache.

    Attributes:
      capture: site names (`tvjax.interventions.SITES`) whose values this layer returns; none
        captured and none edited compiles to the plain layer.
    """

    config: ModelConfig
    capture: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, layer: LayerInputs, shared: SharedInputs):
        """
        Args:
          x: `[B, T, D]` residual stream (the scan carry).
          layer: this layer's `LayerInputs`.  shared: the `SharedInputs`.
        Returns:
          `x` `[B, T, D]` and `(captured, updated kv or None)`, captured: site -> `[B, ...]` at
          `capture_at`, else `[B, T, ...]`.
        """
        c = self.config
        edit = lambda site, value: apply_at(site, value, layer.interventions, layer.index, shared.edit_mask)
        pattern = "pattern" in self.capture or any(i.site == "pattern" for i in layer.interventions)
        x = edit("resid_pre", x)
        window = c.sliding_window
        if c.local_layers:  # only the local layers look back through a window
            window = jnp.where(layer.local, window, jnp.iinfo(jnp.int32).max)
        a, sites, kv = Attention(c, name="attn")(Norm(c, name="ln1")(x), shared.positions, shared.key_mask, window,
                                                 edit, layer.kv, shared.write_at, pattern, layer.local)
        if c.post_norms:
            a = Norm(c, name="post_attn_norm")(a)
        a = edit("attn", a)
        mid = edit("resid_mid", x + a)
        m, hidden = MLP(c, name="mlp")(Norm(c, name="ln2")(x if c.parallel_residual else mid), edit)
        if c.post_norms:
            m = Norm(c, name="post_mlp_norm")(m)
        m = edit("mlp", m)
        sites.update(resid_pre=x, attn=a, resid_mid=mid, mlp_hidden=hidden, mlp=m)
        sites["resid"] = x = edit("resid", mid + m)
        at = shared.capture_at
        captured = {s: sites[s] if at is None else sites[s][jnp.arange(x.shape[0]), at] for s in self.capture}
        return constrain(x, "BTD"), (captured, kv)


class Decoder(nn.Module):
    """Embeddings, the scanned stack of blocks, final norm and LM head."""

    config: ModelConfig
    capture: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, tokens, mask, interventions: tuple = (), edit_mask=None, capture_at=None, logits_at=None,
                 cache: KVCache | None = None) -> Output:
        """Arguments as in `forward` (`interventions` a tuple, `mask` given)."""
        c = self.config
        B, T = tokens.shape
        embed_init = nn.with_logical_partitioning(_INIT, tuple("VD"))
        embed = nn.Embed(c.vocab_size, c.d_model, dtype=c.jnp_dtype, param_dtype=c.jnp_dtype,
                         embedding_init=embed_init, name="embed")
        x = embed(tokens)
        if c.embed_scale:  # in the model dtype, as transformers does
            x = x * jnp.float32(c.d_model**0.5).astype(x.dtype)
        x = constrain(x, "BTD")
        offset = jnp.zeros((B,), jnp.int32) if cache is None else cache.mask.sum(-1, dtype=jnp.int32)
        positions = jnp.maximum(offset[:, None] + jnp.cumsum(mask, axis=-1, dtype=jnp.int32) - 1, 0)
        if c.position_embedding == "learned":
            position_init = nn.with_logical_partitioning(_INIT, tuple("PD"))  # P: positions, never split
            x = x + nn.Embed(c.max_positions, c.d_model, dtype=c.jnp_dtype, param_dtype=c.jnp_dtype,
                             embedding_init=position_init, name="pos_embed")(positions)
        if cache is None:
            key_mask, write_at, kv = mask, jnp.zeros((), jnp.int32), None
        else:
            write_at = cache.end
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, write_at))
            kv = (cache.k, cache.v)
        block = Block
        if c.remat is not None:
            block = nn.remat(Block, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast), length=c.n_layers,
                        metadata_params={nn.PARTITION_NAME: "L"})
        shared = SharedInputs(positions, key_mask, edit_mask, capture_at, write_at)
        index = jnp.arange(c.n_layers, dtype=jnp.int32) if interventions else None
        local = jnp.asarray(c.local_layers) if c.local_layers else None
        layers = LayerInputs(interventions, kv, index, local)
        x, (captured, kv) = stack(c, self.capture, name="layers")(x, layers, shared)
        x = Norm(c, name="final_norm")(x)
        if logits_at is not None:
            x = x[jnp.arange(B), logits_at]  # [B, D]
        if c.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Einsum((c.d_model, c.vocab_size), "...D,DV->...V", False, c.jnp_dtype, name="lm_head")(x)
        captured = {s: jnp.swapaxes(v, 0, 1) for s, v in captured.items()} or None  # [L, B, ...] -> [B, L, ...]
        new_cache = None if cache is None else KVCache(kv[0], kv[1], key_mask, cache.end + T)
        logits = constrain(logits, "BTV" if logits.ndim == 3 else "BV").astype(jnp.float32)
        if c.logit_softcap is not None:
            logits = jnp.tanh(logits / c.logit_softcap) * c.logit_softcap
        return Output(logits, captured, new_cache)


@functools.partial(jax.jit, static_argnames=("config", "capture"))
def forward(
    params: Params,
    tokens: jax.Array,
    *,
    config: ModelConfig,
    mask: jax.Array | None = None,
    intervention: Intervention | tuple[Intervention, ...] | None = None,
    edit_mask: jax.Array | None = None,
    capture: str | tuple[str, ...] | None = None,
    capture_at: jax.Array | None = None,
    logits_at: jax.Array | None = None,
    cache: KVCache | None = None,
) -> Output:
    """The model as a pure function.

    Args:
      params: converted parameters (see `tvjax.load`).
      tokens: `[B, T]` int token ids, left-padded.
      config: the `ModelConfig` (static).
      mask: `[B, T]` bool, real tokens (default: all). Positions are derived from it.
      intervention: a `HeadBlend` (theta `[L, N]`, mu `[L, N, H]`), a `ResidualEdit`, an `Edit`
        (your function on a named site), your own `tvjax.interventions.Intervention`, a tuple
        of them (applied in order), or None for the plain model.
      edit_mask: `[B, T]` bool, positions the intervention edits (default: the last position).
      capture: site names (static; `tvjax.interventions.SITES`, or TransformerLens names
        without the layer) whose values to return for every layer in `Output.captured`
        (default: heads when `capture_at`
        is given, else none). Sites are read after any intervention on them.
      capture_at: `[B]` int, capture at this position per row (default: every position).
      logits_at: `[B]` int, compute logits only at this position per row.
      cache: a `KVCache` to extend (generation); the new tokens are written at `cache.end`.
    Returns:
      `Output(logits, captured, cache)`.
    """
    B, T = _check_tokens(tokens, mask, edit_mask)
    length = T if cache is None else cache.k.shape[2]
    if config.position_embedding == "learned" and length > config.max_positions:
        raise ValueError(f"{length} positions exceed the model's learned position table ({config.max_positions})")
    mask = jnp.ones((B, T), bool) if mask is None else mask.astype(bool)
    interventions = as_interventions(intervention)
    for one in interventions:
        one.check(config)
    if interventions and edit_mask is None:
        edit_mask = jnp.zeros((B, T), bool).at[:, -1].set(True)
    decoder = Decoder(config, _capture_sites(capture, capture_at))
    return decoder.apply({"params": params}, tokens, mask, interventions, edit_mask, capture_at, logits_at, cache)


def _capture_sites(capture, capture_at) -> tuple[str, ...]:
    if capture is None:
        return ("heads",) if capture_at is not None else ()
    return tuple(dict.fromkeys(site_of(name) for name in ((capture,) if isinstance(capture, str) else capture)))


def run_with_cache(model, tokens, names, *, mask=None, intervention=None, capture_at=None):
    """Logits and a name-indexed cache of activations, as TransformerLens' `run_with_cache`.

    Args:
      model: a loaded `Model` `(config, params, tokenizer)`.
      tokens: `[B, T]` int token ids (left-padded with `mask`).
      names: site names (`heads`, `pattern`, ... or TransformerLens names without the layer,
        `attn.hook_z`): every layer, `[B, L, T, ...]`; or with the layer,
        `blocks.{l}.attn.hook_z`: that layer, `[B, T, ...]`.
      mask: `[B, T]` bool (default: all real).
      intervention: applied as in `forward` (captured values are read after it).
      capture_at: `[B]` int: every value at this position per row only (drops the `T` axis).
    Returns:
      `(logits [B, T, V], {name: value})`, one forward pass for all names.
    """
    config, params = model[0], model[1]
    parsed = {name: parse_name(name) for name in names}
    out = forward(params, jnp.asarray(tokens), config=config, mask=None if mask is None else jnp.asarray(mask),
                  intervention=intervention, capture=tuple(dict.fromkeys(s for s, _ in parsed.values())),
                  capture_at=capture_at)
    return out.logits, {name: out.captured[site] if layer is None else out.captured[site][:, layer]
                        for name, (site, layer) in parsed.items()}


def _check_tokens(tokens, mask, edit_mask) -> tuple[int, int]:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    for name, m in (("mask", mask), ("edit_mask", edit_mask)):
        if m is not None and m.shape != tokens.shape:
            raise ValueError(f"{name} must match tokens {tokens.shape}, got {m.shape}")
    return tokens.shape


def _init(config: ModelConfig, rng: jax.Array) -> Params:
    """Params boxed with their logical axes (`flax.linen.LogicallyPartitioned`)."""
    return Decoder(config).init(rng, jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))["params"]


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Random parameters for `config` (tests, shape inspection with `jax.eval_shape`)."""
    return nn.meta.unbox(_init(config, rng))


def param_axes(config: ModelConfig):
    """The params' dimension letters, a pytree like the params (`'LDNH'` for the query
    kernel), as the modules declare them (an `Einsum` from its equation); `tvjax.sharding`
    maps them onto a mesh."""
    boxed = jax.eval_shape(functools.partial(_init, config), jax.random.PRNGKey(0))
    return jax.tree.map(lambda box: "".join(box.names), boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
