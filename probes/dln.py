"""Probes of the Training-Dynamics codebase (issue 16): deep-linear-network weight metrics
(``dln``) and the exact gradient-noise quantities (``gradient_noise``, any model).

``gradient_noise`` follows that codebase's ``_gradient_traces``: per-example gradients g_i
(``vmap`` of ``grad``) of the training objective over the whole training set, their mean
g = (1/N) sum g_i, the noise n_i = g_i - g, and
  grad_norm_sq = |g|^2, trace_sigma = Tr(Sigma) = (1/N) sum |n_i|^2,
  trace_h_sigma = Tr(H Sigma) = (1/N) sum n_i^T H n_i,
H the Hessian of the training loss, applied by forward-over-reverse Hessian-vector products
(never materialised). Rows go in chunks of ``chunk`` examples (a first pass for g, a second
for the noise), so memory holds ``chunk`` gradients at a time; each HVP also runs over the
training set in chunks. The codebase evaluates these on its test sample, which for its
online teachers is a draw of the same distribution; here they are those of the training
objective the optimiser follows (L1 penalty included; no dropout).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ordered_jax import models


@dataclasses.dataclass(frozen=True)
class DLN:
  """weight_norm = |vec theta|; per layer l (W_l in [out, in], l = 0 the input layer):
  layer_norm/l = |W_l|_F, gram_norm/l = |W_l W_l^T|_F, balance/l = |W_l W_l^T -
  W_{l+1}^T W_{l+1}|_F (l < L - 1; conserved by gradient flow); effective_norm =
  |W_{L-1} ... W_0|_F and, with a teacher W*, teacher_distance = |W_{L-1} ... W_0 - W*|_F."""

  depth: int
  teacher_W: Any = None  # numpy [out, in], or None (no teacher_distance)
  name: str = 'dln'
  needs: frozenset = frozenset()
  weight_only: bool = True

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    return state, dln_metrics(info.params, self.teacher_W), jnp.array(True)


def dln_metrics(params, teacher_W=None) -> dict:
  """The ``DLN`` probe's metrics of one dln's parameters (see its docstring)."""
  ws = models.dln_weights(params)
  fro = lambda a: jnp.sqrt(jnp.sum(jnp.square(a)))  # noqa: E731
  m = {'weight_norm': jnp.sqrt(sum(jnp.sum(jnp.square(w)) for w in ws))}
  for l, w in enumerate(ws):
    m[f'layer_norm/{l}'] = fro(w)
    m[f'gram_norm/{l}'] = fro(w @ w.T)
    if l + 1 < len(ws):
      m[f'balance/{l}'] = fro(w @ w.T - ws[l + 1].T @ ws[l + 1])
  product = models.dln_product(params)
  m['effective_norm'] = fro(product)
  if teacher_W is not None:
    m['teacher_distance'] = fro(product - jnp.asarray(teacher_W, product.dtype))
  return m


@dataclasses.dataclass(frozen=True)
class GradientNoise:
  """grad_norm_sq, trace_sigma and (``hessian``) trace_h_sigma over the training set; see
  the module docstring."""

  chunk: int = 64
  hessian: bool = True
  name: str = 'gradient_noise'
  needs: frozenset = frozenset()
  weight_only: bool = True

  def init(self, params):
    del params
    return {}

  def on_epoch(self, state, info):
    m = gradient_noise(info.loss_fn, info.params, info.train_NxC, self.chunk, self.hessian)
    return state, m, jnp.array(True)


def _chunks(rows_NxC, size: int):
  """Rows padded (with row 0, masked out) to [n, size, C] and masks [n, size]."""
  n = rows_NxC.shape[0]
  size = max(1, min(size, n))
  k = -(-n // size)
  idx = jnp.arange(k * size)
  rows = rows_NxC[jnp.where(idx < n, idx, 0)].reshape(k, size, -1)
  return rows, (idx < n).reshape(k, size)


def gradient_noise(loss_fn, params, rows_NxC, chunk: int = 64, hessian: bool = True) -> dict:
  """|g|^2, Tr(Sigma) and Tr(H Sigma) of ``loss_fn(params, rows, mask, key)`` (a masked
  mean over rows) over ``rows_NxC``, ``chunk`` rows at a time (module docstring)."""
  flat, unravel = ravel_pytree(params)
  n = rows_NxC.shape[0]
  rows_KxSxC, mask_KxS = _chunks(rows_NxC, chunk)

  def chunk_loss(p, rows, mask):  # a chunk's masked mean; x its count = its sum of losses
    return loss_fn(p, rows, mask, None)

  def sum_grad(total, xs):
    rows, mask = xs
    g = ravel_pytree(jax.grad(chunk_loss)(params, rows, mask))[0]
    return total + g * jnp.sum(mask), None

  g_sum, _ = jax.lax.scan(sum_grad, jnp.zeros_like(flat), (rows_KxSxC, mask_KxS))
  g_mean = g_sum / n

  def example_grad(row):
    return ravel_pytree(jax.grad(chunk_loss)(params, row[None], jnp.ones((1,), bool)))[0]

  def hvp(v):  # H v, H the Hessian of the mean loss over all rows
    def body(total, xs):
      rows, mask = xs
      grad = lambda p: ravel_pytree(jax.grad(chunk_loss)(p, rows, mask))[0]  # noqa: E731
      return total + jax.jvp(grad, (params,), (unravel(v),))[1] * jnp.sum(mask), None

    total, _ = jax.lax.scan(body, jnp.zeros_like(flat), (rows_KxSxC, mask_KxS))
    return total / n

  def noise_sums(totals, xs):
    rows, mask = xs
    noise_SxP = (jax.vmap(example_grad)(rows) - g_mean) * mask[:, None]
    tr = totals[0] + jnp.sum(jnp.square(noise_SxP))
    th = totals[1]
    if hessian:
      th = th + jnp.sum(noise_SxP * jax.vmap(hvp)(noise_SxP))
    return (tr, th), None

  zero = jnp.zeros((), flat.dtype)
  (tr, th), _ = jax.lax.scan(noise_sums, (zero, zero), (rows_KxSxC, mask_KxS))
  m = {'grad_norm_sq': jnp.sum(jnp.square(g_mean)), 'trace_sigma': tr / n}
  if hessian:
    m['trace_h_sigma'] = th / n
  return m


# -- declarations (probes.registry) -----------------------------------------------------------

def teacher_matrix(config):
  """The teacher W* of a teacher task when every run shares it (a diagonal teacher, or
  one data seed), else None (the dln probe then has no teacher_distance)."""
  from ordered_jax import runs, teacher  # pylint: disable=g-import-not-at-top
  if not runs.is_teacher(config):
    return None
  kind = config.task.strip().partition(':')[2]
  seeds = {r.data_seed for r in runs.expand(config)}
  kw = runs.teacher_kw(config)
  if (kind == 'random' or kw['rotate']) and len(seeds) != 1:
    return None
  t = config.teacher
  return teacher.matrix(kind, t.dim, t.scale, next(iter(seeds)), **kw)


@dataclasses.dataclass(frozen=True)
class NoiseOptions:
  """config.probes.gradient_noise: ``chunk`` per-example gradients held at once; also
  Tr(H Sigma) when ``hessian``."""

  chunk: int = 64
  hessian: bool = True

  def __post_init__(self):
    from probes import registry  # pylint: disable=g-import-not-at-top
    registry.check_int(self.chunk, 'chunk', 1)
    registry.check_bool(self.hessian, 'hessian')


def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  registry.register('dln', lambda ctx, _: DLN(ctx.model.depth,
                                              teacher_W=teacher_matrix(ctx.config)),
                    needs=registry.Needs(models=('dln',)),
                    support_note='teacher_distance: task teacher')
  registry.register('gradient_noise',
                    lambda ctx, o: GradientNoise(chunk=o.chunk, hessian=o.hessian),
                    options=NoiseOptions, memory=_noise_memory)


def _noise_memory(o: NoiseOptions, sizes) -> int:
  """``chunk`` per-example gradients (at most the training set's), a few more vectors for
  the mean and the HVPs, and the chunk's activations."""
  rows = min(o.chunk, sizes.n_train) if sizes.n_train else o.chunk
  return 4 * sizes.params * (rows + 6) + rows * sizes.example_bytes


_register()
