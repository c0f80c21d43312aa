"""Orderings: the row order of the training table within each epoch, one file each.

``base`` defines the abstraction (``Ordering``: host-side ``prepare``, device-side
``order``) and the registry; every other module of this package registers one ordering.
The built-ins are imported in the reference's order, then any other module found here
(a new ordering is one new file: docs/extending.md). ``STRATEGIES`` is the registry's
names; ``static_order`` gives a host-side order for the tools that need one without a
trainer (benchmarks, analysis).
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np

from ordered_jax.orderings import base
from ordered_jax.orderings.base import (REGISTRY, Ordering, RunView, batch_indices,  # noqa: F401
                                        default_stride, get, initial_state, order_of,
                                        random_order, refresh_due, register, spec_parts,
                                        steps_per_epoch, uses_losses)

_BUILT_IN = ('stride', 'target', 'random', 'fixed_random', 'alternating', 'resonant', 'file',
             'curriculum')
for _name in _BUILT_IN + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                                      if m.name not in _BUILT_IN + ('base',))):
  importlib.import_module(f'{__name__}.{_name}')

STRATEGIES = tuple(REGISTRY)
# The reference's '--strategy all' order (v3; HEAD also appends 'resonant').
PAPER_STRATEGIES = ('stride', 'random', 'fixed-random', 'target')


def static_order(strategy: str, train_NxC: np.ndarray, *, stride: int,
                 parity: int = 0) -> np.ndarray:
  """int32 [N] host-side row order of the reference's non-random strategies (numpy).

  fixed-random and resonant: rows as generated; stride: stable sort by (a mod stride, a);
  target: stable sort by the label; alternating: stride for ``parity`` 0, target for 1.
  Ties keep generator order, as in the reference. Other strategies raise ValueError
  (random is drawn on device by ``random_order``).
  """
  from ordered_jax.orderings import stride as stride_mod, target  # pylint: disable=g-import-not-at-top
  get(strategy)
  if strategy not in ('stride', 'target', 'fixed-random', 'alternating', 'resonant'):
    raise ValueError(f'strategy {strategy!r} has no static order; use its device order')
  if stride < 1:
    raise ValueError(f'stride must be >= 1, got {stride}')
  if strategy == 'alternating':
    strategy = 'stride' if parity % 2 == 0 else 'target'
  if strategy == 'stride':
    return stride_mod.stride_order(train_NxC, stride)
  if strategy == 'target':
    return target.target_order(train_NxC)
  return np.arange(np.asarray(train_NxC).shape[0], dtype=np.int32)
