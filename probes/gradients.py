"""Probes of the epoch-mean gradient: norms, consecutive (the reference's hooks).

g is the mean over the epoch's batches of the batch gradient, each at the parameters
before that batch's step, accumulated inside the scanned epoch.
"""

from __future__ import annotations

import dataclasses

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
