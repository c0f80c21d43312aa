"""``alternating``: stride's order on even epochs, target's on odd ones."""

from __future__ import annotations

import numpy as np

from ordered_jax.orderings import base, stride, target


@base.register
class Alternating(base.Ordering):
  """Two host-sorted orders, picked by the epoch's parity on device."""

  name = 'alternating'
  description = 'stride on even epochs, target on odd ones'
  reads_tokens = True

  def prepare(self, train_NxC, config):
    from ordered_jax import runs  # pylint: disable=g-import-not-at-top  (runs imports us)
    return np.stack([stride.stride_order(train_NxC, runs.stride(config)),
                     target.target_order(train_NxC)])

  def order(self, prepared, key, epoch, run):
    return prepared[epoch % 2]
