"""Step-level probes in bursts: hessian (entanglement) and adam_dynamics.

As in the reference, they act at optimiser steps g (0-based, counted over the whole run:
g = epoch * steps_per_epoch + step) with g >= warmup and g % every < burst. The burst
test depends only on g, which every run of a batch shares, so under ``vmap`` it stays a
real ``lax.cond`` and inactive steps cost nothing. Values are reported as the reference's
per-epoch lists (one entry per active step) for the steps of the probe epoch; with
``probe_every = 1`` that is every epoch, as the reference writes them. Between probe epochs
(``StepInfo.record`` False) nothing is measured, except what the next epoch's first step
needs (hessian's previous gradient, and its entanglement at an epoch's last step for the
coherence across the boundary), so the values are those of probing every epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probes import common


def _cos(u, v, eps=1e-12):
  nu, nv = jnp.linalg.norm(u), jnp.linalg.norm(v)
  return jnp.where((nu < 1e-12) | (nv < 1e-12), 0.0, jnp.dot(u, v) / (nu * nv + eps))


@dataclasses.dataclass(frozen=True)
class _Burst:
  """Shared burst schedule and per-epoch list storage of named step metrics."""

  steps_per_epoch: int
  every: int
  burst: int
  warmup: int
  keys: tuple = ()

  def active(self, s):
    g = s.epoch * self.steps_per_epoch + s.step
    return (g >= self.warmup) & (g % self.every < self.burst)

  def _empty(self):
    z = jnp.zeros((self.steps_per_epoch,), jnp.float32)
    return {'active': jnp.zeros((self.steps_per_epoch,), bool), **{k: z for k in self.keys}}

  def _store(self, rec, s, on, values: dict):
    out = {'active': rec['active'].at[s.step].set(on)}
    for k in self.keys:
      out[k] = rec[k].at[s.step].set(values[k])
    return out

  def on_epoch(self, state, info):
    del info
    rec = state['rec']
    return state, dict(rec), jnp.any(rec['active'])

  def to_host(self, m: dict) -> dict:
    on = np.asarray(m['active'], bool)
    return {k: np.asarray(v)[on].tolist() for k, v in m.items() if k != 'active'}


HESSIAN_KEYS = ('entanglement_norm', 'content_norm', 'observed_grad_norm',
                'entanglement_energy_ratio', 'entanglement_content_cossim', 'rayleigh_quotient',
                'amplification_ratio', 'edge_of_stability', 'entanglement_coherence')
HESSIAN_REFERENCE_KEYS = ('entanglement_cossim_to_solution', 'content_cossim_to_solution')
HESSIAN_PARAM_KEYS = ('entanglement_norm', 'content_norm', 'entanglement_energy_ratio')


def hessian_keys(cfg, with_reference: bool) -> tuple:
  """Every key the hessian probe records: global, then per non-bias parameter
  (``{metric}/{reference name}``), each with the solution tier when asked."""
  ref = HESSIAN_REFERENCE_KEYS if with_reference else ()
  per = tuple(f'{k}/{n}' for n in common.non_bias_names(cfg) for k in HESSIAN_PARAM_KEYS + ref)
  return HESSIAN_KEYS + ref + per


def _solution(s):
  """flat(theta_ref - theta) at the parameters after the step (raw layout: a permutation
  of the reference's flat(), so cosines are the same)."""
  return common.flat_non_bias_raw(s.reference) - common.flat_non_bias_raw(s.params_after)


@dataclasses.dataclass(frozen=True)
class Hessian(_Burst):
  """The cross-batch entanglement eta H_B(theta) g_A at each active step: A is the previous
  step's batch, B the current one, theta the parameters before the current step. Hv is
  exact (jvp of grad) with the step's own dropout key, where the reference takes a finite
  difference of two gradients with different dropout masks (noise 1e4 times the signal).
  With ent = eta H_B g_A and content = g_B + ent (flat, non-bias):
  entanglement_norm |ent|, content_norm, observed_grad_norm |g_B|, entanglement_energy_ratio
  |ent|^2 / (|g_B|^2 + 1e-12), entanglement_content_cossim, rayleigh_quotient g_A.H g_A /
  |g_A|^2, amplification_ratio |H g_A| / |g_A|, edge_of_stability = 2 eta amplification,
  entanglement_coherence cos(ent, previous active step's ent) within a burst (else NaN).
  With reference weights (``keys`` then include HESSIAN_REFERENCE_KEYS), d = theta_ref -
  theta after the step: entanglement_cossim_to_solution cos(-ent, d) and
  content_cossim_to_solution cos(-content, d)."""

  name: str = 'hessian'
  needs: frozenset = frozenset({'steps'})
  keys: tuple = HESSIAN_KEYS
  cfg: Any = None  # the model config: needed for the per-parameter keys (hessian_keys)

  def init(self, params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    d = common.flat_non_bias_raw(params).shape[0]
    return {'prev_grads': zeros, 'prev_ent': jnp.zeros((d,)),
            'prev_active': jnp.array(False), 'rec': self._empty()}

  def on_step(self, state, s):
    # A previous step exists from the run's second step on. The test reads only the step
    # count, which every run of a batch shares (a per-run flag here would turn the cond
    # into a select under vmap: an HVP at every step).
    on = self.active(s) & (s.epoch * self.steps_per_epoch + s.step > 0)
    if not s.record:  # only the last step's entanglement can reach the next epoch
      on = on & (s.step == s.steps - 1) if s.steps is not None else on

    def measure(_):
      loss = lambda p: s.loss_fn(p, s.batch_BxC, s.mask_B, s.dropout_key)
      hv = jax.jvp(jax.grad(loss), (s.params_before,), (state['prev_grads'],))[1]
      g_a = common.flat_non_bias_raw(state['prev_grads'])
      hv_f = common.flat_non_bias_raw(hv)
      g_b = common.flat_non_bias_raw(s.grads)
      ent = s.learning_rate * hv_f
      content = g_b + ent
      n_ga, n_ent, n_gb = jnp.linalg.norm(g_a), jnp.linalg.norm(ent), jnp.linalg.norm(g_b)
      amp = jnp.linalg.norm(hv_f) / n_ga
      vals = {'entanglement_norm': n_ent, 'content_norm': jnp.linalg.norm(content),
              'observed_grad_norm': n_gb,
              'entanglement_energy_ratio': n_ent ** 2 / (n_gb ** 2 + 1e-12),
              'entanglement_content_cossim': _cos(ent, content),
              'rayleigh_quotient': jnp.dot(g_a, hv_f) / n_ga ** 2,
              'amplification_ratio': amp, 'edge_of_stability': 2 * s.learning_rate * amp,
              'entanglement_coherence': jnp.where(state['prev_active'],
                                                  _cos(ent, state['prev_ent']), jnp.nan)}
      if 'content_cossim_to_solution' in self.keys:
        d = _solution(s)
        vals['entanglement_cossim_to_solution'] = _cos(-ent, d)
        vals['content_cossim_to_solution'] = _cos(-content, d)
      if self.cfg is not None:  # per non-bias parameter, in the reference's names
        view = lambda t: common.raw_view(t, self.cfg)  # no transposes in the step
        hv_v, gb_v = view(hv), view(s.grads)
        d_v = view(jax.tree.map(jnp.subtract, s.reference, s.params_after)) if (
            'content_cossim_to_solution' in self.keys) else None
        for n in common.non_bias_names(self.cfg):
          if f'entanglement_norm/{n}' not in self.keys:
            continue
          e, gb = (s.learning_rate * hv_v[n]).ravel(), gb_v[n].ravel()
          vals[f'entanglement_norm/{n}'] = jnp.linalg.norm(e)
          vals[f'content_norm/{n}'] = jnp.linalg.norm(gb + e)
          vals[f'entanglement_energy_ratio/{n}'] = jnp.sum(e * e) / (jnp.sum(gb * gb) + 1e-12)
          if d_v is not None:
            vals[f'entanglement_cossim_to_solution/{n}'] = _cos(-e, d_v[n].ravel())
            vals[f'content_cossim_to_solution/{n}'] = _cos(-(gb + e), d_v[n].ravel())
      return vals, ent

    def skip(_):
      return {k: jnp.zeros((), jnp.float32) for k in self.keys}, state['prev_ent']

    vals, ent = jax.lax.cond(on, measure, skip, None)
    # prev_active: whether prev_ent is this step's (a step skipped between probe epochs
    # that was active only matters at the epoch's last step, which is measured).
    return {'prev_grads': s.grads, 'prev_ent': ent,
            'prev_active': on,
            'rec': self._store(state['rec'], s, on, vals) if s.record else state['rec']}


ADAM_KEYS = ('momentum_grad_cossim', 'amplification_ratio', 'update_deflection',
             'effective_lr_cv')
ADAM_REFERENCE_KEYS = ('momentum_solution_cossim', 'update_solution_cossim',
                       'grad_solution_cossim', 'optimizer_solution_amplification')


@dataclasses.dataclass(frozen=True)
class AdamDynamics(_Burst):
  """After each active step, from the optimiser state (non-bias parameters, flat): with
  m_hat, v_hat the bias-corrected moments, u = lr m_hat / (sqrt(v_hat) + eps) and
  l = lr / (sqrt(v_hat) + eps): momentum_grad_cossim cos(m, g), amplification_ratio
  |u| / (lr |g|), update_deflection |u - proj_g u| / |u|, effective_lr_cv = unbiased std(l)
  / mean(l). With reference weights (``keys`` then include ADAM_REFERENCE_KEYS), d =
  theta_ref - theta after the step and the descent directions -m, -u, -g (positive = toward
  the solution, as gradient_projection): momentum_, update_ and grad_solution_cossim, and
  optimizer_solution_amplification = update_ - grad_solution_cossim. Cosines are 0 when
  either norm is below 1e-12, as in the reference."""

  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  name: str = 'adam_dynamics'
  needs: frozenset = frozenset({'steps'})
  keys: tuple = ADAM_KEYS

  def init(self, params):
    del params
    return {'rec': self._empty()}

  def on_step(self, state, s):
    if not s.record:  # nothing outlives the epoch: every slot is rewritten when recorded
      return state
    on = self.active(s)

    def measure(_):
      adam = [x for x in jax.tree.leaves(
          s.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
              if isinstance(x, optax.ScaleByAdamState)][0]
      t = adam.count.astype(jnp.float32)
      m = common.flat_non_bias_raw(adam.mu)
      v_hat = common.flat_non_bias_raw(adam.nu) / (1 - self.b2 ** t)
      g = common.flat_non_bias_raw(s.grads)
      lr = s.learning_rate
      u = lr * (m / (1 - self.b1 ** t)) / (jnp.sqrt(v_hat) + self.eps)
      eff = lr / (jnp.sqrt(v_hat) + self.eps)
      proj = jnp.dot(u, g) / jnp.maximum(jnp.dot(g, g), 1e-30) * g
      vals = {'momentum_grad_cossim': _cos(m, g),
              'amplification_ratio': jnp.linalg.norm(u) / (lr * jnp.linalg.norm(g)),
              'update_deflection': jnp.linalg.norm(u - proj) / jnp.linalg.norm(u),
              'effective_lr_cv': jnp.std(eff, ddof=1) / jnp.mean(eff)}
      if 'grad_solution_cossim' in self.keys:
        d = _solution(s)
        vals.update({'momentum_solution_cossim': _cos(-m, d),
                     'update_solution_cossim': _cos(-u, d),
                     'grad_solution_cossim': _cos(-g, d)})
        vals['optimizer_solution_amplification'] = (vals['update_solution_cossim']
                                                    - vals['grad_solution_cossim'])
      return vals

    vals = jax.lax.cond(on, measure,
                        lambda _: {k: jnp.zeros((), jnp.float32) for k in self.keys}, None)
    return {'rec': self._store(state['rec'], s, on, vals)}


# -- declarations (probes.registry) -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BurstOptions:
  """config.probes.hessian / adam_dynamics: a burst of ``burst_length`` consecutive steps
  every ``every_n_steps`` optimiser steps, from step ``warmup`` on (the reference's)."""

  every_n_steps: int = 1000
  burst_length: int = 11
  warmup: int = 1000

  def __post_init__(self):
    from probes import registry  # pylint: disable=g-import-not-at-top
    for field in ('every_n_steps', 'burst_length', 'warmup'):
      registry.check_int(getattr(self, field), field, 0 if field == 'warmup' else 1)


def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  registry.register(
      'hessian', lambda ctx, o: Hessian(
          ctx.steps_per_epoch, every=o.every_n_steps, burst=o.burst_length, warmup=o.warmup,
          keys=hessian_keys(ctx.model, ctx.reference), cfg=ctx.model),
      needs=registry.Needs(named=True, tasks=registry.CYCLIC_TASKS,
                           fixed_steps=True),
      groups=('interventions',), rank=200, options=BurstOptions)
  c = lambda ctx: ctx.config  # noqa: E731
  registry.register(
      'adam_dynamics', lambda ctx, o: AdamDynamics(
          ctx.steps_per_epoch, every=o.every_n_steps, burst=o.burst_length, warmup=o.warmup,
          b1=c(ctx).adam_b1, b2=c(ctx).adam_b2, eps=c(ctx).adam_eps,
          keys=ADAM_KEYS + (ADAM_REFERENCE_KEYS if ctx.reference else ())),
      needs=registry.Needs(named=True, tasks=registry.CYCLIC_TASKS,
                           optimizers=registry.ADAM_FAMILY, fixed_steps=True),
      groups=('interventions',), rank=220, options=BurstOptions)


_register()
