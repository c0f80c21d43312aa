"""Probes of the optimisation trajectory, accumulated inside the scanned epoch.

parameter_delta, path_length and training_diagnostics, with the reference's keys; see
docs/probes.md for the definitions and where ours differ.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _tree_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _tree_dist(a, b):
  return _tree_norm(jax.tree.map(jnp.subtract, a, b))


@dataclasses.dataclass(frozen=True)
class ParameterDelta:
  """absolute_delta = |theta - theta_prev|, relative_delta = that / |theta_prev|, param_norm,
  over all parameters; theta_prev is the previous probe epoch's (the initial weights the
  first time, where the reference emits nothing)."""

  name: str = 'parameter_delta'
  needs: frozenset = frozenset()

  def init(self, params):
    return {'prev': params}

  def on_epoch(self, state, info):
    delta = _tree_dist(info.params, state['prev'])
    m = {'absolute_delta': delta, 'relative_delta': delta / _tree_norm(state['prev']),
         'param_norm': _tree_norm(info.params)}
    return {'prev': info.params}, m, jnp.array(True)


@dataclasses.dataclass(frozen=True)
class PathLength:
  """path_length = sum over every optimiser step of |theta_after - theta_before|;
  net_displacement = |theta - theta_0|; path_efficiency = net / path (1 if path = 0)."""

  name: str = 'path_length'
  needs: frozenset = frozenset({'steps'})

  def init(self, params):
    return {'origin': params, 'path': jnp.zeros((), jnp.float32)}

  def on_step(self, state, s):
    return {**state, 'path': state['path'] + _tree_dist(s.params_after, s.params_before)}

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
