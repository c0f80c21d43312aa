"""The models in Flax NNX, behind one functional handle ``Model(cfg)``.

Three families (``ModelConfig.kind``), all mapping K operand tokens to logits over the
group's elements:

* ``reference``: OrderedLearning's ``GrokkingTransformer`` (encoder, mean pool);
* ``power``: Power et al. (2022) as re-implemented in Sea-Snell/grokking's ``grokk_model``
  (decoder on ``[a, op, b, =]``, causal attention, head on the ``=`` token);
* ``mlp``: Tian's ``ModularAdditionNN`` (fixed one-hot inputs, two linear maps);
* ``dln``: the deep linear network of the Training-Dynamics codebase (bias-free linear
  layers, N(0, width^-gamma) init), on float inputs (task ``teacher``) or one-hot operands.

Each module is only a definition: training code sees a plain parameter pytree
(``Model.init``) and a pure ``Model.apply``. Dropout takes an explicit key, so the
model holds no RNG state and a step's randomness is a function of its key alone.

Weights use Flax layout (``kernel`` is ``[in, out]``); ``to_reference`` and
``from_reference`` convert to and from the reference's PyTorch ``state_dict`` names
and layouts (``embedding.weight``, ``transformer.layers.0.linear1.weight``, ...).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ordered_jax import extensions

Params = Any  # nested dict of arrays, as produced by nnx.State.to_pure_dict()


MODEL_KINDS = ('reference', 'power', 'mlp', 'gpt2', 'gpt2_resv', 'dln')
VALUE_MODES = ('resformer', 'svformer')  # gpt2_resv's value path
SEQUENCE_MODELS = ('power', 'gpt2', 'gpt2_resv')  # [a, op, b, =]: 2K positions
BUILT_IN_ATTENTION = ('reference', 'power', 'gpt2', 'gpt2_resv')  # embed_dim % num_heads == 0
ACTIVATIONS = ('sqr', 'relu', 'silu', 'relusqr')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Model family, shape and regularisation. The defaults are the reference transformer."""

  vocab: int  # group order: tokens are 0..vocab-1, classes are 0..vocab-1
  embed_dim: int = 256  # reference, power
  num_heads: int = 4  # reference, power
  layers: int = 2  # reference, power
  mlp_dim: int = 2048  # PyTorch's encoder default (not 4 * embed_dim); the mlp's hidden width
  dropout: float = 0.1  # reference, power (the mlp has none)
  identical_layers: bool = True  # reference only: it deep-copies one initial layer
  kind: str = 'reference'  # one of MODEL_KINDS
  n_ops: int = 2  # operands per example (3 for a+b+c)
  # mlp (Tian's two-layer network)
  activation: str = 'sqr'  # one of ACTIVATIONS
  embed_trainable: bool = False  # one-hot embedding fixed (no parameter) or trainable
  inner_product: bool = False  # hidden = prod_k (W_k e_k) instead of act(W [e_1; ...; e_K])
  other_layers: int = 0  # mlp: Tian's extra H x H layers, h <- act(h + U_l h), before V
  complex_weights: bool = False  # mlp: complex W, U_l, V (Tian's use_complex_weights)
  imag_init: float = 0.0  # mlp, complex: imaginary parts' init, this times the real parts' law
  tied_head: bool = True  # gpt2: the head is the token embedding's first vocab rows
  value_mode: str = 'resformer'  # gpt2_resv: one of VALUE_MODES
  # dln (deep linear network): depth weight matrices, hidden width, init N(0, width^-gamma)
  depth: int = 2
  width: int = 16
  gamma: float = 0.5
  in_dim: int = 0  # dln: float inputs of this size; 0 = one-hot operands (n_ops * vocab)
  out_dim: int = 0  # dln: outputs; 0 = vocab (logits over the classes)
  # A registered model's own config section (``register_model(section=)``), as sorted
  # (key, value) pairs, hashable; ``options(cfg)`` gives it as a dict.
  options: tuple = ()


class _Section(tuple):
  """A frozen nested config section: (key, value) pairs, told apart from a plain tuple."""


def freeze(section) -> tuple:
  """A config section (ConfigDict or mapping) as sorted (key, value) pairs, nested
  sections and lists frozen too: a hashable ``ModelConfig.options``."""
  def value(v):
    if hasattr(v, 'items'):
      return _Section(freeze(v))
    return tuple(value(x) for x in v) if isinstance(v, (list, tuple)) else v
  return tuple(sorted((str(k), value(v)) for k, v in section.items()))


def options(cfg: 'ModelConfig') -> dict:
  """The model's own config section (``ModelConfig.options``) as a dict (nested sections
  as dicts; lists as tuples)."""
  def value(v):
    return {k: value(x) for k, x in v} if isinstance(v, _Section) else v
  return {k: value(v) for k, v in cfg.options}


def _uniform(bound: float):
  """U(-bound, bound): PyTorch's default Linear init with bound = 1/sqrt(fan_in)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _linear(fan_in: int, fan_out: int, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
  """nn.Linear with PyTorch's default init: weight and bias U(+-1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)
  return nnx.Linear(fan_in, fan_out, use_bias=use_bias, kernel_init=_uniform(bound),
                    bias_init=_uniform(bound), rngs=rngs)


def _mix32(h_u32: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  h_u32 = h_u32 ^ (h_u32 >> 16)
  h_u32 = h_u32 * jnp.uint32(0x85EBCA6B)
  h_u32 = h_u32 ^ (h_u32 >> 13)
  h_u32 = h_u32 * jnp.uint32(0xC2B2AE35)
  return h_u32 ^ (h_u32 >> 16)


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """Dropout's keep mask, P(keep) = 1 - rate (to 2^-32), as a counter-based hash.

  Each element's bit is a hash of (its flat index, the key's data): two keyed rounds of
  ``_mix32``, a few integer ops per element that XLA fuses with the layer, where threefry
  (``jax.random.bernoulli``) costs about a quarter of a training step on the CPU. The mask
  is still a pure function of the key, so a step's randomness is a function of (seed,
  epoch, step) and resume stays bit-identical. Not a cryptographic generator: dropout needs
  only that the bits be uniform and uncorrelated (tests/test_models.py checks both).
  """
  words_u32 = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  index_u32 = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index_u32 = index_u32 + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  h_u32 = _mix32(index_u32 ^ words_u32[0])
  h_u32 = _mix32(h_u32 + words_u32[-1])
  threshold = min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1)
  return h_u32 >= jnp.uint32(threshold)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate == 0.0:
    return x
  keep = keep_mask(key, rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class SelfAttention(nnx.Module):
  """nn.MultiheadAttention: fused QKV projection, no mask, dropout on the probabilities."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.num_heads = cfg.num_heads
    self.rate = cfg.dropout
    self.in_proj = nnx.Linear(
        d, 3 * d, kernel_init=jax.nn.initializers.xavier_uniform(),
        bias_init=jax.nn.initializers.zeros, rngs=rngs)
    self.out_proj = nnx.Linear(
        d, d, kernel_init=_uniform(1 / math.sqrt(d)),
        bias_init=jax.nn.initializers.zeros, rngs=rngs)

  def __call__(self, x_BxTxD, key=None):
    b, t, d = x_BxTxD.shape
    h = self.num_heads
    qkv = self.in_proj(x_BxTxD).reshape(b, t, 3, h, d // h)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits_BxHxTxT = jnp.einsum('bqhk,bthk->bhqt', q_BxTxHxK, k_BxTxHxK) / math.sqrt(d // h)
    probs_BxHxTxT = jax.nn.softmax(logits_BxHxTxT, axis=-1)
    dropped = _dropout(probs_BxHxTxT, self.rate, key)
    out_BxTxD = jnp.einsum('bhqt,bthk->bqhk', dropped, v_BxTxHxK).reshape(b, t, d)
    return self.out_proj(out_BxTxD), probs_BxHxTxT


class EncoderLayer(nnx.Module):
  """Pre-LN nn.TransformerEncoderLayer (norm_first=True, ReLU, dropout in four places)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.embed_dim, cfg.mlp_dim
    self.rate = cfg.dropout
    self.self_attn = SelfAttention(cfg, rngs=rngs)
    self.norm1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.linear1 = nnx.Linear(d, f, kernel_init=_uniform(1 / math.sqrt(d)),
                              bias_init=_uniform(1 / math.sqrt(d)), rngs=rngs)
    self.linear2 = nnx.Linear(f, d, kernel_init=_uniform(1 / math.sqrt(f)),
                              bias_init=_uniform(1 / math.sqrt(f)), rngs=rngs)

  def __call__(self, h_BxTxD, key=None):
    keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
    attn_out, probs = self.self_attn(self.norm1(h_BxTxD), keys[0])
    h_BxTxD = h_BxTxD + _dropout(attn_out, self.rate, keys[1])
    ff = _dropout(jax.nn.relu(self.linear1(self.norm2(h_BxTxD))), self.rate, keys[2])
    h_BxTxD = h_BxTxD + _dropout(self.linear2(ff), self.rate, keys[3])
    return h_BxTxD, probs


class Transformer(nnx.Module):
  """The reference: token + learned positional embedding, L encoder layers, mean pool,
  untied decoder. Positions: one per operand (K = n_ops), no operator or '=' tokens."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.embedding = nnx.Embed(cfg.vocab, d, embedding_init=jax.nn.initializers.normal(1.0),
                               rngs=rngs)
    self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.n_ops, d)))
    self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.decoder = nnx.Linear(d, cfg.vocab, kernel_init=_uniform(1 / math.sqrt(d)),
                              bias_init=_uniform(1 / math.sqrt(d)), rngs=rngs)

  def __call__(self, x_BxK, key=None, return_attn=False):
    h_BxTxD = self.embedding(x_BxK) + self.pos_embedding[...]
    keys = [None] * len(self.layers) if key is None else list(
        jax.random.split(key, len(self.layers)))
    attn = []
    for layer, k in zip(self.layers, keys):
      h_BxTxD, probs = layer(h_BxTxD, k)
      attn.append(probs)
    logits_BxV = self.decoder(h_BxTxD.mean(axis=1))
    if return_attn:
      return logits_BxV, jnp.stack(attn)  # attention probs: [L, B, H, T, T]
    return logits_BxV

  # Evaluation (no dropout): the same logits as __call__ up to float rounding, with about a
  # fifth less work per pair. Layer 0 sees one of V tokens at each of K positions, so its
  # LayerNorm, QKV projection and output projection (linear: out_proj(sum_t p_t v_t) =
  # sum_t p_t out_proj(v_t), per head) are tabulated once per evaluation; the last layer's
  # second MLP matrix is affine, so the mean pool can go before it.

  def eval_tables(self):
    """Per (token, position): the embedded input [V, K, D], layer 0's queries and keys
    [V, K, H, E] and its values through the output projection, per head, [V, K, H, D]."""
    layer = self.layers[0]
    attn = layer.self_attn
    x_VxKxD = self.embedding.embedding[...][:, None, :] + self.pos_embedding[...][None]
    v_, k_, d = x_VxKxD.shape
    h = attn.num_heads
    qkv = attn.in_proj(layer.norm1(x_VxKxD)).reshape(v_, k_, 3, h, d // h)
    w_HxExD = attn.out_proj.kernel[...].reshape(h, d // h, d)
    ov_VxKxHxD = jnp.einsum('vkhe,hed->vkhd', qkv[:, :, 2], w_HxExD)
    return x_VxKxD, qkv[:, :, 0], qkv[:, :, 1], ov_VxKxHxD

  def eval_logits(self, tables, x_BxK):
    """Logits [B, V] of ``x_BxK`` in evaluation mode from ``eval_tables()``."""
    x_VxKxD, q_VxKxHxE, k_VxKxHxE, ov_VxKxHxD = tables
    pos_K = jnp.arange(x_BxK.shape[1])
    h_BxTxD = x_VxKxD[x_BxK, pos_K]
    q, k = q_VxKxHxE[x_BxK, pos_K], k_VxKxHxE[x_BxK, pos_K]
    logits_BxHxTxT = jnp.einsum('bqhk,bthk->bhqt', q, k) / math.sqrt(q.shape[-1])
    probs_BxHxTxT = jax.nn.softmax(logits_BxHxTxT, axis=-1)
    first = self.layers[0].self_attn.out_proj
    attn_BxTxD = jnp.einsum('bhqt,bthd->bqd', probs_BxHxTxT, ov_VxKxHxD[x_BxK, pos_K])
    last = len(self.layers) - 1
    for i, layer in enumerate(self.layers):
      if i == 0:
        h_BxTxD = h_BxTxD + attn_BxTxD + first.bias[...]
      else:
        h_BxTxD = h_BxTxD + layer.self_attn(layer.norm1(h_BxTxD))[0]
      ff_BxTxF = jax.nn.relu(layer.linear1(layer.norm2(h_BxTxD)))
      if i < last:
        h_BxTxD = h_BxTxD + layer.linear2(ff_BxTxF)
    return self.decoder(h_BxTxD.mean(axis=1) + layer.linear2(ff_BxTxF.mean(axis=1)))


# ---------------------------------------------------------------------------------------
# power: Power et al. (2022), after Sea-Snell/grokking's grokk_model.

class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention: fused QKV, head dim d / H, dropout on the probs."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.num_heads = cfg.num_heads
    self.rate = cfg.dropout
    self.qkv = _linear(d, 3 * d, rngs)  # = three nn.Linear(d, d) in distribution
    self.out = _linear(d, d, rngs)

  def __call__(self, x_BxTxD, key=None):
    b, t, d = x_BxTxD.shape
    h = self.num_heads
    qkv = self.qkv(x_BxTxD).reshape(b, t, 3, h, d // h)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits_BxHxTxT = jnp.einsum('bqhk,bthk->bhqt', q_BxTxHxK, k_BxTxHxK) / math.sqrt(d // h)
    causal_TxT = jnp.tril(jnp.ones((t, t), bool))
    logits_BxHxTxT = jnp.where(causal_TxT, logits_BxHxTxT, -1e9)  # Sea-Snell's masked_fill
    probs_BxHxTxT = jax.nn.softmax(logits_BxHxTxT, axis=-1)  # masked entries are exactly 0
    dropped = _dropout(probs_BxHxTxT, self.rate, key)
    out_BxTxD = jnp.einsum('bhqt,bthk->bqhk', dropped, v_BxTxHxK).reshape(b, t, d)
    return self.out(out_BxTxD), probs_BxHxTxT


class DecoderBlock(nnx.Module):
  """Pre-LN block: x + attn(LN x), then x + ff2(gelu(ff1(LN x))); GELU is the exact (erf)
  one, PyTorch's F.gelu default. Dropout on the probs, the attention output, the GELU
  output and the MLP output, as in grokk_model's TransformerBlock."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f = cfg.embed_dim, cfg.mlp_dim
    self.rate = cfg.dropout
    self.norm1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.attn = CausalSelfAttention(cfg, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.ff1 = _linear(d, f, rngs)
    self.ff2 = _linear(f, d, rngs)

  def __call__(self, h_BxTxD, key=None):
    keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
    attn_out, probs = self.attn(self.norm1(h_BxTxD), keys[0])
    h_BxTxD = h_BxTxD + _dropout(attn_out, self.rate, keys[1])
    ff = _dropout(jax.nn.gelu(self.ff1(self.norm2(h_BxTxD)), approximate=False), self.rate,
                  keys[2])
    h_BxTxD = h_BxTxD + _dropout(self.ff2(ff), self.rate, keys[3])
    return h_BxTxD, probs


class PowerTransformer(nnx.Module):
  """Decoder-only transformer on the sequence [a, op, b, (op, c,) =] (T = 2K).

  Extra tokens op = vocab and eq = vocab + 1, so the table has vocab + 2 rows. Token
  embedding * sqrt(d) + learned positions, dropout, L pre-LN causal blocks, final LN, and a
  linear head d -> vocab on the last ('=') position: the only one the loss reads, so the
  others are not computed. PyTorch-default init as in grokk_model: embeddings and positions
  N(0, 1) (nn.Embedding), every Linear U(+-1/sqrt(fan_in)) for weight and bias, LN 1 / 0.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.vocab = cfg.vocab
    self.rate = cfg.dropout
    self.scale = math.sqrt(d)
    self.embedding = nnx.Embed(cfg.vocab + 2, d, embedding_init=jax.nn.initializers.normal(1.0),
                               rngs=rngs)
    self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (2 * cfg.n_ops, d)))
    self.layers = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.norm = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.head = _linear(d, cfg.vocab, rngs)

  def tokens(self, x_BxK):
    """[a, b(, c)] -> [a, op, b(, op, c), =]."""
    b, k = x_BxK.shape
    ops_BxK = jnp.full_like(x_BxK, self.vocab)
    seq_BxT = jnp.stack([x_BxK, ops_BxK], axis=-1).reshape(b, 2 * k)
    return seq_BxT.at[:, -1].set(self.vocab + 1)

  def __call__(self, x_BxK, key=None, return_attn=False):
    keys = [None] * (len(self.layers) + 1) if key is None else list(
        jax.random.split(key, len(self.layers) + 1))
    h_BxTxD = self.embedding(self.tokens(x_BxK)) * self.scale + self.pos_embedding[...]
    h_BxTxD = _dropout(h_BxTxD, self.rate, keys[0])
    attn = []
    for layer, k in zip(self.layers, keys[1:]):
      h_BxTxD, probs = layer(h_BxTxD, k)
      attn.append(probs)
    logits_BxV = self.head(self.norm(h_BxTxD[:, -1]))
    if return_attn:
      return logits_BxV, jnp.stack(attn)  # attention probs: [L, B, H, T, T]
    return logits_BxV


# ---------------------------------------------------------------------------------------
# gpt2, gpt2_resv: the GPT-2 family of the Power et al. re-implementation (ndtippens/
# grok-tests), as the issue defines it: pre-LN, GELU, learned positions, tied or untied head.

def _normal(std: float):
  return jax.nn.initializers.normal(std)


class GPT2Attention(nnx.Module):
  """Causal attention whose values may come from layer 0 (``value_mode`` of gpt2_resv):
  'resformer' mixes v = lam v_l + (1 - lam) v_0 with a learned scalar lam (init 0.5) in
  every layer after the first (ResFormer, Zhou et al. 2024); 'svformer' has no value
  projection after the first layer and uses v_0 there (SVFormer)."""

  def __init__(self, cfg: ModelConfig, index: int, resv: bool, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    std, out_std = 0.02, 0.02 / math.sqrt(2 * cfg.layers)   # GPT-2's residual scaling
    self.num_heads, self.rate = cfg.num_heads, cfg.dropout
    self.mode = cfg.value_mode if (resv and index > 0) else 'none'
    width = 2 * d if self.mode == 'svformer' else 3 * d
    self.qkv = nnx.Linear(d, width, kernel_init=_normal(std),
                          bias_init=jax.nn.initializers.zeros, rngs=rngs)
    self.out = nnx.Linear(d, d, kernel_init=_normal(out_std),
                          bias_init=jax.nn.initializers.zeros, rngs=rngs)
    if self.mode == 'resformer':
      self.lam = nnx.Param(jnp.full((), 0.5, jnp.float32))

  def __call__(self, x_BxTxD, v0_BxTxHxK=None, key=None):
    b, t, d = x_BxTxD.shape
    h = self.num_heads
    parts = self.qkv(x_BxTxD).reshape(b, t, -1, h, d // h)
    q_BxTxHxK, k_BxTxHxK = parts[:, :, 0], parts[:, :, 1]
    if self.mode == 'svformer':
      v_BxTxHxK = v0_BxTxHxK
    else:
      v_BxTxHxK = parts[:, :, 2]
      if self.mode == 'resformer':
        lam = self.lam[...]
        v_BxTxHxK = lam * v_BxTxHxK + (1.0 - lam) * v0_BxTxHxK
    logits = jnp.einsum('bqhk,bthk->bhqt', q_BxTxHxK, k_BxTxHxK) / math.sqrt(d // h)
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -1e9)
    probs_BxHxTxT = jax.nn.softmax(logits, axis=-1)
    dropped = _dropout(probs_BxHxTxT, self.rate, key)
    out_BxTxD = jnp.einsum('bhqt,bthk->bqhk', dropped, v_BxTxHxK).reshape(b, t, d)
    return self.out(out_BxTxD), probs_BxHxTxT, v_BxTxHxK


class GPT2Block(nnx.Module):
  """x + attn(LN x), then x + fc2(gelu_tanh(fc1(LN x))), dropout on the probabilities and
  on both residual branches (GPT-2's resid_pdrop and attn_pdrop)."""

  def __init__(self, cfg: ModelConfig, index: int, resv: bool, *, rngs: nnx.Rngs):
    d, f = cfg.embed_dim, cfg.mlp_dim
    self.rate = cfg.dropout
    self.norm1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.attn = GPT2Attention(cfg, index, resv, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    self.fc1 = nnx.Linear(d, f, kernel_init=_normal(0.02), bias_init=jax.nn.initializers.zeros,
                          rngs=rngs)
    self.fc2 = nnx.Linear(f, d, kernel_init=_normal(0.02 / math.sqrt(2 * cfg.layers)),
                          bias_init=jax.nn.initializers.zeros, rngs=rngs)

  def __call__(self, h_BxTxD, v0=None, key=None):
    keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
    attn_out, probs, v = self.attn(self.norm1(h_BxTxD), v0, keys[0])
    h_BxTxD = h_BxTxD + _dropout(attn_out, self.rate, keys[1])
    ff = self.fc2(jax.nn.gelu(self.fc1(self.norm2(h_BxTxD)), approximate=True))
    return h_BxTxD + _dropout(ff, self.rate, keys[2]), probs, v


class GPT2(nnx.Module):
  """GPT-2 style decoder on power's sequence [a, op, b, (op, c,) =] (T = 2K): token plus
  learned position embeddings (N(0, 0.02)), dropout, L pre-LN blocks, a final LN, and the
  logits of the group's ``vocab`` classes at the '=' position, from the token embedding's
  first ``vocab`` rows (``tied_head``) or a head of its own. The fork's models predict over
  the whole vocabulary (op and = included) with shifted labels; here the classes are the
  elements only, like the other models. ``resv`` = gpt2_resv (see GPT2Attention)."""

  resv = False

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.vocab, self.rate, self.tied = cfg.vocab, cfg.dropout, cfg.tied_head
    self.embedding = nnx.Embed(cfg.vocab + 2, d, embedding_init=_normal(0.02), rngs=rngs)
    self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (2 * cfg.n_ops, d)))
    self.layers = nnx.List([GPT2Block(cfg, i, self.resv, rngs=rngs) for i in range(cfg.layers)])
    self.norm = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
    if not cfg.tied_head:
      self.head = nnx.Linear(d, cfg.vocab, use_bias=False, kernel_init=_normal(0.02), rngs=rngs)

  tokens = PowerTransformer.tokens

  def __call__(self, x_BxK, key=None, return_attn=False):
    keys = [None] * (len(self.layers) + 1) if key is None else list(
        jax.random.split(key, len(self.layers) + 1))
    h_BxTxD = self.embedding(self.tokens(x_BxK)) + self.pos_embedding[...]
    h_BxTxD = _dropout(h_BxTxD, self.rate, keys[0])
    attn, v0 = [], None
    for i, (layer, k) in enumerate(zip(self.layers, keys[1:])):
      h_BxTxD, probs, v = layer(h_BxTxD, v0, k)
      v0 = v if i == 0 else v0
      attn.append(probs)
    z_BxD = self.norm(h_BxTxD[:, -1])
    if self.tied:
      logits_BxV = z_BxD @ self.embedding.embedding[...][:self.vocab].T
    else:
      logits_BxV = self.head(z_BxD)
    if return_attn:
      return logits_BxV, jnp.stack(attn)
    return logits_BxV


class GPT2ResV(GPT2):
  """gpt2 with the value residual of ``value_mode`` (ResFormer or SVFormer)."""

  resv = True


# ---------------------------------------------------------------------------------------
# mlp: Tian's ModularAdditionNN (CoGo / Li2), without its optional extras.

_ACTIVATION_FNS = {
    'sqr': jnp.square,
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'relusqr': lambda z: jnp.square(jax.nn.relu(z)),
}


def _eye_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(*shape, dtype=dtype)


class TwoLayerMLP(nnx.Module):
  """logits = V act(W [e_1; ...; e_K]), or V prod_k(W_k e_k) with inner_product; no biases.
  With ``other_layers`` = L (Tian's), L bias-free H x H layers U_l sit before V, each
  h <- act(h + U_l h), initialised like W and V.

  e_k is the one-hot of operand k (the identity embedding, not a parameter), or with
  embed_trainable the row of an M x M ``embedding`` initialised to the identity. W, W_k and
  V get nn.Linear's default U(+-1/sqrt(fan_in)). W applied to a one-hot is a row of its
  kernel, so the forward pass gathers rows (cost B x H per operand) instead of multiplying
  [B, K*M] by [K*M, H]. Dropout does not exist here: ``key`` is accepted and ignored.

  With ``complex_weights`` (Tian's ``use_complex_weights``) every weight is complex, kept as
  two real parameters, ``kernel`` (real part) and ``imag``, so each optimiser treats the
  parts as PyTorch's optimisers treat a complex parameter (Adam's moments per part); the
  forward pass is complex and the logits are its real part. ``imag_init`` = 0 is Tian's
  initialisation (real weights cast to complex); docs/models.md says what follows from it.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    m, k, h = cfg.vocab, cfg.n_ops, cfg.mlp_dim
    self.m, self.n_ops = m, k
    self.activation = cfg.activation
    self.inner_product = cfg.inner_product
    self.embed_trainable = cfg.embed_trainable
    if cfg.embed_trainable:
      self.embedding = nnx.Embed(m, m, embedding_init=_eye_init, rngs=rngs)
    if cfg.inner_product:
      self.Ws = nnx.List([_linear(m, h, rngs, use_bias=False) for _ in range(k)])
    else:
      self.W = _linear(k * m, h, rngs, use_bias=False)
    self.V = _linear(h, m, rngs, use_bias=False)
    self.n_other = cfg.other_layers
    if cfg.other_layers:  # created after V, so W and V draw the same weights either way
      self.others = nnx.List([_linear(h, h, rngs, use_bias=False)
                              for _ in range(cfg.other_layers)])
    self.complex = cfg.complex_weights
    if cfg.complex_weights:  # drawn last, so the real parts equal the real network's
      for layer in self._linears():
        fan_in = layer.kernel.shape[0]
        layer.imag = nnx.Param(cfg.imag_init * _uniform(1 / math.sqrt(fan_in))(
            rngs.params(), layer.kernel.shape))

  def _linears(self) -> list[nnx.Linear]:
    """W (or the W_k), the U_l and V, in that order."""
    first = list(self.Ws) if self.inner_product else [self.W]
    return first + list(self.others if self.n_other else ()) + [self.V]

  def _kernel(self, layer: nnx.Linear) -> jax.Array:
    """A layer's weight [in, out]: its kernel, or kernel + i imag with complex weights."""
    if self.complex:
      return jax.lax.complex(layer.kernel[...], layer.imag[...])
    return layer.kernel[...]

  def tables(self) -> list[jax.Array]:
    """Per operand k, [M, H]: row j is W_k e_j (W_k = W's k-th block of input rows)."""
    if self.inner_product:
      blocks = [self._kernel(w) for w in self.Ws]
    else:
      kernel = self._kernel(self.W)
      blocks = [kernel[i * self.m:(i + 1) * self.m] for i in range(self.n_ops)]
    if self.embed_trainable:
      e_MxM = self.embedding.embedding[...]
      blocks = [e_MxM @ w_MxH for w_MxH in blocks]
    return blocks

  def hidden(self, x_BxK):
    """The hidden features [B, H] that V reads (Tian's x_before_layerc)."""
    rows = [t_MxH[x_BxK[:, i]] for i, t_MxH in enumerate(self.tables())]
    if self.inner_product:
      return math.prod(rows[1:], start=rows[0])
    return _ACTIVATION_FNS[self.activation](sum(rows[1:], start=rows[0]))

  def features(self, x_BxK):
    """What V reads [B, H]: ``hidden``, then each of Tian's other layers, h <- act(h + U h)."""
    h_BxH = self.hidden(x_BxK)
    for layer in (self.others if self.n_other else ()):
      h_BxH = _ACTIVATION_FNS[self.activation](h_BxH + h_BxH @ self._kernel(layer))
    return h_BxH

  def __call__(self, x_BxK, key=None, return_attn=False):
    del key  # no dropout in this model
    logits_BxM = self.features(x_BxK) @ self._kernel(self.V)
    if self.complex:
      logits_BxM = logits_BxM.real  # Tian: loss and argmax read the real part
    if return_attn:
      return logits_BxM, None  # no attention
    return logits_BxM


class DeepLinearNetwork(nnx.Module):
  """y = W_L ... W_2 W_1 x: ``depth`` = L bias-free linear layers, in_dim -> width -> ...
  -> width -> out_dim (the codebase's ``num_hidden`` = L - 1). Every weight is drawn from
  N(0, width^-gamma), i.e. std = width^(-gamma/2), the first and last layer included, as
  in Training-Dynamics-of-Deep-Learning's ``DeepLinearNetwork`` (gamma 0.5 standard, 0.75
  NTK, 1.0 mean-field, >= 1.5 saddle-to-saddle; the scaling of arXiv 2106.15933).

  Float inputs [B, in_dim] are used as they are; integer operand tokens [B, K] (the
  classification tasks) are one-hot encoded and concatenated (in_dim = K * vocab), which
  the first layer reads as a gather of kernel rows. No dropout: ``key`` is ignored."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.vocab, self.n_ops = cfg.vocab, cfg.n_ops
    d_in = cfg.in_dim or cfg.n_ops * cfg.vocab
    sizes = [d_in] + [cfg.width] * (cfg.depth - 1) + [cfg.out_dim or cfg.vocab]
    init = jax.nn.initializers.normal(cfg.width ** (-cfg.gamma / 2))
    self.layers = nnx.List([nnx.Linear(a, b, use_bias=False, kernel_init=init, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x, key=None, return_attn=False):
    del key  # no dropout in this model
    first = self.layers[0].kernel[...]
    if jnp.issubdtype(x.dtype, jnp.integer):
      h = sum(first[i * self.vocab + x[:, i]] for i in range(self.n_ops))
    else:
      h = x @ first
    for layer in list(self.layers)[1:]:
      h = layer(h)
    return (h, None) if return_attn else h


def dln_weights(params: Params) -> list[jax.Array]:
  """A dln's weights W_1..W_L in the maths layout [out, in] (y = W_L ... W_1 x)."""
  layers = params['layers']
  return [layers[i]['kernel'].T for i in sorted(layers)]


def dln_product(params: Params) -> jax.Array:
  """The end-to-end (effective) weight W = W_L ... W_1 [out, in] of a dln."""
  ws = dln_weights(params)
  out = ws[0]
  for w in ws[1:]:
    out = w @ out
  return out


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """One model: ``module(cfg, rngs=)`` an NNX module whose ``__call__(x_BxK, key=None,
  return_attn=False)`` gives logits [B, vocab] (and the attention probabilities [L, B, H,
  T, T], or None, when asked); ``sequence``: it reads the sequence [a, op, b, =] (2K
  positions, for the memory estimate); ``layout`` and ``roles`` (functions of the
  ModelConfig, see ``layout`` and ``Roles``): its semantic view, which the transformer
  probes read (None: only the model-agnostic probes run on it)."""

  name: str
  module: type
  description: str
  sequence: bool = False
  layout: Any = None
  roles: Any = None
  validate: Any = None  # validate(config): its config section (runs.check/number/one_of)
  section: str | None = None  # config.<section> reaches the module as ModelConfig.options


REGISTRY: dict[str, ModelKind] = {}


def register_model(name: str, module: type, description: str, *, sequence: bool = False,
                   layout=None, roles=None, validate=None,
                   section: str | None = None) -> ModelKind:
  """Declare a model: ``--config.model=<name>`` builds it (sized by the config's
  embed_dim, num_heads, layers, mlp_dim, dropout and the task's vocabulary and operands)
  and ``--list`` shows its description; a new one is one file in
  ``ordered_jax/model_kinds/`` (docs/extending.md). ``validate(config)`` checks the
  model's own config section (every config's, since a sweep may switch models), raising
  ``runs.ConfigError`` through ``runs.check`` / ``number`` / ``one_of``; ``section``: its
  name, whose fields the module reads as ``options(cfg)``."""
  if name in REGISTRY:
    raise ValueError(f'model {name!r} is registered twice')
  if (layout is None) != (roles is None):
    raise ValueError(f'model {name!r}: give both layout and roles, or neither')
  REGISTRY[name] = kind = ModelKind(name, module, description, sequence, layout, roles,
                                    validate, section)
  return kind


def is_sequence(kind: str) -> bool:
  """Whether model ``kind`` reads [a, op, b, =] (2K positions) rather than K operands."""
  return kind in REGISTRY and REGISTRY[kind].sequence


def named_models() -> tuple[str, ...]:
  """The models with a semantic view (``layout`` and ``roles``), the built-ins first."""
  return tuple(n for n, k in REGISTRY.items() if k.layout is not None)


class Model:
  """A functional handle on the ``cfg.kind`` module: ``init(key) -> params``,
  ``apply(params, x)``. Params are a plain nested dict (``nnx.to_pure_dict``)."""

  def __init__(self, cfg: ModelConfig):
    if cfg.kind not in REGISTRY:
      raise ValueError(f'kind must be one of {tuple(REGISTRY)}, got {cfg.kind!r}')
    if cfg.activation not in ACTIVATIONS:
      raise ValueError(f'activation must be one of {ACTIVATIONS}, got {cfg.activation!r}')
    if cfg.n_ops < 1:
      raise ValueError(f'n_ops must be >= 1, got {cfg.n_ops}')
    if cfg.kind == 'dln' and min(cfg.depth, cfg.width) < 1:
      raise ValueError(f'dln depth and width must be >= 1, got {cfg.depth}, {cfg.width}')
    if cfg.kind in BUILT_IN_ATTENTION and cfg.embed_dim % cfg.num_heads:
      raise ValueError(f'embed_dim ({cfg.embed_dim}) must be divisible by num_heads '
                       f'({cfg.num_heads})')
    self.cfg = cfg
    self._module = REGISTRY[cfg.kind].module
    abstract = nnx.eval_shape(lambda: self._module(cfg, rngs=nnx.Rngs(0)))
    self.graphdef, self._abstract_state = nnx.split(abstract)

  def init(self, key: jax.Array) -> Params:
    """Initial weights (see each module's docstring); for the reference with
    identical_layers, every layer copies layer 0 (the other kinds ignore that flag)."""
    params = nnx.to_pure_dict(nnx.state(self._module(self.cfg, rngs=nnx.Rngs(params=key))))
    if self.cfg.kind == 'reference' and self.cfg.identical_layers:
      params['layers'] = {i: params['layers'][0] for i in params['layers']}
    return params

  def abstract_params(self) -> Params:
    """ShapeDtypeStructs of the parameters, without allocating them."""
    return jax.eval_shape(self.init, jax.random.key(0))

  def module(self, params: Params) -> nnx.Module:
    """The NNX module holding ``params`` (for methods beyond ``apply``, e.g. ``hidden``)."""
    state = nnx.clone(self._abstract_state)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def predictor(self, params: Params):
    """``f(x_BxK) -> logits`` in evaluation mode (no dropout), for many batches of one
    ``params``: a module whose class defines ``eval_tables`` and ``eval_logits`` beside
    its ``__call__`` (the reference transformer) does its per-token work once here; the
    others are ``apply``."""
    module = self.module(params)
    owner = lambda name: next((k for k in type(module).__mro__ if name in vars(k)), None)
    # A subclass that redefines __call__ but not the evaluation path gets __call__.
    if owner('eval_logits') is not None and owner('eval_logits') is owner('__call__'):
      tables = module.eval_tables()
      return lambda x_BxK: module.eval_logits(tables, x_BxK)
    return lambda x_BxK: module(x_BxK)

  def apply(self, params: Params, x_BxK: jax.Array, *, dropout_key: jax.Array | None = None,
            return_attn: bool = False):
    """Logits [B, vocab] for K = n_ops operand tokens (and, if asked, attention probs
    [L, B, H, T, T]; None for the mlp); dropout on iff a key is given."""
    return self.module(params)(x_BxK, key=dropout_key, return_attn=return_attn)


def ridge_top(model: 'Model', params: Params, x_BxK, y_B, mask_B, lam: float) -> Params:
  """Tian's ``set_weight_reg``: the mlp's top layer V solved as ridge regression of the
  centred one-hot targets Y = onehot(y) - 1/M on the features F [B, H] of the batch's real
  rows, V = (F^T F + lam I)^-1 F^T Y, through the SVD F = U S W^T as V = W diag(S / (S^2 +
  lam)) U^T Y (U^H, W^H for complex weights). Returns ``params`` with that V (no gradient
  flows through the solve)."""
  mask = mask_B.astype(jnp.float32)[:, None]
  f_BxH = jax.lax.stop_gradient(model.module(params).features(x_BxK)) * mask
  y_BxM = (jax.nn.one_hot(y_B, model.cfg.vocab) - 1.0 / model.cfg.vocab) * mask
  u, s, wt = jnp.linalg.svd(f_BxH, full_matrices=False)
  kernel_HxM = wt.conj().T @ ((u.conj().T @ y_BxM) * (s / (s * s + lam))[:, None])
  if model.cfg.complex_weights:  # the complex least-squares fit, as Tian's complex branch
    return {**params, 'V': {**params['V'], 'kernel': kernel_HxM.real, 'imag': kernel_HxM.imag}}
  return {**params, 'V': {**params['V'], 'kernel': kernel_HxM}}


def param_count(params: Params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def param_names(params: Params) -> list[str]:
  """Dotted names of every leaf in tree order (``jax.tree.leaves``), e.g. 'W.kernel',
  'layers.0.attn.qkv.kernel': model-agnostic names for probes and docs."""
  def name(path):
    return '.'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                    for k in path)

  return [name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


# ---------------------------------------------------------------------------------------
# The reference's names and layouts (PyTorch state_dict), for probes, import and export.

def _reference_layout(cfg: ModelConfig):
  """(reference name, path in our params, transpose) in the reference's named_parameters order."""
  if cfg.kind != 'reference':
    raise ValueError(f"reference names exist only for kind 'reference', got {cfg.kind!r}; "
                     'use param_names')
  rows = [('pos_embedding', ('pos_embedding',), False),
          ('embedding.weight', ('embedding', 'embedding'), False)]
  for i in range(cfg.layers):
    pre = f'transformer.layers.{i}.'
    lay = ('layers', i)
    rows += [
        (pre + 'self_attn.in_proj_weight', lay + ('self_attn', 'in_proj', 'kernel'), True),
        (pre + 'self_attn.in_proj_bias', lay + ('self_attn', 'in_proj', 'bias'), False),
        (pre + 'self_attn.out_proj.weight', lay + ('self_attn', 'out_proj', 'kernel'), True),
        (pre + 'self_attn.out_proj.bias', lay + ('self_attn', 'out_proj', 'bias'), False),
        (pre + 'linear1.weight', lay + ('linear1', 'kernel'), True),
        (pre + 'linear1.bias', lay + ('linear1', 'bias'), False),
        (pre + 'linear2.weight', lay + ('linear2', 'kernel'), True),
        (pre + 'linear2.bias', lay + ('linear2', 'bias'), False),
        (pre + 'norm1.weight', lay + ('norm1', 'scale'), False),
        (pre + 'norm1.bias', lay + ('norm1', 'bias'), False),
        (pre + 'norm2.weight', lay + ('norm2', 'scale'), False),
        (pre + 'norm2.bias', lay + ('norm2', 'bias'), False),
    ]
  rows += [('decoder.weight', ('decoder', 'kernel'), True),
           ('decoder.bias', ('decoder', 'bias'), False)]
  return rows


def _decoder_layout(cfg: ModelConfig):
  """The decoder-only transformers' (power, gpt2, gpt2_resv) parameters in PyTorch-style
  names and layouts (Linear weights [out, in]). gpt2's MLP is fc1/fc2, its head has no
  bias and is absent when tied to the token embedding; gpt2_resv's later layers add the
  scalar ``attn.lam``."""
  ff = ('ff1', 'ff2') if cfg.kind == 'power' else ('fc1', 'fc2')
  rows = [('embedding.weight', ('embedding', 'embedding'), False),
          ('pos_embedding', ('pos_embedding',), False)]
  for i in range(cfg.layers):
    pre, lay = f'layers.{i}.', ('layers', i)
    rows += [
        (pre + 'norm1.weight', lay + ('norm1', 'scale'), False),
        (pre + 'norm1.bias', lay + ('norm1', 'bias'), False),
        (pre + 'attn.qkv.weight', lay + ('attn', 'qkv', 'kernel'), True),
        (pre + 'attn.qkv.bias', lay + ('attn', 'qkv', 'bias'), False),
        (pre + 'attn.out.weight', lay + ('attn', 'out', 'kernel'), True),
        (pre + 'attn.out.bias', lay + ('attn', 'out', 'bias'), False),
    ]
    if cfg.kind == 'gpt2_resv' and i > 0 and cfg.value_mode == 'resformer':
      rows.append((pre + 'attn.lam', lay + ('attn', 'lam'), False))
    rows += [
        (pre + 'norm2.weight', lay + ('norm2', 'scale'), False),
        (pre + 'norm2.bias', lay + ('norm2', 'bias'), False),
        (pre + f'{ff[0]}.weight', lay + (ff[0], 'kernel'), True),
        (pre + f'{ff[0]}.bias', lay + (ff[0], 'bias'), False),
        (pre + f'{ff[1]}.weight', lay + (ff[1], 'kernel'), True),
        (pre + f'{ff[1]}.bias', lay + (ff[1], 'bias'), False),
    ]
  rows += [('norm.weight', ('norm', 'scale'), False), ('norm.bias', ('norm', 'bias'), False)]
  if cfg.kind == 'power':
    rows += [('head.weight', ('head', 'kernel'), True), ('head.bias', ('head', 'bias'), False)]
  elif not cfg.tied_head:
    rows.append(('head.weight', ('head', 'kernel'), True))
  return rows


def layout(cfg: ModelConfig):
  """(name, path in our params, transpose) of every parameter of a model with a semantic
  view (``named_models()``): the reference's own names, PyTorch-style names for the
  decoder-only transformers."""
  kind = REGISTRY.get(cfg.kind)
  if kind is None or kind.layout is None:
    raise ValueError(f'named parameters exist for models {", ".join(named_models())}, got '
                     f'{cfg.kind!r}; use param_names')
  return kind.layout(cfg)


@dataclasses.dataclass(frozen=True)
class Roles:
  """A model's parameters by what they do, as names of ``layout``: probes read roles, not
  one model's names. Matrices in PyTorch layout: ``token_embedding`` [rows >= vocab, d]
  (its first vocab rows are the operand tokens: ``operand_rows``), ``unembedding``
  [vocab, d] (the map into the logits), and per layer ``qkv`` [3d, d] (query, key, value
  row blocks, heads contiguous inside each), ``attn_out`` [d, d], ``mlp_in`` [f, d],
  ``mlp_out`` [d, f]. A tied head (gpt2) is the token embedding: ``unembedding`` names it
  (take its ``operand_rows``)."""

  token_embedding: str
  pos_embedding: str
  unembedding: str
  qkv: tuple[str, ...]
  attn_out: tuple[str, ...]
  mlp_in: tuple[str, ...]
  mlp_out: tuple[str, ...]


def roles(cfg: ModelConfig) -> Roles:
  """The semantic view of a ``named_models()`` model."""
  layout(cfg)  # the one-line error for a model without a view
  return REGISTRY[cfg.kind].roles(cfg)


def _reference_roles(cfg: ModelConfig) -> Roles:
  pre = [f'transformer.layers.{i}.' for i in range(cfg.layers)]
  return Roles('embedding.weight', 'pos_embedding', 'decoder.weight',
               tuple(p + 'self_attn.in_proj_weight' for p in pre),
               tuple(p + 'self_attn.out_proj.weight' for p in pre),
               tuple(p + 'linear1.weight' for p in pre), tuple(p + 'linear2.weight' for p in pre))


def _decoder_roles(cfg: ModelConfig) -> Roles:
  pre = [f'layers.{i}.' for i in range(cfg.layers)]
  ff = ('ff1', 'ff2') if cfg.kind == 'power' else ('fc1', 'fc2')
  tied = cfg.kind != 'power' and cfg.tied_head  # the head is the embedding's first rows
  return Roles('embedding.weight', 'pos_embedding', 'embedding.weight' if tied else 'head.weight',
               tuple(p + 'attn.qkv.weight' for p in pre), tuple(p + 'attn.out.weight' for p in pre),
               tuple(p + f'{ff[0]}.weight' for p in pre), tuple(p + f'{ff[1]}.weight' for p in pre))


def operand_rows(e_RxD: jax.Array, cfg: ModelConfig) -> jax.Array:
  """The operand tokens' rows [vocab, d] of a token embedding (power's table adds the op
  and '=' tokens after them; the reference's has exactly these)."""
  return e_RxD if e_RxD.shape[0] == cfg.vocab else e_RxD[:cfg.vocab]


def to_reference(params: Params, cfg: ModelConfig) -> dict[str, jax.Array]:
  """Our params as the reference's ``state_dict``: {name: array in PyTorch layout}."""
  out = {}
  for name, path, transpose in _reference_layout(cfg):
    x = params
    for k in path:
      x = x[k]
    out[name] = x.T if transpose else x
  return out


def from_reference(state_dict: dict[str, Any], cfg: ModelConfig) -> Params:
  """The inverse of ``to_reference``: a reference ``state_dict`` (arrays) as our params."""
  params: dict = {}
  for name, path, transpose in _reference_layout(cfg):
    x = jnp.asarray(state_dict[name], jnp.float32)
    node = params
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = x.T if transpose else x
  return params


# -- the built-in models, then ordered_jax/model_kinds/ ----------------------------------------

def _validate_mlp(config) -> None:
  """config.mlp: Tian's network (read whatever the model, as a sweep may switch to it)."""
  from ordered_jax import runs  # pylint: disable=g-import-not-at-top  (runs imports models)
  runs.one_of(config, 'mlp.activation', ACTIVATIONS)
  for field in ('mlp.embed_trainable', 'mlp.inner_product'):
    runs.check(isinstance(config[field], bool), field,
               f'must be true or false; got {config[field]!r}')
  if 'other_layers' in config.mlp:
    runs.number(config, 'mlp.other_layers', integer=True, lo=0, hi=runs.MAX_LAYERS)
    lam = runs.number(config, 'mlp.set_weight_reg', lo=0)
    if lam:
      runs.check(config.model == 'mlp', 'mlp.set_weight_reg',
                 f'needs model=mlp; got {config.model!r}')
      runs.check(config.loss == 'mse', 'mlp.set_weight_reg', 'needs loss=mse (a least-squares '
                 f"top layer, as in Tian's code); got loss={config.loss!r}")
      runs.check(config.mlp.other_layers == 0, 'mlp.set_weight_reg', 'needs '
                 'mlp.other_layers=0 (Tian fits V on the features before his other layers, '
                 'which V does not read)')
  if 'complex_weights' in config.mlp:
    on = config.mlp.complex_weights
    runs.check(isinstance(on, bool), 'mlp.complex_weights', f'must be true or false; got {on!r}')
    imag = runs.number(config, 'mlp.imag_init', lo=0, hi=1e3)
    runs.check(on or not imag, 'mlp.imag_init', 'needs mlp.complex_weights=true')
    if on and config.model == 'mlp':
      runs.check(config.mlp.activation in ('sqr', 'silu'), 'mlp.complex_weights',
                 'needs mlp.activation sqr or silu (relu is not defined on complex numbers); '
                 f'got {config.mlp.activation!r}')
      runs.check(config.optimizer != 'muon', 'mlp.complex_weights', 'is not defined with '
                 'optimizer=muon (its orthogonalisation of a complex matrix is not the one of '
                 'its real and imaginary parts); use adam, adamw or sgd')


def _validate_gpt2(config) -> None:
  """config.gpt2 (gpt2 and gpt2_resv)."""
  from ordered_jax import runs  # pylint: disable=g-import-not-at-top
  if 'gpt2' in config:
    runs.check(isinstance(config.gpt2.tied_head, bool), 'gpt2.tied_head',
               f'must be true or false; got {config.gpt2.tied_head!r}')
    runs.one_of(config, 'gpt2.value_mode', VALUE_MODES)


def _validate_dln(config) -> None:
  """config.dln: depth, width, init scale exponent."""
  from ordered_jax import runs  # pylint: disable=g-import-not-at-top
  if 'dln' in config:
    runs.number(config, 'dln.depth', integer=True, lo=1, hi=runs.MAX_LAYERS)
    runs.number(config, 'dln.width', integer=True, lo=1)
    runs.number(config, 'dln.gamma', lo=0)


register_model('reference', Transformer, "the paper's GrokkingTransformer (encoder, "
               'mean-pooled, then a decoder to the classes)', layout=_reference_layout,
               roles=_reference_roles)
register_model('power', PowerTransformer, "Power et al.'s decoder-only transformer (causal, "
               'GELU, final LayerNorm)', sequence=True, layout=_decoder_layout,
               roles=_decoder_roles)
register_model('mlp', TwoLayerMLP, "Tian's two-layer network (sqr, relu, silu or relusqr)",
               validate=_validate_mlp)
register_model('gpt2', GPT2, 'GPT-2 style decoder (pre-LN, tanh GELU, learned positions, '
               'tied or untied head)', sequence=True, layout=_decoder_layout,
               roles=_decoder_roles, validate=_validate_gpt2)
register_model('gpt2_resv', GPT2ResV, "gpt2 with a value residual: ResFormer (mixed with "
               "layer 0's values) or SVFormer", sequence=True, layout=_decoder_layout,
               roles=_decoder_roles)
register_model('dln', DeepLinearNetwork, 'deep linear network (Training-Dynamics): dln.depth '
               'bias-free layers, N(0, width^-gamma) init', validate=_validate_dln)
assert tuple(REGISTRY) == MODEL_KINDS


extensions.import_all('ordered_jax.model_kinds')  # models beyond the built-ins
