"""The probe protocol: how training-dynamics metrics plug into the jitted epoch.

``ordered_jax`` never imports ``probes/``; ``main.py`` builds the enabled probes from the
config and hands them to the trainer. A probe is a small object with pure functions of
ONE run (the trainer ``vmap``s them with the rest of the epoch):

* ``init(params) -> state``: the probe's persistent state (windows, tracked sets,
  previous vectors, ...). It lives in ``RunState.probes[name]``, so checkpoints carry it
  and a resumed run emits what an uninterrupted one would.
* ``on_step(state, StepInfo) -> state`` (only if ``'steps' in needs``): accumulate per
  optimiser step inside the scanned epoch (nothing leaves the device). Step metrics are
  emitted only at probe epochs; in the others ``StepInfo.record`` is False and the probe
  keeps only the state later epochs need (a FIFO, a running path length), so its per-step
  measurements cost nothing between probe epochs.
* ``on_epoch(state, EpochInfo) -> (state, metrics, present)``: at the epochs its
  ``cadence`` names (see ``Cadence``); metrics is a dict of arrays, ``present`` a bool
  saying whether to emit them (e.g. a cosine with the previous firing needs one).
* ``cadence`` (optional, default ``'epoch'``): when ``on_epoch`` fires, one of
  ``CADENCES``: the reference's hook points. Between firings the state is left as it was,
  so a stateful probe compares with its own previous firing.
* ``masks_inactive`` (optional, default False): ``on_step`` and ``on_epoch`` leave the
  state of a run that is not training (``active`` False) as it was, so the trainer need not
  restore it at the end of the epoch: worth it for windows of parameter vectors, whose
  restore is a copy and a select of the whole window (a run stopped for non-finite values
  keeps that epoch's entries; it emits no more metrics).
* ``weight_only`` (optional, default False): the probe reads only the weights (and at
  most the mean gradient), so evaluate-only runs (``epochs = 0``) run it on the initial or
  ``init_from`` weights.
* ``to_host(metrics) -> dict`` (optional): JSON-ready values (lists, dicts) from ONE run's
  numpy arrays; where host-side work (spectra) happens.

No probe calls LAPACK (eigh, svd, ...) inside the epoch: jaxlib 0.10's CPU kernels
deadlock XLA:CPU when several run at once. Spectra are taken on the host from small Gram
matrices (``probes.spectra``).

``needs`` may contain ``'grad_mean'`` (the epoch-mean gradient is accumulated in the
scan) and ``'steps'``. Probes read the trajectory and never change it: with no probes
the epoch program is exactly the plain one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import numpy as np

# When a probe's on_epoch fires (its ``cadence``), after the reference's hook points:
#   'epoch'    POST_EPOCH: every epoch (every ``Cadence.every`` epochs when thinned out);
#   'snapshot' SNAPSHOT: epochs divisible by ``Cadence.snapshot`` (snapshot_every);
#   'early'    the counterfactual family: POST_EPOCH below epoch ``Cadence.early``, then
#              SNAPSHOT.
CADENCES = ('epoch', 'snapshot', 'early')


@dataclasses.dataclass(frozen=True)
class Cadence:
  """The probe schedule: which cadences fire at an epoch (host ints or traced arrays).

  The defaults are the reference's: per-epoch hooks every epoch, snapshot hooks every
  ``snapshot_every`` = 10 epochs, the counterfactual family every epoch below 50 and at
  snapshots from then on. ``every`` > 1 thins the per-epoch (and early) firings out for
  cheap long runs: a departure from the reference (stateful probes then compare with their
  previous firing, not the previous epoch)."""

  every: int = 1
  snapshot: int = 10
  early: int = 50

  def fires(self, kind: str, epoch, xp=np):
    """Whether a probe of cadence ``kind`` fires at ``epoch`` (``xp``: numpy or jnp)."""
    if kind not in CADENCES:
      raise ValueError(f'unknown probe cadence {kind!r}; one of {CADENCES}')
    snap = epoch % self.snapshot == 0
    per_epoch = epoch % self.every == 0 if self.every > 1 else xp.asarray(True)
    if kind == 'snapshot':
      return snap
    if kind == 'early':
      return xp.where(epoch < self.early, per_epoch, snap)
    return per_epoch

  def always(self, kind: str) -> bool:
    """Fires at every epoch whatever the epoch (no conditional needed)."""
    return (kind == 'epoch' and self.every == 1) or (
        kind == 'snapshot' and self.snapshot == 1) or (
        kind == 'early' and self.every == 1 and self.snapshot == 1)


def cadence_of(probe) -> str:
  return getattr(probe, 'cadence', 'epoch')


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """One optimiser step of one run, as seen by ``on_step`` (traced arrays)."""

  step: jax.Array           # 0-based step within the epoch
  params_before: Any
  params_after: Any
  grads: Any                # gradient of the batch loss at params_before
  loss: jax.Array
  learning_rate: jax.Array
  epoch: jax.Array = None   # the epoch (the same for every run of a batch)
  opt_state: Any = None     # after the step
  batch_BxC: jax.Array = None
  mask_B: jax.Array = None
  dropout_key: jax.Array = None  # the step's dropout key (loss_fn(p, batch, mask, key))
  loss_fn: Callable = None
  reference: Any = None     # reference ("solution") parameters, if configured
  steps: int = None         # optimiser steps in this epoch (static)
  record: bool = True       # static: this epoch's step metrics are emitted (a probe epoch)
  active: jax.Array = True  # the run trains this epoch (stopped runs are computed, then kept)


@dataclasses.dataclass(frozen=True)
class EpochInfo:
  """The end of one run's epoch, as seen by ``on_epoch`` (traced arrays)."""

  epoch: jax.Array
  params: Any               # after the epoch
  params_before: Any        # before the epoch
  opt_state: Any
  grad_mean: Any            # epoch-mean batch gradient (None unless a probe needs it)
  loss: jax.Array           # epoch-mean loss
  learning_rate: jax.Array  # the rate used during the epoch
  key: jax.Array            # a probe key: fold_in(root, PROBE_STREAM, epoch)
  train_NxC: jax.Array      # the training table on device
  first_batch_BxC: jax.Array  # the epoch's first batch (the reference's attention sample)
  validation_accuracy: jax.Array  # percent after the epoch; NaN when the epoch is not
                                  # evaluated (snapshot epochs always are)
  apply: Callable           # apply(params, x_Bx2, dropout_key=None) -> logits
  loss_fn: Callable         # loss_fn(params, abc_BxC, mask_B, dropout_key) -> mean CE
  reference: Any = None     # reference ("solution") parameters, if configured
  active: jax.Array = True  # the run trains this epoch (see ``masks_inactive``)
  replay: Callable = None   # replay(order_N, key) -> epoch-mean gradient of an extra epoch
                            # from the pre-epoch state over rows order_N (interventions)


class Probe(Protocol):
  name: str
  needs: frozenset

  def init(self, params) -> Any:
    ...

  def on_epoch(self, state, info: EpochInfo) -> tuple[Any, dict, jax.Array]:
    ...
