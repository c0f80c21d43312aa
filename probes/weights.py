"""Probes of the weights: weight_tracking and attention (the reference's hooks).

Singular values are exact (``jnp.linalg.svd``), where the reference uses a randomized
``svd_lowrank``; as there, only the top 20 enter the rank-type summaries of a matrix whose
smaller side exceeds 64.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from ordered_jax import models
from probes import common

TOP = 20


def top_singular_values(w: jnp.ndarray, q: int = TOP) -> jnp.ndarray:
  """Exact singular values, descending; the top q when min(shape) > 64, else all."""
  s = jnp.linalg.svd(w, compute_uv=False)
  return s if min(w.shape) <= 64 else s[:q]


def _rank(s):
  return jnp.sum(s) ** 2 / (jnp.sum(s * s) + 1e-8)


@dataclasses.dataclass(frozen=True)
class WeightTracking:
  """Per matrix W (ndim 2, no bias): weight_norm/{name} = |W|_F, top_sv/{name} = s_1,
  effective_rank/{name} = (sum s)^2 / sum s^2, grad_weight_align/{name} = cos(g_W, W);
  summaries total_weight_norm (sqrt of the sum of squares), mean_weight_norm, mean_top_sv,
  max_top_sv, mean_effective_rank, mean_grad_weight_align."""

  cfg: models.ModelConfig
  name: str = 'weight_tracking'
  needs: frozenset = frozenset({'grad_mean'})

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    w = common.reference_view(info.params, self.cfg)
    g = common.reference_view(info.grad_mean, self.cfg)
    names = [n for n in common.non_bias_names(self.cfg) if w[n].ndim == 2]
    m, norms, tops, ranks, aligns = {}, [], [], [], []
    for n in names:
      s = top_singular_values(w[n])
      norms.append(jnp.linalg.norm(w[n]))
      tops.append(s[0])
      ranks.append(_rank(s))
      aligns.append(common.cos(g[n].ravel(), w[n].ravel()))
      m.update({f'weight_norm/{n}': norms[-1], f'top_sv/{n}': tops[-1],
                f'effective_rank/{n}': ranks[-1], f'grad_weight_align/{n}': aligns[-1]})
    norms, tops = jnp.stack(norms), jnp.stack(tops)
    m.update({'total_weight_norm': jnp.sqrt(jnp.sum(norms ** 2)),
              'mean_weight_norm': jnp.mean(norms), 'mean_top_sv': jnp.mean(tops),
              'max_top_sv': jnp.max(tops), 'mean_effective_rank': jnp.mean(jnp.stack(ranks)),
              'mean_grad_weight_align': jnp.mean(jnp.stack(aligns))})
    return state, m, jnp.array(True)


@dataclasses.dataclass(frozen=True)
class Attention:
  """Weights: over the 2L matrices W_Q, W_K, W_V (row blocks of in_proj_weight), the means of
  sv_concentration = s_1 / (sum s + 1e-8), effective_rank = (sum s)^2 / (sum s^2 + 1e-8) and
  top5_explained_var = sum_{1..5} s^2 / sum s^2 over the top min(20, d) singular values.
  Patterns on the epoch's first batch, eval mode: attn_entropy/{l} = mean over the batch,
  heads and queries of the row entropy / log 2; attn_variance/{l} = mean over (head, query,
  key) of the unbiased variance across the batch; attn_entropy and attn_variance = their
  means over layers."""

  cfg: models.ModelConfig
  name: str = 'attention'
  needs: frozenset = frozenset()

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    d = self.cfg.embed_dim
    w = common.reference_view(info.params, self.cfg)
    conc, rank, top5 = [], [], []
    for layer in range(self.cfg.layers):
      qkv = w[f'transformer.layers.{layer}.self_attn.in_proj_weight']
      for block in range(3):
        s = jnp.linalg.svd(qkv[block * d:(block + 1) * d], compute_uv=False)[:min(TOP, d)]
        conc.append(s[0] / (jnp.sum(s) + 1e-8))
        rank.append(_rank(s))
        top5.append(jnp.sum(s[:5] ** 2) / jnp.sum(s ** 2))
    m = {'sv_concentration': jnp.mean(jnp.stack(conc)), 'effective_rank': jnp.mean(
        jnp.stack(rank)), 'top5_explained_var': jnp.mean(jnp.stack(top5))}
    _, attn_LxBxHxTxT = info.apply(info.params, info.first_batch_Bx3[:, :2], return_attn=True)
    ent = -jnp.sum(attn_LxBxHxTxT * jnp.log(attn_LxBxHxTxT + 1e-12), axis=-1) / math.log(2)
    ent_L = jnp.mean(ent, axis=(1, 2, 3))
    var_L = jnp.mean(jnp.var(attn_LxBxHxTxT, axis=1, ddof=1), axis=(1, 2, 3))
    for layer in range(self.cfg.layers):
      m[f'attn_entropy/{layer}'] = ent_L[layer]
      m[f'attn_variance/{layer}'] = var_L[layer]
    m['attn_entropy'] = jnp.mean(ent_L)
    m['attn_variance'] = jnp.mean(var_L)
    return state, m, jnp.array(True)
