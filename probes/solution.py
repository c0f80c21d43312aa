"""Probes against reference ("solution") weights: gradient_projection, subspace_gradient_info.

The reference weights come from ``config.probes.reference_weights`` ('auto' = the final
weights of an earlier run of the same config in this workdir, as the paper did; or the
workdir of another run). In the paper's procedure the "solution" is the same run's own
final point, so for orderings that never generalise it is not a generalising solution.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ordered_jax import models
from probes import common, spectra


def _valid_cos(u, v):
  nu, nv = jnp.linalg.norm(u), jnp.linalg.norm(v)
  ok = (nu > 1e-12) & (nv > 1e-12)
  return jnp.where(ok, jnp.dot(u, v) / jnp.where(ok, nu * nv, 1.0), 0.0), ok


@dataclasses.dataclass(frozen=True)
class GradientProjection:
  """With d = theta_ref - theta_prev (theta_prev: the weights at the previous firing, the
  previous epoch at the reference's cadence), -g and disp = theta - theta_prev, over all
  parameters:
  overall_grad_cossim_to_solution = cos(-g, d), overall_disp_cossim_to_solution =
  cos(disp, d), per 2-D non-bias parameter grad_/disp_cossim_to_solution/{name}, the means
  of the per-parameter cosines over every parameter with non-zero norms (biases included),
  displacement_norm = |disp|, distance_to_reference = |theta_ref - theta|. As the
  reference, the first firing (no theta_prev yet) emits distance_to_reference only."""

  cfg: models.ModelConfig
  name: str = 'gradient_projection'
  needs: frozenset = frozenset({'grad_mean', 'reference'})

  def init(self, params):
    return {'prev': params, 'seen': jnp.array(False)}

  def to_host(self, m: dict) -> dict:
    m = dict(m)
    if not bool(m.pop('has_prev')):
      return {'distance_to_reference': m['distance_to_reference']}
    return m

  def on_epoch(self, state, info):
    ref = common.reference_view(info.reference, self.cfg)
    prev = common.reference_view(state['prev'], self.cfg)
    now = common.reference_view(info.params, self.cfg)
    grad = common.reference_view(info.grad_mean, self.cfg)
    names = list(ref)
    d = {n: (ref[n] - prev[n]).ravel() for n in names}
    neg_g = {n: -grad[n].ravel() for n in names}
    disp = {n: (now[n] - prev[n]).ravel() for n in names}
    cat = lambda t: jnp.concatenate([t[n] for n in names])
    m = {'overall_grad_cossim_to_solution': common.cos(cat(neg_g), cat(d)),
         'overall_disp_cossim_to_solution': common.cos(cat(disp), cat(d)),
         'displacement_norm': jnp.linalg.norm(cat(disp)),
         'distance_to_reference': jnp.linalg.norm(
             jnp.concatenate([(ref[n] - now[n]).ravel() for n in names]))}
    for kind, vec in (('grad', neg_g), ('disp', disp)):
      total, count = jnp.zeros(()), jnp.zeros(())
      for n in names:
        c, ok = _valid_cos(vec[n], d[n])
        total, count = total + c, count + ok
        if now[n].ndim >= 2 and 'bias' not in n:
          m[f'{kind}_cossim_to_solution/{n}'] = c
      m[f'mean_layer_{kind}_cossim_to_solution'] = total / jnp.maximum(count, 1.0)
    m['has_prev'] = state['seen']
    return {'prev': info.params, 'seen': jnp.array(True)}, m, jnp.array(True)


@dataclasses.dataclass(frozen=True)
class SubspaceGradientInfo:
  """Over a window of the last ``window`` probe epochs' flat(g) (from 2 on), mean-centred:
  singular values S (top q = min(n_components, members), exact, from the window's Gram
  matrix) and right singular vectors V. svd_total_variance = sum S^2 + 1e-8;
  dims_for_90pct = #(cumulative explained < 0.9) + 1; participation_ratio = (sum S^2)^2 /
  (sum S^4 + 1e-8); top_sv_ratio = S_1 / (sum S + 1e-8); top{1,5,10}_explained. With
  reference weights, s = flat(theta_ref - theta) / |.|, p = V^T s:
  grad_energy_fraction_toward_solution = sum S^2 p^2 / sum S^2 and top{k}_... over the
  first k components."""

  cfg: models.ModelConfig
  window: int = 50
  n_components: int = 20
  with_reference: bool = False
  name: str = 'subspace_gradient_info'
  needs: frozenset = frozenset({'grad_mean'})
  masks_inactive: bool = True  # common.window_push leaves a stopped run's window as it was

  def init(self, params):
    return common.window_init(common.flat_non_bias(params, self.cfg).shape[0], self.window)

  def on_epoch(self, state, info):
    new, n, valid, g = common.window_push(
        state, common.flat_non_bias(info.grad_mean, self.cfg), info.active)
    buf = new['buf']
    # The centred window's Gram matrix from the plain one the window keeps: with r = G v / n
    # (x_i . mean) and q = v G v / n^2 (|mean|^2), C = (G - r 1^T - 1 r^T + q) on the
    # members; no pass over the window, no centred copy of it.
    nf = n.astype(buf.dtype)
    r = g @ valid / nf
    centred = (g - r[:, None] - r[None, :] + valid @ r / nf) * valid[:, None] * valid[None, :]
    m = {spectra.GRAM: centred, 'members': n}  # spectrum: to_host
    if self.with_reference:
      sol = common.flat_non_bias(info.reference, self.cfg) - common.flat_non_bias(
          info.params, self.cfg)
      b = jnp.matmul(buf, sol / jnp.linalg.norm(sol), precision=jax.lax.Precision.HIGHEST)
      m['centred_dot_solution'] = (b - valid @ b / nf) * valid  # [window]
    return new, m, n >= 2

  def to_host(self, m: dict) -> dict:
    """The window's spectrum (``probes.spectra``). With centred = U S V^T, the Gram matrix
    is U S^2 U^T and V^T s = S^-1 U^T (centred s): the projections need no D-sized vector."""
    lam, u = np.linalg.eigh(np.asarray(m[spectra.GRAM], np.float64))
    lam, u = np.clip(lam[::-1], 0.0, None), u[:, ::-1]
    q = min(self.n_components, self.window)
    qn = min(int(m['members']), q)
    s2 = np.where(np.arange(q) < qn, lam[:q], 0.0)
    s = np.sqrt(s2)
    total = np.sum(s2) + 1e-8
    cum = np.cumsum(s2) / total
    out = {'svd_total_variance': total,
           'dims_for_90pct': int(np.sum(cum[:qn] < 0.9)) + 1,
           'participation_ratio': np.sum(s2) ** 2 / (np.sum(s2 ** 2) + 1e-8),
           'top_sv_ratio': s[0] / (np.sum(s) + 1e-8)}
    for k in (1, 5, 10):
      out[f'top{k}_explained'] = cum[min(k, qn) - 1]
    if 'centred_dot_solution' in m:
      proj = (u[:, :q].T @ np.asarray(m['centred_dot_solution'], np.float64)) / np.where(
          s > 0, s, 1.0)
      energy = s2 * proj ** 2
      out['grad_energy_fraction_toward_solution'] = np.sum(energy) / total
      for k in (1, 5, 10):
        if k <= q:
          out[f'top{k}_energy_fraction_toward_solution'] = np.sum(energy[:k]) / total
    return {k: v if isinstance(v, int) else float(v) for k, v in out.items()}


# -- declarations (probes.registry) -----------------------------------------------------------

def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  registry.register(
      'subspace_gradient_info',
      lambda ctx, _: SubspaceGradientInfo(ctx.model, with_reference=ctx.reference),
      needs=registry.Needs(named=True, tasks=registry.CYCLIC_TASKS),
      groups=('observers',), rank=90,
      memory=lambda _, sizes: 4 * sizes.params * (SubspaceGradientInfo.window + 1))
  registry.register(
      'gradient_projection', lambda ctx, _: GradientProjection(ctx.model),
      needs=registry.Needs(named=True, tasks=registry.CYCLIC_TASKS,
                           reference_weights=True),
      groups=('observers',), rank=400)


_register()
