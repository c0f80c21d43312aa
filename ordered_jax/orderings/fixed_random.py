"""``fixed-random``: the rows as generated (a random order, the same every epoch)."""

from __future__ import annotations

import numpy as np

from ordered_jax.orderings import base


@base.register
class FixedRandom(base.Ordering):
  """The generator's order, range(N), every epoch.

  Kept as a prepared array rather than a device ``arange``: a compile-time constant order
  lets XLA turn the batch gather into slices and fuse the epoch differently, which moves
  float results in the last bits (outputs must stay bit-identical to before).
  """

  name = 'fixed-random'
  description = 'the generated order, the same every epoch'

  def prepare(self, train_NxC, config):
    return np.arange(np.asarray(train_NxC).shape[0], dtype=np.int32)

  def order(self, prepared, key, epoch, run):
    return prepared
