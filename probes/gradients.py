"""Probes of the epoch-mean gradient: norms, consecutive (the reference's hooks).

g is the mean over the epoch's batches of the batch gradient, each at the parameters
before that batch's step, accumulated inside the scanned epoch.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ordered_jax import models
from probes import common


@dataclasses.dataclass(frozen=True)
class Norms:
  """total_norm, max_component, mean_component of flat(g); norm_{param} per non-bias param."""

  cfg: models.ModelConfig
  name: str = 'norms'
  needs: frozenset = frozenset({'grad_mean'})

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    view = common.reference_view(info.grad_mean, self.cfg)
    names = common.non_bias_names(self.cfg)
    flat = jnp.concatenate([view[n].ravel() for n in names])
    m = {'total_norm': jnp.linalg.norm(flat), 'max_component': jnp.max(jnp.abs(flat)),
         'mean_component': jnp.mean(jnp.abs(flat))}
    m.update({f'norm_{n}': jnp.linalg.norm(view[n]) for n in names})
    return state, m, jnp.array(True)


@dataclasses.dataclass(frozen=True)
class Consecutive:
  """cos_sim and angle_degrees between this and the previous probe epoch's flat(g)."""

  cfg: models.ModelConfig
  name: str = 'consecutive'
  needs: frozenset = frozenset({'grad_mean'})

  def init(self, params):
    return {'prev': jnp.zeros_like(common.flat_non_bias(params, self.cfg)),
            'has_prev': jnp.array(False)}

  def on_epoch(self, state, info):
    g = common.flat_non_bias(info.grad_mean, self.cfg)
    c = common.cos(g, state['prev'])
    m = {'cos_sim': c, 'angle_degrees': jnp.degrees(jnp.arccos(jnp.clip(c, -1.0, 1.0)))}
    return {'prev': g, 'has_prev': jnp.array(True)}, m, state['has_prev']


@dataclasses.dataclass(frozen=True)
class Variance:
  """Over a window of the last ``window`` probe epochs' flat(g) (emitted from 2 on):
  gradient_variance = mean over elements and members of (g_i - g_bar)^2 (population);
  mean_pairwise_cos over pairs j < k; signal_to_noise = |g_bar| / (|std_unbiased| + 1e-8);
  window_mean_norm = |g_bar|."""

  cfg: models.ModelConfig
  window: int = 10
  name: str = 'variance'
  needs: frozenset = frozenset({'grad_mean'})
  masks_inactive: bool = True  # common.window_push leaves a stopped run's window as it was

  def init(self, params):
    return common.window_init(common.flat_non_bias(params, self.cfg).shape[0], self.window)

  def on_epoch(self, state, info):
    new, n, valid, g = common.window_push(
        state, common.flat_non_bias(info.grad_mean, self.cfg), info.active)
    # Everything from the members' Gram matrix G (no pass over the window): with the mean
    # g_bar, |g_bar|^2 = sum G / n^2 and sum_i |g_i - g_bar|^2 = tr G - n |g_bar|^2.
    n_f = n.astype(g.dtype)
    d = new['buf'].shape[1]
    mean_norm = jnp.sqrt(jnp.maximum(jnp.sum(g), 0.0)) / n_f
    sq = jnp.maximum(jnp.trace(g) - n_f * mean_norm ** 2, 0.0)
    norms = jnp.sqrt(jnp.diagonal(g))
    cos_jk = g / (norms[:, None] * norms[None, :] + 1e-8)
    pairs = valid[:, None] * valid[None, :] * jnp.triu(jnp.ones_like(cos_jk), 1)
    m = {'gradient_variance': sq / (n_f * d),
         'mean_pairwise_cos': jnp.sum(cos_jk * pairs) / jnp.maximum(jnp.sum(pairs), 1.0),
         'signal_to_noise': mean_norm / (jnp.sqrt(sq / jnp.maximum(n_f - 1, 1.0)) + 1e-8),
         'window_mean_norm': mean_norm}
    return new, m, n >= 2


@dataclasses.dataclass(frozen=True)
class TokenGradient:
  """On the embedding rows of g, r_t = |g_E[t]|: gradient_sparsity (share of tokens with
  r_t < 0.1 mean r), gradient_gini, stride_group_variance and stride_group_max_ratio
  (groups t mod floor(sqrt p)), tokens_for_50pct / 90pct of the cumulative share (largest
  first) and concentration_ratio = tokens_for_50pct / p."""

  cfg: models.ModelConfig
  name: str = 'token_gradient'
  needs: frozenset = frozenset({'grad_mean'})

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    p = self.cfg.vocab
    s = math.isqrt(p)
    g_E = common.reference_view(info.grad_mean, self.cfg)[models.roles(self.cfg).token_embedding]
    r = jnp.linalg.norm(models.operand_rows(g_E, self.cfg), axis=1)
    asc = jnp.sort(r)
    gini = (2 * jnp.sum(jnp.arange(1, p + 1) * asc) - (p + 1) * jnp.sum(r)) / (
        p * jnp.sum(r) + 1e-8)
    groups = jnp.arange(p) % s
    group_mean = (jax.ops.segment_sum(r, groups, num_segments=s) /
                  jax.ops.segment_sum(jnp.ones_like(r), groups, num_segments=s))
    share = jnp.cumsum(asc[::-1]) / jnp.sum(r)
    t50 = jnp.sum(share < 0.5) + 1
    m = {'gradient_sparsity': jnp.mean(r < 0.1 * jnp.mean(r)), 'gradient_gini': gini,
         'stride_group_variance': jnp.var(group_mean),
         'stride_group_max_ratio': jnp.max(group_mean) / (jnp.mean(group_mean) + 1e-8),
         'tokens_for_50pct': t50, 'tokens_for_90pct': jnp.sum(share < 0.9) + 1,
         'concentration_ratio': t50 / p}
    return state, m, jnp.array(True)


@dataclasses.dataclass(frozen=True)
class Phases:
  """At snapshot epochs (the reference's SNAPSHOT hook): n = |flat(g)|; grad_velocity =
  n - n_prev (0 the first time) and grad_acceleration = v - v_prev (v_prev 0 the first
  time, as the reference: so the second firing's acceleration is its velocity); embedding_change = |E - E_prev|_F and
  embedding_change_normalized = that / (|E_prev| + 1e-8) (0 the first time); phase_code from
  the validation accuracy a (%): a < 5 -> 0, < 20 -> 1, < 80 -> 2, < 99 -> 3, else 4."""

  cfg: models.ModelConfig
  name: str = 'phases'
  cadence: str = 'snapshot'  # the reference's SNAPSHOT hook
  needs: frozenset = frozenset({'grad_mean'})

  def init(self, params):
    emb = common.reference_view(params, self.cfg)[models.roles(self.cfg).token_embedding]
    z = jnp.zeros((), jnp.float32)
    return {'norm': z, 'velocity': z, 'embedding': jnp.zeros_like(emb),
            'count': jnp.zeros((), jnp.int32)}

  def on_epoch(self, state, info):
    n = jnp.linalg.norm(common.flat_non_bias(info.grad_mean, self.cfg))
    emb = common.reference_view(info.params, self.cfg)[models.roles(self.cfg).token_embedding]
    count = state['count']
    velocity = jnp.where(count >= 1, n - state['norm'], 0.0)
    change = jnp.where(count >= 1, jnp.linalg.norm(emb - state['embedding']), 0.0)
    a = info.validation_accuracy
    m = {'grad_velocity': velocity,
         # The reference's previous velocity starts at 0 (the first firing's), so the
         # second firing's acceleration is its velocity.
         'grad_acceleration': velocity - state['velocity'],
         'embedding_change': change,
         'embedding_change_normalized': jnp.where(
             count >= 1, change / (jnp.linalg.norm(state['embedding']) + 1e-8), 0.0),
         'phase_code': jnp.searchsorted(jnp.array([5.0, 20.0, 80.0, 99.0]), a, side='right')}
    new = {'norm': n, 'velocity': velocity, 'embedding': emb, 'count': count + 1}
    return new, m, jnp.array(True)


# -- declarations (probes.registry) -----------------------------------------------------------

def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  needs = registry.Needs(named=True, tasks=registry.CYCLIC_TASKS)
  for name, cls, rank in (('norms', Norms, 10), ('consecutive', Consecutive, 20),
                          ('variance', Variance, 30), ('phases', Phases, 60),
                          ('token_gradient', TokenGradient, 80)):
    window = getattr(cls, 'window', 0)  # Variance keeps its last `window` gradients
    registry.register(name, lambda ctx, _, cls=cls: cls(ctx.model), needs=needs,
                      groups=('observers',), rank=rank,
                      memory=(lambda _, sizes, w=window: 4 * sizes.params * (w + 1))
                      if window else None)


_register()
