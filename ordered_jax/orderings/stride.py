"""``stride``: rows sorted by (a mod s, a), a the first operand (the paper's ordering)."""

from __future__ import annotations

import numpy as np

from ordered_jax.orderings import base


def stride_order(train_NxC: np.ndarray, stride: int) -> np.ndarray:
  """int32 [N]: stable sort by (a mod stride, a); ties keep generator order, as in the
  reference."""
  if stride < 1:
    raise ValueError(f'stride must be >= 1, got {stride}')
  a_N = np.asarray(train_NxC)[:, 0].astype(np.int64)
  return np.lexsort((a_N, a_N % stride)).astype(np.int32)  # stable; last key is primary


@base.register
class Stride(base.Ordering):
  """The same order every epoch: the rows sorted by the first operand's residue."""

  name = 'stride'
  description = ('rows sorted by (a mod s, a), a the first operand (s = stride, default '
                 'floor(sqrt p))')
  reads_tokens = True

  def prepare(self, train_NxC, config):
    from ordered_jax import runs  # pylint: disable=g-import-not-at-top  (runs imports us)
    return stride_order(train_NxC, runs.stride(config))

  def order(self, prepared, key, epoch, run):
    return prepared
