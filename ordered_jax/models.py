"""The reference transformer (OrderedLearning's ``GrokkingTransformer``) in Flax NNX.

The module is only a definition: training code sees a plain parameter pytree
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

Params = Any  # nested dict of arrays, as produced by nnx.State.to_pure_dict()


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and regularisation of the reference transformer."""

  vocab: int  # p: tokens are 0..p-1, classes are 0..p-1
  embed_dim: int = 256
  num_heads: int = 4
  layers: int = 2
  mlp_dim: int = 2048  # PyTorch's TransformerEncoderLayer default, not 4 * embed_dim
  dropout: float = 0.1
  identical_layers: bool = True  # the reference deep-copies one initial layer


def _uniform(bound: float):
  """U(-bound, bound): PyTorch's default Linear init with bound = 1/sqrt(fan_in)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
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
  """Token + learned positional embedding, L encoder layers, mean pool, untied decoder."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d = cfg.embed_dim
    self.embedding = nnx.Embed(cfg.vocab, d, embedding_init=jax.nn.initializers.normal(1.0),
                               rngs=rngs)
    self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (2, d)))
    self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.layers)])
    self.decoder = nnx.Linear(d, cfg.vocab, kernel_init=_uniform(1 / math.sqrt(d)),
                              bias_init=_uniform(1 / math.sqrt(d)), rngs=rngs)

  def __call__(self, x_Bx2, key=None, return_attn=False):
    h_BxTxD = self.embedding(x_Bx2) + self.pos_embedding[...]
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


class Model:
  """A functional handle on ``Transformer``: ``init(key) -> params``, ``apply(params, x)``."""

  def __init__(self, cfg: ModelConfig):
    if cfg.embed_dim % cfg.num_heads:
      raise ValueError(f'embed_dim ({cfg.embed_dim}) must be divisible by num_heads '
                       f'({cfg.num_heads})')
    self.cfg = cfg
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    self.graphdef, self._abstract_state = nnx.split(abstract)

  def init(self, key: jax.Array) -> Params:
    """PyTorch-default initial weights; with identical_layers every layer copies layer 0."""
    params = nnx.to_pure_dict(nnx.state(Transformer(self.cfg, rngs=nnx.Rngs(params=key))))
    if self.cfg.identical_layers:
      params['layers'] = {i: params['layers'][0] for i in params['layers']}
    return params

  def abstract_params(self) -> Params:
    """ShapeDtypeStructs of the parameters, without allocating them."""
    return jax.eval_shape(self.init, jax.random.key(0))

  def apply(self, params: Params, x_Bx2: jax.Array, *, dropout_key: jax.Array | None = None,
            return_attn: bool = False):
    """Logits [B, p] (and attention probabilities if asked); dropout on iff a key is given."""
    state = nnx.clone(self._abstract_state)
    nnx.replace_by_pure_dict(state, params)
    module = nnx.merge(self.graphdef, state)
    return module(x_Bx2, key=dropout_key, return_attn=return_attn)


def param_count(params: Params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------------------
# The reference's names and layouts (PyTorch state_dict), for probes, import and export.

def _reference_layout(cfg: ModelConfig):
  """(reference name, path in our params, transpose) in the reference's named_parameters order."""
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
