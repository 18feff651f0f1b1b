"""ModelConfig: one frozen description of every supported decoder.

Dimension letters used throughout tvjax:
  B batch, T tokens (queries), S key positions, D model width, N query heads,
  K key/value heads, G query heads per kv head (N // K), H head dim,
  F mlp width, V vocab, L layers; R prompt rows (a batch of cached prompts), A tasks
  (many fitted together), C stacked interventions, P learned positions.
"""

from __future__ import annotations

import dataclasses

NORMS = ("rms", "layer")
ACTIVATIONS = ("silu", "gelu", "gelu_new", "relu")
POSITION_EMBEDDINGS = ("rope", "learned")
ROPE_TYPES = ("default", "linear", "llama3")  # rope scaling
REMAT_POLICIES = ("full", "dots", "dots_no_batch")
ATTENTION = ("einsum", "dot_product")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer; differences are fields, not classes.

    Attributes:
      family: weight-naming family the checkpoint came from: 'llama' (also Mistral, Qwen2/3 and
        Gemma 2/3), 'gpt2' or 'gpt_neox'.
      vocab_size: V.  d_model: D.  n_layers: L.  n_heads: N.  n_kv_heads: K.
      head_dim: H.  mlp_dim: F.
      norm: 'rms' (RMSNorm, no bias) or 'layer' (LayerNorm with bias).
      norm_plus_one: RMSNorm scales by `1 + weight`, multiplied in float32 before the cast (Gemma).
      post_norms: a norm on the attention and the MLP outputs before each joins the residual
        (Gemma 2/3's sandwich norms); the `attn` and `mlp` sites are read after them.
      qk_norm: RMSNorm over each head's `H` dims on queries and keys, before rotary (Qwen3, Gemma 3).
      embed_scale: token embeddings are multiplied by `sqrt(d_model)` in the model dtype (Gemma).
      activation: MLP nonlinearity; 'gelu_new' is the tanh approximation.
      gated_mlp: SwiGLU-style `down(act(gate(x)) * up(x))` instead of `down(act(up(x)))`.
      qkv_bias / out_bias / mlp_bias: which projections carry a bias.
      parallel_residual: `x + attn(ln1(x)) + mlp(ln2(x))` (GPT-NeoX) instead of sequential.
      position_embedding: 'rope' (split-half rotary, Hugging Face layout) or 'learned' (GPT-2).
      max_positions: size of the learned position table (and a hint for rope models).
      rope_theta: rotary base.  rotary_dim: leading dims of each head that rotate (partial rotary).
      rope_scaling: Hugging Face rope scaling dict as sorted (key, value) pairs; supported
        rope types: 'default', 'linear', 'llama3'.
      sliding_window: keys further back than this many positions are masked (Mistral: every
        layer; with `local_layers`, only those layers).
      local_layers: per layer, whether it is a sliding-window (local) layer; empty: every layer
        alike (Gemma 2 alternates, Gemma 3 has five local layers to one global).
      local_rope_theta: rotary base of the local layers, without rope scaling (Gemma 3); None:
        every layer uses `rope_theta` and `rope_scaling`.
      query_pre_attn_scalar: attention scores are scaled by `query_pre_attn_scalar ** -0.5`
        instead of `head_dim ** -0.5` (Gemma).
      attn_softcap / logit_softcap: `cap * tanh(x / cap)` on the attention scores / the
        final logits (Gemma 2); None: no capping.
      tie_embeddings: the LM head is the transposed token embedding.
      dtype: parameter and activation dtype ('float32' or 'bfloat16'); norms, softmax,
        blend math and logits are float32.
      remat: per-layer rematerialisation: None, 'full', 'dots' or 'dots_no_batch'.
      attention: 'einsum' (scores as einsums over kv-head groups, float32 softmax) or
        'dot_product' (`jax.nn.dot_product_attention`: XLA's, or cuDNN's fused kernel on a GPU
        in bfloat16). With `attn_softcap` (Gemma 2), which the fused call cannot express, and
        wherever the `pattern` site is captured or edited, the einsum path runs. The `heads`
        site is the same either way: read after attention, before the output projection.
      attention_chunk: with more queries than this in one call (long prompts), attention runs
        over blocks of this many queries, so its scores and mask grow linearly with the prompt
        length (`[B, N, chunk, S]`); None: all queries at once.
      bos_token_id / eos_token_id / pad_token_id: special tokens (None when absent).
    """

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_dim: int
    norm: str = "rms"
    norm_eps: float = 1e-5
    norm_plus_one: bool = False
    post_norms: bool = False
    qk_norm: bool = False
    embed_scale: bool = False
    activation: str = "silu"
    gated_mlp: bool = True
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    parallel_residual: bool = False
    position_embedding: str = "rope"
    max_positions: int = 2048
    rope_theta: float = 10000.0
    rotary_dim: int | None = None
    rope_scaling: tuple = ()
    sliding_window: int | None = None
    local_layers: tuple[bool, ...] = ()
    local_rope_theta: float | None = None
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None
    logit_softcap: float | None = None
    tie_embeddings: bool = True
    dtype: str = "float32"
    remat: str | None = None
    attention: str = "einsum"
    attention_chunk: int | None = 1024
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None  # several for some chat models
    pad_token_id: int | None = None

    def __post_init__(self):
        checks = {
            "norm": (self.norm, NORMS),
            "activation": (self.activation, ACTIVATIONS),
            "position_embedding": (self.position_embedding, POSITION_EMBEDDINGS),
            "dtype": (self.dtype, ("float32", "bfloat16")),
            "remat": (self.remat, (None,) + REMAT_POLICIES),
            "attention": (self.attention, ATTENTION),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"ModelConfig.{name}={value!r}; supported: {allowed}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.rotary_dim is not None and (self.rotary_dim % 2 or self.rotary_dim > self.head_dim):
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= head_dim={self.head_dim}")
        if self.local_layers and (len(self.local_layers) != self.n_layers or self.sliding_window is None):
            raise ValueError(f"local_layers needs one flag per layer ({self.n_layers}) and a sliding_window, "
                             f"got {len(self.local_layers)} flags and sliding_window={self.sliding_window}")
        if self.local_rope_theta is not None and not self.local_layers:
            raise ValueError("local_rope_theta needs local_layers (which layers are local)")
        if self.attention_chunk is not None and self.attention_chunk < 1:
            raise ValueError(f"attention_chunk={self.attention_chunk} must be a positive number of queries or None")
        if self.norm_plus_one and self.norm != "rms":
            raise ValueError("norm_plus_one applies to RMSNorm only (norm='rms')")

    @property
    def rope_dim(self) -> int:
        """Number of rotated dims per head (head_dim unless partial rotary)."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every end-of-sequence token id (possibly none)."""
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    @property
    def jnp_dtype(self):
        """`dtype` as a JAX dtype (this module itself does not import JAX)."""
        import jax.numpy as jnp

        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed, e.g. `config.replace(dtype='bfloat16')`."""
        return dataclasses.replace(self, **changes)
