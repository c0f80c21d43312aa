"""Interventions that re-run the epoch in shuffled orders: counterfactual and its validator.

At a probe epoch, from the run's state before that epoch (parameters, optimiser state),
each replicate trains one extra epoch (optimiser steps, dropout on) over the same training
rows in a fresh uniform shuffle and returns its epoch-mean gradient
(``EpochInfo.replay``); the run itself goes on untouched. The mean over replicates is the
ordering-free "content" gradient the real epoch's gradient is compared with.

**Fix:** the replicates use K distinct shuffles and dropout keys, fold_in(probe key, k).
The reference restores the pre-epoch RNG before every replicate, so its K = 3 copies are
one shuffle three times and the validator compares identical subsets.

Cost: K (validator: K + 1) extra training epochs per probe epoch, vmapped with the runs and
``probes.counterfactual.parallel`` replays at a time (default 1: on 2 CPU cores all three
at once were about 20 % slower; 0 = all K at once, for an accelerator that one small run
leaves mostly idle; not measured there yet).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ordered_jax import models
from probes import common


def _shuffled_grads(info, k: int, parallel: int = 1):
  """[k] stacked epoch-mean gradients of k replays in distinct uniform shuffles, ``parallel``
  at a time under ``vmap`` (0: all k at once; 1: one after another)."""
  n = info.train_NxC.shape[0]

  def one(i):
    k_order, k_drop = jax.random.split(jax.random.fold_in(info.key, i))
    return info.replay(jax.random.permutation(k_order, n).astype(jnp.int32), k_drop)

  at_once = k if parallel <= 0 else min(parallel, k)
  return jax.lax.map(one, jnp.arange(k), batch_size=at_once if at_once > 1 else None)


def _sq(tree):
  return sum(jnp.sum(x * x) for x in jax.tree.leaves(tree))


def _dot(a, b):
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _decompose(a, c, delta):
  """Projection split of g on the counterfactual mean cf, from A = |g|^2, C = |cf|^2 and
  delta = g.cf: (content norm, ordering norm, ordering energy fraction, alignment)."""
  ordering_sq = jnp.maximum(0.0, a - delta ** 2 / jnp.maximum(c, 1e-30))
  return (jnp.abs(delta) / jnp.sqrt(jnp.maximum(c, 1e-30)), jnp.sqrt(ordering_sq),
          ordering_sq / jnp.maximum(a, 1e-30), delta / (jnp.sqrt(a) * jnp.sqrt(c) + 1e-8))


@dataclasses.dataclass(frozen=True)
class Counterfactual:
  """g = the epoch's mean gradient, cf = the mean over K shuffled replays; over all
  parameters (biases included) A = |g|^2, C = |cf|^2, delta = g.cf; content = (delta / C) cf,
  ordering = g - content. counterfactual_mean_norm = sqrt C, content_component_norm =
  |delta| / sqrt C, ordering_component_norm = sqrt max(0, A - delta^2 / C), ordering_fraction
  = that energy / A, ordering_alignment = delta / (sqrt A sqrt C + 1e-8); the same per non-bias
  parameter (``.../{param}``, each parameter's own projection). With reference weights,
  d = theta_ref - theta_pre over the parameters where d != 0: content_, ordering_ and
  cf_grad_cossim_to_solution = cos(-content, d), cos(-ordering, d), cos(-cf, d) (and per
  non-bias parameter, from its own projection); over a window of the last ``window`` probe
  epochs' -content (and -ordering) vectors M (rows), once it holds two:
  {content,ordering}_energy_fraction_toward_solution = sum S^2 (V^T d_hat)^2 / sum S^2
  for M = U S V^T, which is exactly |M d_hat|^2 / |M|_F^2 (no SVD needed)."""

  cfg: models.ModelConfig
  k: int = 3
  window: int = 20
  parallel: int = 1  # replays at once under vmap (0: all K)
  with_reference: bool = False
  name: str = 'counterfactual'
  cadence: str = 'early'  # every epoch below 50, then at snapshots (the reference's)
  needs: frozenset = frozenset({'grad_mean'})

  def init(self, params):
    if not self.with_reference:
      return {}
    d = common.flat_all(params).shape[0]
    return {'content': jnp.zeros((self.window, d)), 'ordering': jnp.zeros((self.window, d)),
            'count': jnp.zeros((), jnp.int32)}

  def on_epoch(self, state, info):
    g = info.grad_mean
    cf = jax.tree.map(lambda x: jnp.mean(x, axis=0),
                      _shuffled_grads(info, self.k, self.parallel))
    a, c, delta = _sq(g), _sq(cf), _dot(g, cf)
    m = {'counterfactual_mean_norm': jnp.sqrt(c)}
    (m['content_component_norm'], m['ordering_component_norm'], m['ordering_fraction'],
     m['ordering_alignment']) = _decompose(a, c, delta)
    gv, cv = common.reference_view(g, self.cfg), common.reference_view(cf, self.cfg)
    names = common.non_bias_names(self.cfg)
    for n in names:
      parts = _decompose(jnp.sum(gv[n] ** 2), jnp.sum(cv[n] ** 2), jnp.sum(gv[n] * cv[n]))
      for key, v in zip(('content_component_norm', 'ordering_component_norm',
                         'ordering_fraction', 'ordering_alignment'), parts):
        m[f'{key}/{n}'] = v
    if not self.with_reference:
      return state, m, jnp.array(True)

    # Solution tier: d = theta_ref - theta_pre; parameters with d = 0 drop out.
    d = jax.tree.map(jnp.subtract, info.reference, info.params_before)
    keep = jax.tree.map(lambda x: (jnp.sum(x * x) > 0).astype(x.dtype), d)
    mask = lambda t: jax.tree.map(lambda x, k: x * k, t, keep)
    content = jax.tree.map(lambda x: x * delta / jnp.maximum(c, 1e-30), cf)
    ordering = jax.tree.map(jnp.subtract, g, content)
    flat_d = common.flat_all(d)
    neg = lambda t: -common.flat_all(mask(t))
    vectors = {'content': neg(content), 'ordering': neg(ordering), 'cf': neg(cf)}
    for key, v in vectors.items():
      m[f'{key}_grad_cossim_to_solution'] = common.cos(v, flat_d)
    dv = common.reference_view(d, self.cfg)
    for n in names:
      scale = jnp.sum(gv[n] * cv[n]) / jnp.maximum(jnp.sum(cv[n] ** 2), 1e-30)
      per = {'content': -scale * cv[n], 'ordering': -(gv[n] - scale * cv[n]), 'cf': -cv[n]}
      for key, v in per.items():
        m[f'{key}_grad_cossim_to_solution/{n}'] = common.cos(v.ravel(), dv[n].ravel())
    slot = state['count'] % self.window
    new = {'content': state['content'].at[slot].set(vectors['content']),
           'ordering': state['ordering'].at[slot].set(vectors['ordering']),
           'count': state['count'] + 1}
    members = jnp.minimum(new['count'], self.window)
    d_hat = flat_d / (jnp.linalg.norm(flat_d) + 1e-30)
    for key in ('content', 'ordering'):
      rows = new[key]  # unfilled rows are zero and add nothing
      energy = jnp.sum((rows @ d_hat) ** 2) / (jnp.sum(rows * rows) + 1e-30)
      m[f'{key}_energy_fraction_toward_solution'] = jnp.where(members >= 2, energy, jnp.nan)
    return new, m, jnp.array(True)

  def to_host(self, m: dict) -> dict:
    """The window metrics appear once the window holds two vectors, as in the reference."""
    return {k: v for k, v in m.items() if not (np.ndim(v) == 0 and np.isnan(v))}


@dataclasses.dataclass(frozen=True)
class CounterfactualValidator:
  """Does the K-shuffle mean converge? K + 1 replays; over flat() (non-bias) gradients,
  kp1 = the mean of all K + 1 and k_i = the K + 1 leave-one-out means of K:
  kp1_content_norm = |kp1|; k_content_norm_max / _min / _mean over |k_i|;
  kp1_norm_strictly_lower = 1.0 when |kp1| < every |k_i|; norm_convergence_gap =
  (mean |k_i| - |kp1|) / |kp1|; k_to_kp1_cossim_mean / _min of cos(k_i, kp1). With reference
  weights, d = flat(theta_ref - theta_pre): kp1_cossim_to_solution = cos(-kp1, d) and the
  mean, population std and spread (max - min) of cos(-k_i, d)."""

  cfg: models.ModelConfig
  k: int = 3
  parallel: int = 1
  with_reference: bool = False
  name: str = 'counterfactual_validator'
  cadence: str = 'early'  # as counterfactual
  needs: frozenset = frozenset()

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    grads = _shuffled_grads(info, self.k + 1, self.parallel)
    flat_KxD = jax.vmap(lambda t: common.flat_non_bias(t, self.cfg))(grads)
    kp1 = jnp.mean(flat_KxD, axis=0)
    k_means = (jnp.sum(flat_KxD, axis=0) - flat_KxD) / self.k  # leave-one-out means
    norms = jnp.linalg.norm(k_means, axis=1)
    n_kp1 = jnp.linalg.norm(kp1)
    cos_k = jax.vmap(lambda v: common.cos(v, kp1))(k_means)
    m = {'kp1_content_norm': n_kp1, 'k_content_norm_max': jnp.max(norms),
         'k_content_norm_min': jnp.min(norms), 'k_content_norm_mean': jnp.mean(norms),
         'kp1_norm_strictly_lower': (n_kp1 < jnp.min(norms)).astype(jnp.float32),
         'norm_convergence_gap': (jnp.mean(norms) - n_kp1) / n_kp1,
         'k_to_kp1_cossim_mean': jnp.mean(cos_k), 'k_to_kp1_cossim_min': jnp.min(cos_k)}
    if self.with_reference:
      d = (common.flat_non_bias(info.reference, self.cfg)
           - common.flat_non_bias(info.params_before, self.cfg))
      sol = jax.vmap(lambda v: common.cos(-v, d))(k_means)
      m.update({'kp1_cossim_to_solution': common.cos(-kp1, d),
                'k_cossim_to_solution_mean': jnp.mean(sol),
                'k_cossim_to_solution_std': jnp.std(sol),
                'k_cossim_to_solution_spread': jnp.max(sol) - jnp.min(sol)})
    return state, m, jnp.array(True)


# -- declarations (probes.registry) -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
  """config.probes.counterfactual (shared by the validator): K shuffled replays per
  firing, a window of ``window`` firings, ``parallel`` replays at once (0: all K), every
  epoch below ``every_epoch_until``."""

  k: int = 3
  window: int = 20
  parallel: int = 1
  every_epoch_until: int = 50

  def __post_init__(self):
    from probes import registry  # pylint: disable=g-import-not-at-top
    for field, lo in (('k', 1), ('window', 1), ('parallel', 0), ('every_epoch_until', 0)):
      registry.check_int(getattr(self, field), field, lo,
                         note=' (0: all k at once)' if field == 'parallel' else '')


def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  needs = registry.Needs(named=True, tasks=registry.CYCLIC_TASKS)
  registry.register(
      'counterfactual', lambda ctx, o: Counterfactual(
          ctx.model, k=o.k, window=o.window, parallel=o.parallel,
          with_reference=ctx.reference),
      needs=needs, groups=('interventions',), rank=210, options=Options,
      memory=lambda o, sizes: _memory(o, sizes, 2 * o.window + o.k))
  registry.register(
      'counterfactual_validator', lambda ctx, o: CounterfactualValidator(
          ctx.model, k=o.k, parallel=o.parallel, with_reference=ctx.reference),
      needs=needs, options=Options, options_key='counterfactual',
      memory=lambda o, sizes: _memory(o, sizes, o.k + 1))


def _memory(o: Options, sizes, vectors: int) -> int:
  """``vectors`` parameter-sized arrays (the window, the stacked replay gradients) and, per
  replay running at once, a copy of the training state and one batch's activations."""
  at_once = o.k if o.parallel <= 0 else min(o.parallel, o.k)
  return 4 * sizes.params * (vectors + 4 * at_once) + (
      at_once * sizes.batch_size * sizes.example_bytes)


_register()
