"""``curriculum``: rows ordered by the run's current per-example training loss.

``config.curriculum.direction`` is ``easiest`` (lowest loss first) or ``hardest``; ties
go by row index (a stable sort), so the order is a pure function of the losses. The
losses are recomputed on device before every ``config.curriculum.every``-th epoch (epochs
0, every, 2 every, ...; and before the first epoch a run trains, e.g. after
``init_optimizer``), by one forward pass over the training set at the run's current
weights without dropout (the trainer's per-example loss: cross-entropy, or the centred MSE
with ``loss=mse``). They live in the run's state, so a resumed run repeats an uninterrupted
one. Epoch 0 of ``easiest`` is the order of the initial weights' losses.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ordered_jax.orderings import base

DIRECTIONS = ('easiest', 'hardest')


def loss_order(losses_N, hardest: bool):
  """int32 [N]: indices by ascending loss (``hardest``: descending), ties by index."""
  key = -losses_N if hardest else losses_N
  key = jnp.where(key == 0, jnp.zeros_like(key), key)  # -0.0 sorts before 0.0 in XLA
  return jnp.argsort(key, stable=True).astype(jnp.int32)


@base.register
@dataclasses.dataclass(frozen=True)
class Curriculum(base.Ordering):
  """Easiest (or hardest) first by the current per-example loss, refreshed every N
  epochs."""

  name = 'curriculum'
  description = ('rows by the current per-example loss, easiest (or hardest) first, '
                 'recomputed every curriculum.every epochs')
  uses_losses = True
  direction: str = 'easiest'
  every: int = 1

  @classmethod
  def from_config(cls, config):
    return cls(direction=config.curriculum.direction, every=int(config.curriculum.every))

  @classmethod
  def validate(cls, config, names):
    from ordered_jax import runs  # pylint: disable=g-import-not-at-top  (runs imports us)
    runs._one_of(config, 'curriculum.direction', DIRECTIONS)  # pylint: disable=protected-access
    runs._number(config, 'curriculum.every', integer=True, lo=1, what=' (epochs)')  # pylint: disable=protected-access

  def refresh(self, epoch):
    return epoch % self.every == 0

  def order(self, prepared, key, epoch, run):
    return loss_order(run.losses_N, self.direction == 'hardest')
