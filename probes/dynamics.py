"""Probes of the optimisation trajectory, accumulated inside the scanned epoch.

parameter_delta, path_length and training_diagnostics, with the reference's keys; see
docs/probes.md for the definitions and where ours differ.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from probes import common, spectra


def _tree_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _tree_dist(a, b):
  return _tree_norm(jax.tree.map(jnp.subtract, a, b))


@dataclasses.dataclass(frozen=True)
class ParameterDelta:
  """absolute_delta = |theta - theta_prev|, relative_delta = that / |theta_prev|, param_norm,
  over all parameters; theta_prev is the weights at the previous firing (the previous epoch
  at the reference's cadence). As the reference, the first firing only stores them and
  emits nothing."""

  name: str = 'parameter_delta'
  needs: frozenset = frozenset()

  def init(self, params):
    return {'prev': params, 'seen': jnp.array(False)}

  def on_epoch(self, state, info):
    delta = _tree_dist(info.params, state['prev'])
    m = {'absolute_delta': delta, 'relative_delta': delta / _tree_norm(state['prev']),
         'param_norm': _tree_norm(info.params)}
    return {'prev': info.params, 'seen': jnp.array(True)}, m, state['seen']


@dataclasses.dataclass(frozen=True)
class PathLength:
  """path_length = sum of |theta_after - theta_before| over the optimiser steps;
  net_displacement = |theta - theta_0|; path_efficiency = net / path (1 if path = 0).
  As the reference (its first POST_STEP call only stores the weights), theta_0 is the
  weights after the run's first step and the path counts the steps after it."""

  name: str = 'path_length'
  needs: frozenset = frozenset({'steps'})

  def init(self, params):
    return {'origin': params, 'path': jnp.zeros((), jnp.float32)}

  def on_step(self, state, s):
    # The run's first step (epoch 0, step 0: shared by every run of a batch, so a real
    # conditional under vmap) sets the origin; later steps add their length.
    first = (jnp.asarray(s.epoch) == 0) & (jnp.asarray(s.step) == 0)
    origin = jax.lax.cond(first, lambda o: s.params_after, lambda o: o, state['origin'])
    step = jnp.where(first, 0.0, _tree_dist(s.params_after, s.params_before))
    return {'origin': origin, 'path': state['path'] + step}

  def on_epoch(self, state, info):
    net = _tree_dist(info.params, state['origin'])
    path = state['path']
    eff = jnp.where(path > 0, net / jnp.where(path > 0, path, 1.0), 1.0)
    return state, {'path_length': path, 'net_displacement': net,
                   'path_efficiency': eff}, jnp.array(True)


@dataclasses.dataclass(frozen=True)
class TrainingDiagnostics:
  """Statistics over the last epoch's steps of the batch loss, the gradient norm |g|, the
  weight norm after the step and the update ratio lr |g| / |theta| (all parameters)."""

  steps_per_epoch: int
  name: str = 'training_diagnostics'
  needs: frozenset = frozenset({'steps'})

  def init(self, params):
    del params
    z = jnp.zeros((self.steps_per_epoch,), jnp.float32)
    return {'loss': z, 'grad_norm': z, 'weight_norm': z, 'update_ratio': z}

  def on_step(self, state, s):
    if not s.record:  # every slot is rewritten in the probe epoch
      return state
    g, w = _tree_norm(s.grads), _tree_norm(s.params_after)
    new = {'loss': s.loss, 'grad_norm': g, 'weight_norm': w,
           'update_ratio': s.learning_rate * g / w}
    return {k: state[k].at[s.step].set(v) for k, v in new.items()}

  def on_epoch(self, state, info):
    del info
    loss, g, ratio = state['loss'], state['grad_norm'], state['update_ratio']
    d = loss - jnp.mean(loss)
    m = {'loss_mean': jnp.mean(loss), 'loss_std': jnp.std(loss, ddof=1),
         'loss_autocorrelation': jnp.sum(d[:-1] * d[1:]) / jnp.sum(d * d),
         'grad_norm_mean': jnp.mean(g), 'grad_norm_std': jnp.std(g, ddof=1),
         'grad_norm_max': jnp.max(g),
         'update_ratio_mean': jnp.mean(ratio), 'update_ratio_std': jnp.std(ratio, ddof=1),
         'weight_norm': state['weight_norm'][-1]}
    m['loss_volatility'] = m['loss_std'] / jnp.abs(m['loss_mean'])
    m['grad_norm_cv'] = m['grad_norm_std'] / m['grad_norm_mean']
    return state, m, jnp.array(True)


@dataclasses.dataclass(frozen=True)
class BatchDynamics:
  """Geometry of consecutive batch gradients x = flat(g_batch), over a FIFO of the last
  ``max_lag`` of them that persists across epochs (written at every step). Per step of a
  probe epoch, for each lag l <= the FIFO's length: cos(x, x_{-l}) (steps with |x| < 1e-12
  skipped). Per probe epoch: lag_{l} = mean of that epoch's cosines (the reference's
  per-epoch value), autocorrelation_mean = mean over the lags present,
  efficiency_{w} = |sum of the last w| / sum of their norms, and from the eigenvalues of the
  uncentred Gram matrix of the FIFO: top1_variance = l_1 / sum l, effective_rank =
  exp(entropy of l / sum l)."""

  lags: tuple = (1, 2, 5, 10, 20, 50)
  windows: tuple = (2, 5, 10, 20, 50)
  max_lag: int = 50
  name: str = 'batch_dynamics'
  needs: frozenset = frozenset({'steps'})
  masks_inactive: bool = True  # a stopped run's state is left as it was (no end-of-epoch copy)

  # The ring has one slot more than max_lag: each step writes its gradient first and then
  # reads the lagged ones from the updated ring (none of them is the slot just written), so
  # XLA updates the ring in place instead of copying it every step.

  def init(self, params):
    d = common.flat_non_bias_raw(params).shape[0]
    z = jnp.zeros((len(self.lags),), jnp.float32)
    return {'buf': jnp.zeros((self.max_lag + 1, d)), 'norms': jnp.zeros((self.max_lag + 1,)),
            'count': jnp.zeros((), jnp.int32), 'cos_sum': z, 'cos_n': z}

  def on_step(self, state, s):
    depth = self.max_lag + 1
    count, active = state['count'], jnp.asarray(s.active)
    slot = count % depth
    # A stopped run rewrites its oldest row with itself: its FIFO stays as it was.
    x = jnp.where(active, common.flat_non_bias_raw(s.grads),
                  jax.lax.dynamic_index_in_dim(state['buf'], slot, 0, False))
    n = jnp.linalg.norm(x)
    buf = jax.lax.dynamic_update_slice(state['buf'], x[None], (slot, 0))
    norms = state['norms'].at[slot].set(n)
    if not s.record:  # only the FIFO outlives the epoch; the cosines are the probe epoch's
      return {**state, 'buf': buf, 'norms': norms, 'count': count + active.astype(jnp.int32)}
    lags = jnp.array(self.lags)
    slots = (count - lags) % depth
    lag_norms = norms[slots]
    c = jnp.take(buf, slots, axis=0) @ x / (n * lag_norms + 1e-8)
    ok = ((lags <= jnp.minimum(count, self.max_lag)) & (n >= 1e-12) & (lag_norms >= 1e-12)
          & active)
    return {'buf': buf, 'norms': norms, 'count': count + active.astype(jnp.int32),
            'cos_sum': state['cos_sum'] + jnp.where(ok, c, 0.0),
            'cos_n': state['cos_n'] + ok.astype(jnp.float32)}

  def on_epoch(self, state, info):
    depth = self.max_lag + 1
    filled = jnp.minimum(state['count'], self.max_lag)
    m = {}
    lag_means = state['cos_sum'] / jnp.maximum(state['cos_n'], 1.0)
    for j, lag in enumerate(self.lags):
      m[f'lag_{lag}'] = jnp.where(state['cos_n'][j] > 0, lag_means[j], jnp.nan)
    has = state['cos_n'] > 0
    m['autocorrelation_mean'] = jnp.sum(jnp.where(has, lag_means, 0.0)) / jnp.maximum(
        jnp.sum(has), 1)
    age = (state['count'] - 1 - jnp.arange(depth)) % depth  # 0 = newest
    g = spectra.gram(state['buf'])  # [depth, depth]: one pass over the FIFO serves all
    for w in self.windows:  # |sum of the last w|^2 = sel^T G sel
      sel = (age < jnp.minimum(w, filled)).astype(jnp.float32)
      total = jnp.sqrt(jnp.maximum(sel @ g @ sel, 0.0))
      m[f'efficiency_{w}'] = jnp.where(w <= filled, total / jnp.sum(sel * state['norms']),
                                       jnp.nan)
    use = ((age < filled) & (state['norms'] >= 1e-12)).astype(jnp.float32)
    m[spectra.GRAM] = g * use[:, None] * use[None, :]
    active = jnp.asarray(info.active)
    reset = {**state, 'cos_sum': jnp.where(active, 0.0, state['cos_sum']),
             'cos_n': jnp.where(active, 0.0, state['cos_n'])}
    return reset, m, filled >= 1

  def to_host(self, m: dict) -> dict:
    """The Gram spectrum's summaries (``probes.spectra``); lags and windows the FIFO cannot
    serve yet are left out, as in the reference."""
    m = dict(m)
    lam = spectra.eigenvalues(m.pop(spectra.GRAM))
    q = lam / np.sum(lam)
    m['top1_variance'] = np.max(lam) / np.sum(lam)
    m['effective_rank'] = np.exp(-np.sum(q[q > 0] * np.log(q[q > 0])))
    return {k: v for k, v in m.items() if not (np.ndim(v) == 0 and np.isnan(v))}


# -- declarations (probes.registry) -----------------------------------------------------------

def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  for name, cls, rank in (('parameter_delta', ParameterDelta, 100),
                          ('path_length', PathLength, 110),
                          ('batch_dynamics', BatchDynamics, 120)):
    lag = getattr(cls, 'max_lag', 0)  # BatchDynamics keeps its last max_lag gradients
    registry.register(name, lambda ctx, _, cls=cls: cls(), groups=('observers',), rank=rank,
                      memory=(lambda _, sizes, n=lag: 4 * sizes.params * (n + 1))
                      if lag else None)
  registry.register('training_diagnostics',
                    lambda ctx, _: TrainingDiagnostics(ctx.steps_per_epoch),
                    needs=registry.Needs(fixed_steps=True), groups=('observers',), rank=130)


_register()
