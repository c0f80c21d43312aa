"""``resonant``: the reference HEAD's own ordered data set (``ordered_jax.resonant``).

Its hooks do the work: ``make_data`` builds the training set already in order (one batch
per stride class and cycle) and its test set, ``resolve`` replaces ``train_size`` and
``batch_size`` by the data set's, ``validate`` keeps it to task add, alone in its batch.
The order itself is the rows as built, every epoch.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from ordered_jax import resonant
from ordered_jax.orderings import base


@base.register
class Resonant(base.Ordering):
  """The rows as the resonant builder emits them, every epoch."""

  name = 'resonant'
  description = 'the reference HEAD\'s own ordered data set (task add, alone)'
  reads_tokens = True

  @classmethod
  def validate(cls, config, names):
    from ordered_jax import runs  # pylint: disable=g-import-not-at-top  (runs imports us)
    runs._check(names == ['resonant'], 'strategy', 'resonant builds its own training set and '  # pylint: disable=protected-access
                'batch size, so it runs alone (not in a list or with all)')
    runs._check(config.task == 'add', 'task', f"strategy resonant is defined for task add; "  # pylint: disable=protected-access
                f'got {config.task!r}')
    runs._number(config, 'resonant.n_harmonics', integer=True, lo=1)  # pylint: disable=protected-access
    runs._number(config, 'resonant.overlap_frac', lo=0, hi=1)  # pylint: disable=protected-access
    runs._number(config, 'resonant.n_cycles', integer=True, lo=1)  # pylint: disable=protected-access
    runs._check(config.train_size != runs.CRITICAL, 'train_size', 'must be an int with '  # pylint: disable=protected-access
                'strategy resonant (its dataset sets the size)')

  @classmethod
  def resolve(cls, config):
    """Training set size and batch size from the data set (the largest residue class)."""
    from ordered_jax import runs  # pylint: disable=g-import-not-at-top
    if runs.strategies(config) != ['resonant'] or config.train_size == runs.CRITICAL:
      return config
    s = config.stride or base.default_stride(config.p)
    n = resonant.train_size(config.p, s, config.resonant.n_cycles)
    size = resonant.batch_size(config.p, s)
    if (n, size) == (config.train_size, config.batch_size) and not config.train_fraction:
      return config
    out = config.copy_and_resolve_references()
    with out.unlocked():
      out.train_size, out.batch_size, out.train_fraction = n, size, 0.0
    out.lock()
    logging.info('strategy resonant builds %d training rows in batches of %d (replacing '
                 'train_size=%s, batch_size=%s)', n, size, config.train_size,
                 config.batch_size)
    return out

  @classmethod
  def make_data(cls, config, n_test, seed):
    from ordered_jax import runs  # pylint: disable=g-import-not-at-top
    rc = config.resonant
    tr = resonant.train_set(config.p, runs.stride(config), rc.n_harmonics, rc.overlap_frac,
                            rc.n_cycles, seed)
    return tr, resonant.test_set(config.p, tr, n_test, seed)

  def prepare(self, train_NxC, config):
    return np.arange(np.asarray(train_NxC).shape[0], dtype=np.int32)  # see fixed_random.py

  def order(self, prepared, key, epoch, run):
    return prepared
