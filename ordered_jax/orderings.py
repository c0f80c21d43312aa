"""Ordering strategies: the row order of the train table within each epoch.

The static orders (fixed-random, stride, target; alternating picks stride or target by
epoch parity) are computed once on the host with numpy. The ``random`` order is a fresh
uniform permutation per epoch, drawn on device as a pure function of (key, epoch), so a
resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

STRATEGIES = ('stride', 'target', 'random', 'fixed-random', 'alternating', 'resonant')
# The reference's '--strategy all' order (v3; HEAD also appends 'resonant').
PAPER_STRATEGIES = ('stride', 'random', 'fixed-random', 'target')


def default_stride(p: int) -> int:
  """The reference's default stride, int(sqrt(p)) (99 for p = 9973)."""
  return int(math.isqrt(p))


def _check_strategy(strategy: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(f'strategy must be one of {", ".join(STRATEGIES)}, got {strategy!r}')


def static_order(strategy: str, train_NxC: np.ndarray, *, stride: int,
                 parity: int = 0) -> np.ndarray:
  """int32 [N] row order for the non-random strategies (numpy).

  Rows are (operands..., label). fixed-random and resonant: rows as generated (resonant
  builds its own, ordered set: ``ordered_jax.resonant``); stride: stable sort by
  (a mod stride, a) with a the first operand; target: stable sort by the label. Ties keep generator order, as in the reference. ``parity`` = epoch % 2
  is used by 'alternating' (stride on even epochs, target on odd). 'random' raises
  ValueError: it is drawn on device by ``random_order``.
  """
  _check_strategy(strategy)
  if strategy == 'random':
    raise ValueError("strategy 'random' has no static order; use random_order")
  if stride < 1:
    raise ValueError(f'stride must be >= 1, got {stride}')
  train_NxC = np.asarray(train_NxC)
  if strategy == 'alternating':
    strategy = 'stride' if parity % 2 == 0 else 'target'
  if strategy in ('fixed-random', 'resonant'):  # resonant's rows are built in order
    order_N = np.arange(train_NxC.shape[0])
  elif strategy == 'stride':
    a_N = train_NxC[:, 0].astype(np.int64)
    order_N = np.lexsort((a_N, a_N % stride))  # lexsort is stable; last key is primary
  else:  # target
    order_N = np.argsort(train_NxC[:, -1], kind='stable')
  return order_N.astype(np.int32)


def random_order(key: jax.Array, epoch, n: int) -> jax.Array:
  """Uniform permutation of range(n), int32, a pure function of (key, epoch).

  jit/vmap friendly: ``epoch`` may be traced; ``n`` must be static.
  """
  return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Number of batches per epoch; the last partial batch is kept (as in the reference)."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  return -(-n // batch_size)


def batch_indices(order_N, batch_size: int):
  """[steps, batch] int32 indices and [steps, batch] bool mask, steps = ceil(N / B).

  Consecutive slices of B rows of ``order_N``; the last partial batch is padded with
  index 0 and mask False, so every step has a fixed shape (needed for ``lax.scan``).
  Returns numpy arrays for a numpy input and jax arrays otherwise.
  """
  xp = np if isinstance(order_N, np.ndarray) else jnp
  n = order_N.shape[0]
  steps = steps_per_epoch(n, batch_size)
  pad = steps * batch_size - n
  idx = xp.concatenate([xp.asarray(order_N).astype(xp.int32), xp.zeros((pad,), xp.int32)])
  mask = xp.arange(steps * batch_size) < n
  return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)
