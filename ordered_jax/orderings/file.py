"""``file``: a user's own row order, replayed from ``config.order_file`` (.npy).

The file holds integers of shape [N] (the same order every epoch) or [E, N] (row e for
epoch e; after E epochs the rows cycle: epoch e uses row e mod E), each row a permutation
of range(N), N the training set size. Row indices point into the training table as
generated (``fixed-random``'s order is ``np.arange(N)``). A missing, unreadable or invalid
file stops the run before anything is built, with one line naming ``order_file``. The
file's SHA-256 is part of the run's identity (``order_file_sha256`` in its saved config),
so a changed file is a new run and ``--resume`` refuses it.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ordered_jax.orderings import base


def _fail(message: str):
  from ordered_jax import runs  # pylint: disable=g-import-not-at-top  (runs imports us)
  raise runs.ConfigError('order_file', message)


def load(path: str, n: int) -> np.ndarray:
  """int32 [E, N] orders from ``path``; ``ConfigError`` (one line) if it is not a .npy
  array of shape [N] or [E, N] whose rows are permutations of range(n)."""
  if not isinstance(path, str) or not path:
    _fail("must name a .npy file with strategy file (e.g. --config.order_file=order.npy)")
  if not os.path.isfile(path):
    _fail(f'{path!r}: no such file')
  try:
    a = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except  (any corrupt file: one line)
    _fail(f'{path!r} is not a readable .npy array ({type(e).__name__})')
  if not isinstance(a, np.ndarray) or a.dtype.kind not in 'iu':
    _fail(f'{path!r} holds {getattr(a, "dtype", type(a).__name__)} values; row indices '
          'must be integers')
  if a.ndim not in (1, 2) or a.shape[-1] != n or a.size == 0:
    _fail(f'{path!r} has shape {a.shape}; want ({n},) or (epochs, {n}), {n} = the training '
          'set size')
  a = a.reshape(-1, n)
  if a.min() < 0 or a.max() >= n:
    _fail(f'{path!r} holds indices outside [0, {n}) (min {a.min()}, max {a.max()})')
  sorted_ = np.sort(a, axis=1)
  bad = np.nonzero((sorted_ != np.arange(n)).any(axis=1))[0]
  if bad.size:
    _fail(f'{path!r}: row {bad[0]} is not a permutation of range({n}) (an index repeats)')
  return a.astype(np.int32)


@base.register
class File(base.Ordering):
  """Orders read from a .npy file: one for every epoch, or one per epoch (cycling)."""

  name = 'file'
  description = ('a user\'s own row order from order_file (.npy of shape (N,) or (epochs, '
                 'N); epochs beyond the file cycle)')

  @classmethod
  def validate(cls, config, names):
    from ordered_jax import runs  # pylint: disable=g-import-not-at-top
    load(config.order_file, runs.sizes(config)[0])

  def run_fields(self, config):
    with open(config.order_file, 'rb') as f:
      return {'order_file_sha256': hashlib.sha256(f.read()).hexdigest()}

  def prepare(self, train_NxC, config):
    return load(config.order_file, train_NxC.shape[0])

  def order(self, prepared, key, epoch, run):
    return prepared[epoch % prepared.shape[0]]
