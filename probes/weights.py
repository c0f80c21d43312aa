"""Probes of the weights: weight_tracking and attention (the reference's hooks).

Singular values are exact (eigenvalues of the Gram matrix, taken on the host: see
``probes.spectra``), where the reference uses a randomized ``svd_lowrank``; as there, only
the top 20 enter the rank-type summaries of a matrix whose smaller side exceeds 64.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from ordered_jax import models
from probes import common, spectra

TOP = 20


def top_singular_values(g: np.ndarray, q: int = TOP) -> np.ndarray:
  """Singular values from a Gram matrix, descending; the top q when min(shape) > 64."""
  s = spectra.singular_values(g)
  return s if g.shape[0] <= 64 else s[:q]


def _rank(s):
  return np.sum(s) ** 2 / (np.sum(s * s) + 1e-8)


@dataclasses.dataclass(frozen=True)
class WeightTracking:
  """Per matrix W (ndim 2, no bias): weight_norm/{name} = |W|_F, top_sv/{name} = s_1,
  effective_rank/{name} = (sum s)^2 / sum s^2, grad_weight_align/{name} = cos(g_W, W);
  summaries total_weight_norm (sqrt of the sum of squares), mean_weight_norm, mean_top_sv,
  max_top_sv, mean_effective_rank, mean_grad_weight_align."""

  cfg: models.ModelConfig
  name: str = 'weight_tracking'
  needs: frozenset = frozenset({'grad_mean'})
  weight_only: bool = True  # also probes untrained weights (epochs = 0)

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    w = common.reference_view(info.params, self.cfg)
    g = common.reference_view(info.grad_mean, self.cfg)
    names = [n for n in common.non_bias_names(self.cfg) if w[n].ndim == 2]
    m, norms, aligns = {}, [], []
    for n in names:
      norms.append(jnp.linalg.norm(w[n]))
      aligns.append(common.cos(g[n].ravel(), w[n].ravel()))
      m.update({f'weight_norm/{n}': norms[-1], f'grad_weight_align/{n}': aligns[-1],
                f'{spectra.GRAM}/{n}': spectra.gram(w[n])})
    norms = jnp.stack(norms)
    m.update({'total_weight_norm': jnp.sqrt(jnp.sum(norms ** 2)),
              'mean_weight_norm': jnp.mean(norms),
              'mean_grad_weight_align': jnp.mean(jnp.stack(aligns))})
    return state, m, jnp.array(True)

  def to_host(self, m: dict) -> dict:
    """top_sv/{name}, effective_rank/{name} and their summaries, from the Gram matrices."""
    m, grams = spectra.pop_grams(m)
    tops, ranks = [], []
    for n, gram in grams.items():
      s = top_singular_values(gram)
      tops.append(s[0])
      ranks.append(_rank(s))
      m[f'top_sv/{n}'], m[f'effective_rank/{n}'] = tops[-1], ranks[-1]
    m.update({'mean_top_sv': np.mean(tops), 'max_top_sv': np.max(tops),
              'mean_effective_rank': np.mean(ranks)})
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in m.items()}


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
  weight_only: bool = True  # also probes untrained weights (epochs = 0)

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    d = self.cfg.embed_dim
    w = common.reference_view(info.params, self.cfg)
    m = {}
    for layer in range(self.cfg.layers):
      qkv = w[models.roles(self.cfg).qkv[layer]]
      for block in range(qkv.shape[0] // d):  # Q, K, V (svformer's later layers: Q, K)
        m[f'{spectra.GRAM}/{layer}.{block}'] = spectra.gram(qkv[block * d:(block + 1) * d])
    _, attn_LxBxHxTxT = info.apply(info.params, info.first_batch_BxC[:, :self.cfg.n_ops],
                                     return_attn=True)
    ent = -jnp.sum(attn_LxBxHxTxT * jnp.log(attn_LxBxHxTxT + 1e-12), axis=-1) / math.log(2)
    ent_L = jnp.mean(ent, axis=(1, 2, 3))
    var_L = jnp.mean(jnp.var(attn_LxBxHxTxT, axis=1, ddof=1), axis=(1, 2, 3))
    for layer in range(self.cfg.layers):
      m[f'attn_entropy/{layer}'] = ent_L[layer]
      m[f'attn_variance/{layer}'] = var_L[layer]
    m['attn_entropy'] = jnp.mean(ent_L)
    m['attn_variance'] = jnp.mean(var_L)
    return state, m, jnp.array(True)

  def to_host(self, m: dict) -> dict:
    """The singular-value summaries of W_Q, W_K, W_V, from their Gram matrices."""
    m, grams = spectra.pop_grams(m)
    conc, rank, top5 = [], [], []
    for gram in grams.values():
      s = spectra.singular_values(gram)[:TOP]
      conc.append(s[0] / (np.sum(s) + 1e-8))
      rank.append(_rank(s))
      top5.append(np.sum(s[:5] ** 2) / np.sum(s ** 2))
    m.update({'sv_concentration': np.mean(conc), 'effective_rank': np.mean(rank),
              'top5_explained_var': np.mean(top5)})
    return {k: float(v) if np.ndim(v) == 0 else v for k, v in m.items()}


# -- declarations (probes.registry) -----------------------------------------------------------

def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  needs = registry.Needs(named=True, tasks=registry.CYCLIC_TASKS)
  registry.register('attention', lambda ctx, _: Attention(ctx.model), needs=needs,
                    groups=('observers',), rank=40)
  registry.register('weight_tracking', lambda ctx, _: WeightTracking(ctx.model), needs=needs,
                    groups=('observers',), rank=70)


_register()
