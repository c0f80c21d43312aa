"""``random``: a fresh uniform permutation every epoch, drawn on device.

The permutation is ``jax.random.permutation(fold_in(key, epoch), N)`` with ``key`` the
run's order stream (``fold_in(order key, 2)``), a pure function of (key, epoch): a resumed
run repeats an uninterrupted one.
"""

from __future__ import annotations

from ordered_jax.orderings import base


@base.register
class Random(base.Ordering):
  """A new permutation every epoch (nothing prepared on the host)."""

  name = 'random'
  description = 'a fresh permutation every epoch'

  def order(self, prepared, key, epoch, run):
    return base.random_order(key, epoch, run.n)
