"""``target``: rows sorted by label, so the labels come in blocks."""

from __future__ import annotations

import numpy as np

from ordered_jax.orderings import base


def target_order(train_NxC: np.ndarray) -> np.ndarray:
  """int32 [N]: stable sort by the label (the last column); ties keep generator order."""
  return np.argsort(np.asarray(train_NxC)[:, -1], kind='stable').astype(np.int32)


@base.register
class Target(base.Ordering):
  """The same order every epoch: the rows sorted by label."""

  name = 'target'
  description = 'rows sorted by label: the labels come in blocks (stable)'
  reads_tokens = True

  def prepare(self, train_NxC, config):
    return target_order(train_NxC)

  def order(self, prepared, key, epoch, run):
    return prepared
