"""Curvature of the training loss: exact Hessian-vector products, Lanczos, Hutchinson.

The loss is the mean cross-entropy on a fixed probe batch (the first ``batch_size``
training pairs) in eval mode (no dropout) and without weight decay (AdamW's decay is not
part of the loss). Hv is forward-over-reverse, ``jvp(grad(loss))``: exact, no finite
difference, no dropout noise (the reference's hessian hook has both problems).

Metrics: ``lambda_max`` and ``top_eigenvalues`` (Lanczos Ritz values, k largest),
``trace`` (Hutchinson, Rademacher probes), ``edge_of_stability_ratio`` = lambda_max /
(2 / lr) (1 = gradient descent's stability edge), and for Adam the preconditioned
sharpness ``preconditioned_lambda_max`` = lambda_max(P^-1/2 H P^-1/2), P = diag(sqrt(v_hat)
+ eps), with ``preconditioned_eos_ratio`` against (2 + 2 b1) / ((1 - b1) lr) (Cohen et al.,
2022). Cost per firing: lanczos_steps (x2 with Adam) + hutchinson_samples HVPs on the
probe batch, each about 1.4 gradients of it (48 HVPs on 512 pairs ~ 135 training steps of
256); memory lanczos_steps parameter vectors.

Cadence: at a probe epoch, once ``every_n_steps`` optimiser steps have passed since it last
fired (at the first probe epoch at or after each multiple of every_n_steps, epoch 0
included; 0 = every probe epoch). The test reads only the epoch, which every run of a batch
shares, so skipped probe epochs cost nothing under ``vmap``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg  # pylint: disable=unused-import
import optax
from jax.flatten_util import ravel_pytree


def hvp(loss: Callable, params, v):
  """H(params) v for a scalar ``loss(params)``, forward-over-reverse."""
  return jax.jvp(jax.grad(loss), (params,), (v,))[1]


def lanczos(matvec: Callable, dim: int, steps: int, key) -> jax.Array:
  """Ritz values (ascending) of a symmetric operator after ``steps`` Lanczos iterations,
  with full reorthogonalisation (two passes of classical Gram-Schmidt per step)."""
  v0 = jax.random.normal(key, (dim,), jnp.float32)
  v0 = v0 / jnp.linalg.norm(v0)

  def body(i, carry):
    basis, alphas, betas, v, v_prev, beta = carry
    basis = basis.at[i].set(v)
    w = matvec(v) - beta * v_prev
    alpha = jnp.dot(w, v)
    w = w - alpha * v
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    beta_next = jnp.linalg.norm(w)
    v_next = jnp.where(beta_next > 1e-10, w / jnp.where(beta_next > 1e-10, beta_next, 1.0),
                       jnp.zeros_like(w))
    return (basis, alphas.at[i].set(alpha), betas.at[i].set(beta_next), v_next, v, beta_next)

  init = (jnp.zeros((steps, dim), jnp.float32), jnp.zeros((steps,)), jnp.zeros((steps,)),
          v0, jnp.zeros_like(v0), jnp.zeros(()))
  _, alphas, betas, _, _, _ = jax.lax.fori_loop(0, steps, body, init)
  # Pure JAX (bisection), not LAPACK: see probes.spectra for why no probe calls LAPACK.
  return jax.scipy.linalg.eigh_tridiagonal(alphas, betas[:-1], eigvals_only=True)


def hutchinson_trace(matvec: Callable, dim: int, samples: int, key) -> jax.Array:
  """Unbiased trace estimate: mean of z^T A z over Rademacher vectors z."""
  z = jax.random.rademacher(key, (samples, dim), jnp.float32)
  return jnp.mean(jax.lax.map(lambda zi: jnp.dot(zi, matvec(zi)), z))


def _adam_state(opt_state):
  """The ScaleByAdamState inside an optax state, or None."""
  found = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(x, optax.ScaleByAdamState)]
  return found[0] if found else None


@dataclasses.dataclass(frozen=True)
class Curvature:
  batch_size: int = 512
  adam: bool = True  # the optimiser is adamw or adam: report the preconditioned form too
  k: int = 3
  lanczos_steps: int = 20
  hutchinson_samples: int = 8
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  every_n_steps: int = 0  # 0: every probe epoch
  steps_per_epoch: int = 1
  probe_every: int = 1    # the probe-epoch cadence (config.probe_every)
  name: str = 'curvature'
  cadence: str = 'snapshot'  # ours: at snapshots (and every_n_steps)
  needs: frozenset = frozenset()
  weight_only: bool = True  # also probes untrained weights (epochs = 0)

  def init(self, params):
    del params
    return {}

  def fires(self, epoch):
    """Whether probe epoch ``epoch`` crosses a multiple of every_n_steps since the previous
    probe epoch (epoch 0 always; the last epoch of a run may fall between cadence points)."""
    if not self.every_n_steps:
      return jnp.array(True)
    prev = jnp.where(epoch > 0, (epoch - 1) // self.probe_every * self.probe_every, -1)
    n, spe = self.every_n_steps, self.steps_per_epoch
    return (epoch <= 0) | (epoch * spe // n > prev * spe // n)

  def on_epoch(self, state, info):
    fire = self.fires(info.epoch)
    zeros = {'lambda_max': 0.0, 'top_eigenvalues': jnp.zeros((self.k,)), 'trace': 0.0,
             'edge_of_stability_ratio': 0.0}
    if self.adam and _adam_state(info.opt_state) is not None:
      zeros.update(preconditioned_lambda_max=0.0, preconditioned_eos_ratio=0.0)
    zeros = jax.tree.map(lambda z: jnp.asarray(z, jnp.float32), zeros)
    m = jax.lax.cond(fire, lambda: self._measure(info), lambda: zeros)
    return state, m, fire

  def _measure(self, info):
    n = min(self.batch_size, info.train_NxC.shape[0])
    batch = info.train_NxC[:n]
    mask = jnp.ones((n,), bool)
    flat, unravel = ravel_pytree(info.params)
    dim = flat.shape[0]
    loss = lambda f: info.loss_fn(unravel(f), batch, mask, None)
    matvec = lambda v: hvp(loss, flat, v)
    k_lanczos, k_trace, k_pre = jax.random.split(info.key, 3)
    ritz = lanczos(matvec, dim, self.lanczos_steps, k_lanczos)
    top = ritz[::-1][:self.k]
    lr = info.learning_rate
    m = {'lambda_max': top[0], 'top_eigenvalues': top,
         'trace': hutchinson_trace(matvec, dim, self.hutchinson_samples, k_trace),
         'edge_of_stability_ratio': top[0] * lr / 2.0}
    adam = _adam_state(info.opt_state) if self.adam else None
    if adam is not None:
      v_hat = ravel_pytree(adam.nu)[0] / (1.0 - self.b2 ** jnp.maximum(adam.count, 1))
      inv_sqrt_p = 1.0 / jnp.sqrt(jnp.sqrt(v_hat) + self.eps)
      pre = lambda v: inv_sqrt_p * matvec(inv_sqrt_p * v)
      pre_max = lanczos(pre, dim, self.lanczos_steps, k_pre)[-1]
      m['preconditioned_lambda_max'] = pre_max
      m['preconditioned_eos_ratio'] = pre_max * lr * (1 - self.b1) / (2 + 2 * self.b1)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), m)

  def to_host(self, m: dict) -> dict:
    return {k: (v.tolist() if k == 'top_eigenvalues' else v) for k, v in m.items()}


# -- declarations (probes.registry) -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
  """config.probes.curvature: a fixed probe batch of the first ``batch_size`` training
  pairs, the top ``k`` eigenvalues from ``lanczos_steps`` Lanczos steps, Hutchinson's
  trace from ``hutchinson_samples`` probes, at most once per ``every_n_steps`` optimiser
  steps (0: every probe epoch)."""

  batch_size: int = 512
  k: int = 3
  lanczos_steps: int = 20
  hutchinson_samples: int = 8
  every_n_steps: int = 1000

  def __post_init__(self):
    from probes import registry  # pylint: disable=g-import-not-at-top
    for field in ('batch_size', 'k', 'lanczos_steps', 'hutchinson_samples'):
      registry.check_int(getattr(self, field), field, 1)
    if self.k > self.lanczos_steps:
      from ordered_jax import runs  # pylint: disable=g-import-not-at-top
      raise runs.ConfigError('k', f'must be <= lanczos_steps ({self.lanczos_steps}); '
                             f'got {self.k}')
    registry.check_int(self.every_n_steps, 'every_n_steps', 0,
                       note=' (0 = every probe epoch)')


def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  c = lambda ctx: ctx.config  # noqa: E731
  registry.register(
      'curvature', lambda ctx, o: Curvature(
          adam=c(ctx).optimizer in registry.ADAM_FAMILY, batch_size=o.batch_size, k=o.k,
          lanczos_steps=o.lanczos_steps, hutchinson_samples=o.hutchinson_samples,
          b1=c(ctx).adam_b1, b2=c(ctx).adam_b2, eps=c(ctx).adam_eps,
          every_n_steps=o.every_n_steps, steps_per_epoch=ctx.steps_per_epoch,
          probe_every=c(ctx).probe_every),
      needs=registry.Needs(fixed_steps=lambda o: bool(o.every_n_steps)),
      groups=('full',), rank=300, options=Options, memory=_memory)


def _memory(o: Options, sizes) -> int:
  """The Lanczos basis and Hutchinson's probe vectors, each parameter-sized and held twice
  (XLA's count: the loop's carry, the random bits), a few more for the HVP, and the probe
  batch's activations twice (forward over reverse). Adam's preconditioned pass runs after
  the first and reuses its memory."""
  vectors = 2 * (o.lanczos_steps + o.hutchinson_samples) + 6
  rows = min(o.batch_size, sizes.n_train) if sizes.n_train else o.batch_size
  return 4 * sizes.params * vectors + 2 * rows * sizes.example_bytes


_register()
