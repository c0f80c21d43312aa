"""The training core: run state, one jitted epoch (``lax.scan`` over batches), evaluation.

Everything here is written for ONE run and batched with ``jax.vmap`` over a leading runs
axis R, so a single run is just R = 1. Nothing in an epoch goes back to the host: the
data and the ordering tables live on device, the ``random`` permutation is drawn on
device, and stopping (target accuracy reached, non-finite loss) is decided on device by
masking, which freezes a stopped run exactly where it stopped.

Randomness: a run's root key comes from its seed; initialisation, dropout and the random
order use ``fold_in`` streams of it (stream, epoch, step), so every random draw is a pure
function of (seed, epoch, step) and a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ordered_jax import instrument, models, optim, orderings, teacher

# fold_in streams of a run's root key.
INIT_STREAM, DROPOUT_STREAM, ORDER_STREAM, PROBE_STREAM = 0, 1, 2, 3
ONLINE_STREAM = 4  # teacher.online: fresh batches

# RunState.stop_reason codes.
RUNNING, REACHED_TARGET, NON_FINITE = 0, 1, 2
STOP_REASONS = {RUNNING: 'running', REACHED_TARGET: 'reached_target_acc',
                NON_FINITE: 'non_finite_loss'}


@struct.dataclass
class RunState:
  """Everything that evolves during training (checkpointed). Leaves carry the runs axis."""

  params: Any
  opt_state: Any
  key: jax.Array          # uint32 raw key data of the run's root key
  epoch: jax.Array        # int32: epochs completed = the next epoch to run
  active: jax.Array       # bool: still training
  stop_reason: jax.Array  # int32, see STOP_REASONS
  probes: Any = None      # {probe name: probe state} ({} without probes)
  order_state: Any = None  # orderings that read losses (curriculum): {'losses': [N],
                           # 'at': the epoch they were computed at}; None otherwise


@struct.dataclass
class RunSpec:
  """Per-run constants that may differ inside one batch (not checkpointed: from config)."""

  lr: jax.Array            # float32 peak learning rate
  weight_decay: jax.Array  # float32
  ordering: jax.Array      # int32: the run's index into ``orderings``
  prepared: Any            # per ordering of ``orderings``: its prepared arrays
                           # (``orderings.spec_parts``)
  reference: Any = None    # reference ("solution") parameters for probes, or None
  order_key: Any = None    # uint32 key data of the order stream (config.order_seed), or
                           # None: the run's own key
  orderings: tuple = struct.field(pytree_node=False, default=())  # the batch's distinct
                           # orderings (static: part of the compiled program)


@struct.dataclass
class Data:
  """A task's arrays on device; eval splits pre-chunked to [chunks, eval_batch, C] with masks.

  Rows have C = n_ops + 1 int32 columns: the operands, then the label."""

  train_NxC: jax.Array
  train_chunks: jax.Array
  train_valid: jax.Array
  test_chunks: jax.Array
  test_valid: jax.Array
  n_train: int = struct.field(pytree_node=False, default=0)
  n_test: int = struct.field(pytree_node=False, default=0)


def _chunk(abc_MxC: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  m, c = abc_MxC.shape
  size = max(1, min(size, m))
  n = -(-m // size)
  padded = np.zeros((n * size, c), np.int32)
  padded[:m] = abc_MxC
  valid = np.arange(n * size) < m
  return padded.reshape(n, size, c), valid.reshape(n, size)


def make_data(train_NxC: np.ndarray, test_MxC: np.ndarray, eval_batch_size: int) -> Data:
  """Host arrays -> one ``Data`` on device (moved once)."""
  train_chunks, train_valid = _chunk(train_NxC, eval_batch_size)
  test_chunks, test_valid = _chunk(test_MxC, eval_batch_size)
  return jax.device_put(Data(np.asarray(train_NxC, np.int32), train_chunks, train_valid,
                             test_chunks, test_valid, n_train=len(train_NxC),
                             n_test=len(test_MxC)))


class ScanOut(NamedTuple):
  """What ``Trainer._scan_epoch`` returns for one run."""

  params: Any
  opt_state: Any
  probes: dict
  loss_S: jax.Array     # each step's batch loss
  grad_mean: Any        # the mean batch gradient, or None


@dataclasses.dataclass(frozen=True)
class Hyper:
  """Values shared by every run of a batch (static under jit)."""

  batch_size: int
  epochs: int
  min_lr: float
  target_correct: int  # stop when this many test pairs are right (see ``target_correct``)
  optimizer: str = 'adamw'
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.9          # sgd
  grokfast: str = 'none'         # none | ema | ma (optim.GROKFAST_KINDS)
  grokfast_alpha: float = 0.98   # ema
  grokfast_lamb: float = 2.0     # the filter's lambda (the config's lamb_ema or lamb_ma)
  grokfast_window: int = 100     # ma
  grad_clip: float = 0.0         # global-norm clipping, 0 = off
  loss: str = 'ce'               # ce | mse (optim.LOSSES)
  l1: float = 0.0                # l1 * sum |theta| added to the loss
  set_weight_reg: float = 0.0    # mlp: V solved as ridge regression each step (Tian), 0 = off
  schedule: Any = None           # an optim.Schedule; None = cosine per epoch (epochs, min_lr)
  regression_in: int = 0         # > 0: rows are teacher.to_rows' [x, y] bits, x of this size;
                                 # the loss is the MSE (mean over outputs), no accuracy
  online_teacher: tuple = ()     # teacher.online: W* as nested tuples; () = offline rows
  online_noise: float = 0.0      # its label noise std


class Trainer:
  """Builds the jitted, vmapped functions for one batch of runs.

  ``epoch(state, spec, data, epoch, do_eval=...)`` trains every active run for one epoch
  (state donated) and returns per-run metrics; ``evaluate(params, data)`` gives per-run
  counts of correct predictions (``accuracies`` turns them into percentages).
  ``shared_data`` says whether all runs use one ``Data`` (else ``Data`` has a runs axis).
  ``probes`` (see ``ordered_jax.instrument``) run inside the epoch: their step functions
  every epoch, their epoch functions in epochs run with ``do_probe=True``, each at the
  epochs its cadence names in ``cadence`` (an ``instrument.Cadence``).
  """

  def __init__(self, model: models.Model, hyper: Hyper, *, shared_data: bool = True,
               probes: Sequence[instrument.Probe] = (),
               cadence: instrument.Cadence = instrument.Cadence()):
    self.model = model
    self.hyper = hyper
    self.probes = tuple(probes)
    self.cadence = cadence
    self._step_probes = tuple(p for p in self.probes if 'steps' in p.needs)
    self._grad_mean = any('grad_mean' in p.needs for p in self.probes)
    self.tx = optim.make_optimizer(
        hyper.optimizer, lr=1e-3, weight_decay=0.0, b1=hyper.b1, b2=hyper.b2, eps=hyper.eps,
        momentum=hyper.momentum, grokfast=hyper.grokfast, grokfast_alpha=hyper.grokfast_alpha,
        grokfast_lamb=hyper.grokfast_lamb, grokfast_window=hyper.grokfast_window,
        grad_clip=hyper.grad_clip)
    self.schedule = hyper.schedule or optim.Schedule(epochs=hyper.epochs, min_lr=hyper.min_lr)
    self.shared_data = shared_data
    self._data_axis = None if shared_data else 0
    self.epoch = jax.jit(self._batched_epoch, static_argnames=('do_eval', 'do_probe'),
                         donate_argnames=('state',))
    self.evaluate = jax.jit(jax.vmap(self._evaluate, in_axes=(0, self._data_axis)))
    self.weight_probes = tuple(p for p in self.probes if getattr(p, 'weight_only', False))
    self.probe_weights = jax.jit(jax.vmap(self._probe_weights,
                                          in_axes=(0, 0, self._data_axis)))
    self._assemble = jax.jit(self._assemble_runs, static_argnames=('which',))

  # -- initial state -------------------------------------------------------------------

  def init_state(self, seeds: Sequence[int], lrs: Sequence[float],
                 weight_decays: Sequence[float], params: Any = None,
                 init_seeds: Sequence[int] | None = None) -> RunState:
    """Fresh state for R runs. Runs with the same init seed (``init_seeds``, default
    ``seeds``) start from the same weights; the run key (dropout, probes) is the seed's;
    ``params`` (one tree, e.g. ``config.init_from``'s) replaces them in every run."""
    init_seeds = list(seeds) if init_seeds is None else list(init_seeds)
    unique = list(dict.fromkeys(init_seeds))
    init_keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in unique])
    run_keys = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
    return self._assemble(init_keys, run_keys, jnp.asarray(lrs, jnp.float32),
                          jnp.asarray(weight_decays, jnp.float32), params,
                          which=tuple(unique.index(s) for s in init_seeds))

  def _assemble_runs(self, init_keys_Sx2, run_keys_Rx2, lrs_R, wds_R, params, *, which):
    """``init_state`` as one compiled program (eager, each of its few hundred small ops
    was a dispatch: a second of start-up at the reference model's size)."""
    if params is None:
      by_seed = [self.model.init(jax.random.fold_in(jax.random.wrap_key_data(k), INIT_STREAM))
                 for k in init_keys_Sx2]
      params = jax.tree.map(lambda *xs: jnp.stack([xs[j] for j in which]), *by_seed)
    else:
      params = jax.tree.map(lambda x: jnp.stack([x] * len(which)), params)
    opt_state = jax.vmap(self.tx.init)(params)
    opt_state = jax.vmap(lambda o, lr, wd: optim.set_hparams(o, learning_rate=lr,
                                                             weight_decay=wd))(
        opt_state, lrs_R, wds_R)
    r = len(which)
    probes = jax.vmap(lambda p: {pr.name: pr.init(p) for pr in self.probes})(params)
    return RunState(params=params, opt_state=opt_state, key=run_keys_Rx2,
                    epoch=jnp.zeros((r,), jnp.int32), active=jnp.ones((r,), bool),
                    stop_reason=jnp.zeros((r,), jnp.int32), probes=probes)

  # -- single-run functions (vmapped in __init__) ----------------------------------------

  def data_loss(self, params, abc_BxC, mask_B, dropout_key):
    """Mean cross-entropy (``loss='ce'``) or centred MSE (``'mse'``, ``optim.centred_mse``)
    over the real (unpadded) rows of a batch; for a regression (``regression_in``) the
    mean over rows and outputs of (f(x) - y)^2, torch's MSELoss as the teacher codebase."""
    if self.hyper.regression_in:
      return _masked_mean(self._sq_errors(params, abc_BxC), mask_B)
    logits_BxV = self.model.apply(params, abc_BxC[:, :-1], dropout_key=dropout_key)
    if self.hyper.loss == 'mse':
      ce_B = optim.centred_mse(logits_BxV, abc_BxC[:, -1])
    else:
      ce_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxV, abc_BxC[:, -1])
    mask = mask_B.astype(ce_B.dtype)
    return jnp.sum(ce_B * mask) / jnp.sum(mask)

  def _sq_errors(self, params, rows_BxC):
    """Per-row mean squared error [B] of a regression batch (``teacher.split``'s x, y)."""
    x_BxD, y_BxE = teacher.split(rows_BxC, self.hyper.regression_in)
    return jnp.mean(jnp.square(self.model.apply(params, x_BxD) - y_BxE), axis=-1)

  def loss(self, params, abc_BxC, mask_B, dropout_key):
    """The training objective: ``data_loss`` plus the L1 penalty (when ``l1`` > 0)."""
    return self._objective(params, abc_BxC, mask_B, dropout_key)[0]

  def _objective(self, params, abc_BxC, mask_B, dropout_key):
    """(objective, data loss)."""
    data = self.data_loss(params, abc_BxC, mask_B, dropout_key)
    if not self.hyper.l1:
      return data, data
    return data + optim.l1_penalty(params, self.hyper.l1), data

  def epoch_order(self, key, spec: RunSpec, epoch, n: int, losses_N=None):
    """The run's row order for ``epoch``: int32 [N], its ordering's ``order`` with the
    order stream of ``spec.order_key`` (``config.order_seed``) when set, else of the run's
    key; ``losses_N``: the run's per-example losses for orderings that read them."""
    if spec.order_key is not None:
      key = jax.random.wrap_key_data(spec.order_key)
    return orderings.order_of(spec.orderings, spec.ordering, spec.prepared,
                              jax.random.fold_in(key, ORDER_STREAM), epoch,
                              orderings.RunView(n=n, losses_N=losses_N))

  def example_losses(self, params, data: Data):
    """float32 [N]: each training row's loss at ``params`` (no dropout; cross-entropy, the
    centred MSE, or a regression's squared error), in the table's row order. Curriculum
    orderings sort by it."""
    def body(_, xs):
      abc_KxC, _valid = xs
      if self.hyper.regression_in:
        return None, self._sq_errors(params, abc_KxC)
      logits_KxV = self.model.apply(params, abc_KxC[:, :-1])
      if self.hyper.loss == 'mse':
        return None, optim.centred_mse(logits_KxV, abc_KxC[:, -1])
      return None, optax.softmax_cross_entropy_with_integer_labels(logits_KxV, abc_KxC[:, -1])

    _, loss_HxK = jax.lax.scan(body, None, (data.train_chunks, data.train_valid))
    return loss_HxK.reshape(-1)[:data.train_NxC.shape[0]].astype(jnp.float32)

  def _refresh_order_state(self, state: RunState, spec: RunSpec, data: Data, epoch):
    """Batched: the losses of the runs whose ordering asks for new ones before ``epoch``
    (``orderings.refresh_due``), recomputed in one pass that runs only when some run is
    due (a real conditional: the test reduces over the runs axis)."""
    if state.order_state is None or not orderings.uses_losses(spec.orderings):
      return state
    due_R = state.active & orderings.refresh_due(spec.orderings, spec.ordering,
                                                 state.order_state, epoch)

    def fresh(s):
      losses = jax.vmap(self.example_losses, in_axes=(0, self._data_axis))(s.params, data)
      old = s.order_state
      return s.replace(order_state={
          'losses': jnp.where(due_R[:, None], losses, old['losses']),
          'at': jnp.where(due_R, epoch, old['at'])})

    return jax.lax.cond(jnp.any(due_R), fresh, lambda s: s, state)

  def _losses(self, state: RunState):
    return None if state.order_state is None else state.order_state['losses']

  def _online_batch(self, root, spec: RunSpec, global_step, batch: int):
    """teacher.online's fresh rows for one step: a function of the batch key (the order
    stream's, as ``epoch_order``) and the global step."""
    key = root if spec.order_key is None else jax.random.wrap_key_data(spec.order_key)
    key = jax.random.fold_in(jax.random.fold_in(key, ONLINE_STREAM), global_step)
    return teacher.online_rows(key, self.hyper.online_teacher, batch,
                               self.hyper.online_noise)

  def _step(self, params, opt_state, batch_BxC, mask_B, dropout_key):
    """One optimiser step: (batch data loss, gradient of the objective, new params, new
    optimiser state). The data loss excludes the L1 penalty. With ``set_weight_reg`` the
    mlp's V is first replaced by the batch's ridge solution (``models.ridge_top``)."""
    if self.hyper.set_weight_reg:
      params = models.ridge_top(self.model, params, batch_BxC[:, :-1], batch_BxC[:, -1],
                                mask_B, self.hyper.set_weight_reg)
    if self.hyper.l1:
      (_, loss), grads = jax.value_and_grad(self._objective, has_aux=True)(
          params, batch_BxC, mask_B, dropout_key)
    else:
      loss, grads = jax.value_and_grad(self.loss)(params, batch_BxC, mask_B, dropout_key)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    return loss, grads, optax.apply_updates(params, updates), opt_state

  def _epoch_opt_state(self, opt_state, spec: RunSpec, epoch, steps: int = 1):
    """The optimiser state with the rate of the epoch's first step (of the epoch, for
    per-epoch schedules) and the run's weight decay; ``steps`` = steps per epoch."""
    lr = self.schedule.lr(spec.lr, epoch, 0, steps)
    return optim.set_hparams(opt_state, learning_rate=lr, weight_decay=spec.weight_decay), lr

  def _step_lr(self, opt_state, spec: RunSpec, epoch, i, steps: int, lr):
    """Per-step schedules: the state with step ``i``'s rate, and that rate (otherwise the
    epoch's state and rate, unchanged)."""
    if not self.schedule.per_step:
      return opt_state, lr
    lr = self.schedule.lr(spec.lr, epoch, i, steps)
    return optim.set_hparams(opt_state, learning_rate=lr), lr

  def _replay(self, state: RunState, spec: RunSpec, data: Data, epoch, order_N, key):
    """The epoch-mean gradient of one extra training epoch (optimiser steps, dropout from
    ``key``) from the run's state before ``epoch`` over the rows in ``order_N``; the run
    itself is untouched. The counterfactual probes' intervention."""
    idx_SxB, mask_SxB = orderings.batch_indices(order_N, self.hyper.batch_size)
    return self._scan_epoch(state.params, state.opt_state, spec, data, epoch, idx_SxB,
                            mask_SxB, lambda i: jax.random.fold_in(key, i),
                            grad_mean=True).grad_mean

  def _scan_epoch(self, params, opt_state, spec: RunSpec, data: Data, epoch, idx_SxB,
                  mask_SxB, key_of, *, update: bool = True, grad_mean: bool = False,
                  probes: dict | None = None, record: bool = False, active=True,
                  online_root=None) -> 'ScanOut':
    """The one scan over an epoch's batches (rows ``idx_SxB``, ``mask_SxB``; step i's
    dropout key ``key_of(i)``), shared by training, the counterfactual replay and the
    weight-only probes: with ``update`` an optimiser step per batch (the epoch's schedule
    and the run's weight decay), else gradients at fixed ``params``; ``grad_mean``: also
    the mean batch gradient; ``probes``: the step probes' states, advanced by ``on_step``
    (``record``: a probe epoch); ``online_root``: draw an online teacher's batches."""
    steps = idx_SxB.shape[0]
    lr0 = None
    if update:
      opt_state, lr0 = self._epoch_opt_state(opt_state, spec, epoch, steps)
    probes = {} if probes is None else probes
    grad_sum = jax.tree.map(jnp.zeros_like, params) if grad_mean else None

    def step(carry, xs):
      params, opt_state, probes, grad_sum = carry
      i, idx_B, mask_B = xs
      batch_BxC, step_key = data.train_NxC[idx_B], key_of(i)
      if online_root is not None:
        batch_BxC = self._online_batch(online_root, spec, epoch * steps + i, idx_B.shape[0])
      if update:
        opt_state, lr = self._step_lr(opt_state, spec, epoch, i, steps, lr0)
        loss, grads, new_params, opt_state = self._step(params, opt_state, batch_BxC, mask_B,
                                                        step_key)
      else:
        loss, grads = jax.value_and_grad(self.loss)(params, batch_BxC, mask_B, step_key)
        new_params, lr = params, lr0
      if probes:
        info = instrument.StepInfo(
            step=i, params_before=params, params_after=new_params, grads=grads, loss=loss,
            learning_rate=lr, epoch=epoch, opt_state=opt_state, batch_BxC=batch_BxC,
            mask_B=mask_B, dropout_key=step_key, loss_fn=self.loss, reference=spec.reference,
            steps=steps, record=record, active=active)
        probes = {p.name: p.on_step(probes[p.name], info) for p in self._step_probes}
      if grad_sum is not None:
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
      return (new_params, opt_state, probes, grad_sum), loss

    (params, opt_state, probes, grad_sum), loss_S = jax.lax.scan(
        step, (params, opt_state, probes, grad_sum), (jnp.arange(steps), idx_SxB, mask_SxB))
    return ScanOut(params, opt_state, probes, loss_S,
                   None if grad_sum is None else jax.tree.map(lambda g: g / steps, grad_sum))

  def _train_epoch(self, state: RunState, spec: RunSpec, data: Data, epoch, grad_mean: bool,
                   record: bool = False):
    """One epoch of one run: (params, opt_state, mean loss, probe states, mean gradient,
    the epoch's first batch). ``record``: a probe epoch, whose step metrics are emitted
    (``StepInfo.record``)."""
    h = self.hyper
    n = data.train_NxC.shape[0]
    root = jax.random.wrap_key_data(state.key)
    idx_SxB, mask_SxB = orderings.batch_indices(
        self.epoch_order(root, spec, epoch, n, self._losses(state)), h.batch_size)
    epoch_key = jax.random.fold_in(jax.random.fold_in(root, DROPOUT_STREAM), epoch)
    out = self._scan_epoch(
        state.params, state.opt_state, spec, data, epoch, idx_SxB, mask_SxB,
        lambda i: jax.random.fold_in(epoch_key, i), grad_mean=grad_mean,
        probes={p.name: state.probes[p.name] for p in self._step_probes}, record=record,
        active=state.active, online_root=root if h.online_teacher else None)
    params, opt_state, probes, loss_S, grad_mean = out
    # The reference averages batch means (its last, smaller batch weighs like the others).
    return (params, opt_state, jnp.mean(loss_S), {**state.probes, **probes}, grad_mean,
            data.train_NxC[idx_SxB[0]])

  def _accuracy(self, params, chunks_HxKxC, valid_HxK):
    predict = self.model.predictor(params)  # per-token work once per evaluation

    def body(total, xs):
      abc_KxC, valid_K = xs
      pred_K = jnp.argmax(predict(abc_KxC[:, :-1]), axis=-1)
      return total + jnp.sum((pred_K == abc_KxC[:, -1]) & valid_K), None

    correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (chunks_HxKxC, valid_HxK))
    return correct

  def _mse(self, params, chunks_HxKxC, valid_HxK):
    def body(total, xs):
      rows_KxC, valid_K = xs
      return total + jnp.sum(jnp.where(valid_K, self._sq_errors(params, rows_KxC), 0.0)), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (chunks_HxKxC, valid_HxK))
    return total / jnp.sum(valid_HxK)

  def _evaluate(self, params, data: Data):
    """Correct-prediction counts (exact integers; see ``accuracies`` for percentages).
    A regression has no correct predictions (counts 0, so accuracies 0 and no early stop):
    it reports ``validation_loss`` and ``training_loss``, the mean squared errors."""
    if self.hyper.regression_in:
      zero = jnp.zeros((), jnp.int32)
      return {'validation_correct': zero, 'training_correct': zero,
              'validation_loss': self._mse(params, data.test_chunks, data.test_valid),
              'training_loss': self._mse(params, data.train_chunks, data.train_valid)}
    return {'validation_correct': self._accuracy(params, data.test_chunks, data.test_valid),
            'training_correct': self._accuracy(params, data.train_chunks, data.train_valid)}

  def _probe_weights(self, state: RunState, spec: RunSpec, data: Data):
    """The weight-only probes (``weight_only = True``) on the state's weights, untrained:
    evaluate-only runs (``epochs = 0``) probe initial or restored weights. The epoch-mean
    gradient some read is taken at these fixed weights over epoch 0's batches (dropout as
    in training, no optimiser step). Returns ({probe/metric: value}, presence, counts)."""
    n = data.train_NxC.shape[0]
    root = jax.random.wrap_key_data(state.key)
    epoch = jnp.int32(0)
    losses = None if state.order_state is None else self.example_losses(state.params, data)
    idx_SxB, mask_SxB = orderings.batch_indices(self.epoch_order(root, spec, epoch, n, losses),
                                                self.hyper.batch_size)
    epoch_key = jax.random.fold_in(jax.random.fold_in(root, DROPOUT_STREAM), epoch)
    out = self._scan_epoch(state.params, state.opt_state, spec, data, epoch, idx_SxB, mask_SxB,
                           lambda i: jax.random.fold_in(epoch_key, i), update=False,
                           grad_mean=True)
    steps = idx_SxB.shape[0]
    counts = self._evaluate(state.params, data)
    val_acc = 100.0 * counts['validation_correct'] / jnp.sum(data.test_valid)
    opt_state, _ = self._epoch_opt_state(state.opt_state, spec, epoch, steps)
    _, metrics, present = self._run_probes(
        state, spec, state.probes, state.params, opt_state, jnp.mean(out.loss_S),
        out.grad_mean, data.train_NxC[idx_SxB[0]], data, epoch, val_acc,
        only=self.weight_probes)
    return metrics, present, counts

  def _run_probes(self, state: RunState, spec: RunSpec, probes: dict, params, opt_state, loss,
                  grad_mean, first_batch, data: Data, epoch, validation_accuracy, only=None):
    """Every probe's (or ``only`` those probes') ``on_epoch``: (new probe states,
    {probe/metric: value}, presence)."""
    root = jax.random.wrap_key_data(state.key)
    info = instrument.EpochInfo(
        epoch=epoch, params=params, params_before=state.params, opt_state=opt_state,
        grad_mean=grad_mean, loss=loss,
        learning_rate=opt_state.hyperparams['learning_rate'],
        key=jax.random.fold_in(jax.random.fold_in(root, PROBE_STREAM), epoch),
        train_NxC=data.train_NxC, first_batch_BxC=first_batch,
        validation_accuracy=validation_accuracy, apply=self.model.apply, loss_fn=self.loss,
        reference=spec.reference, active=state.active,
        replay=functools.partial(self._replay, state, spec, data, epoch))
    new, metrics, present = dict(probes), {}, {}
    for p in self.probes if only is None else only:
      new[p.name], m, present[p.name] = self._fire(p, probes[p.name], info, epoch)
      metrics.update({f'{p.name}/{k}': v for k, v in m.items()})
    return new, metrics, present

  def _fire(self, probe, state, info: instrument.EpochInfo, epoch):
    """``probe.on_epoch`` where its cadence fires at ``epoch``, else (state unchanged,
    zeros, not present). The test reads only the epoch, which every run of a batch shares,
    so under ``vmap`` it stays a real conditional and a probe that does not fire costs
    nothing."""
    kind = instrument.cadence_of(probe)
    on = lambda s: probe.on_epoch(s, info)
    if self.cadence.always(kind):
      return on(state)
    shapes = jax.eval_shape(on, state)[1]
    off = lambda s: (s, jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), shapes),
                     jnp.array(False))
    return jax.lax.cond(self.cadence.fires(kind, epoch, jnp), on, off, state)

  def _epoch(self, state: RunState, spec: RunSpec, data: Data, epoch, do_eval: bool,
             do_probe: bool = False):
    do_probe = do_probe and bool(self.probes)
    params, opt_state, loss, probes, grad_mean, first_batch = self._train_epoch(
        state, spec, data, epoch, grad_mean=do_probe and self._grad_mean, record=do_probe)
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
    trained = state.active & finite
    metrics = {'loss': loss, 'trained': state.active}
    if self.hyper.l1:
      metrics['l1_penalty'] = optim.l1_penalty(params, self.hyper.l1)
    reached = jnp.zeros((), bool)
    if do_eval:
      metrics.update(self._evaluate(params, data))
      reached = metrics['validation_correct'] >= self.hyper.target_correct
    if do_probe:  # snapshot epochs, where phases reads the accuracy, always evaluate
      val_acc = (100.0 * metrics['validation_correct'] / jnp.sum(data.test_valid)
                 if do_eval else jnp.float32(jnp.nan))
      probes, metrics['probes'], metrics['probes_present'] = self._run_probes(
          state, spec, probes, params, opt_state, loss, grad_mean, first_batch, data, epoch,
          val_acc)
    keep = lambda new, old: jnp.where(trained, new, old)
    # Probes that leave stopped runs' states as they were skip the select (for a window of
    # parameter vectors: a copy and a select of the whole window).
    unkept = {p.name for p in self.probes if getattr(p, 'masks_inactive', False)}
    new_state = RunState(
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        key=state.key,
        epoch=jnp.where(trained, epoch + 1, state.epoch),
        active=trained & ~reached,
        stop_reason=jnp.where(state.active & ~finite, NON_FINITE,
                              jnp.where(trained & reached, REACHED_TARGET, state.stop_reason)),
        probes={n: v if n in unkept else jax.tree.map(keep, v, state.probes[n])
                for n, v in probes.items()},
        order_state=state.order_state)
    return new_state, metrics

  def _batched_epoch(self, state, spec, data, epoch, do_eval, do_probe=False):
    """``_epoch`` over the runs axis (the data too unless all runs share it), after the
    losses of loss-ordered runs are brought up to date."""
    state = self._refresh_order_state(state, spec, data, epoch)
    fn = functools.partial(self._epoch, do_eval=do_eval, do_probe=do_probe)
    return jax.vmap(fn, in_axes=(0, 0, self._data_axis, None))(state, spec, data, epoch)


def _masked_mean(x_B, mask_B):
  mask = mask_B.astype(x_B.dtype)
  return jnp.sum(x_B * mask) / jnp.sum(mask)


def target_correct(target_acc: float, n_test: int) -> int:
  """Fewest correct test predictions c with 100 * c / n_test >= target_acc (float64, as the
  host computes accuracies), so device and host agree on when a run reaches its target."""
  c = max(0, math.ceil(target_acc * n_test / 100.0))
  while c > 0 and 100.0 * (c - 1) / n_test >= target_acc:
    c -= 1
  while c <= n_test and 100.0 * c / n_test < target_acc:
    c += 1
  return c


def accuracies(counts: dict, data: Data) -> dict:
  """Host-side percentages (float64) from ``evaluate``'s counts (any leading axes); a
  regression's ``validation_loss`` and ``training_loss`` pass through (float64)."""
  losses = {k: np.asarray(counts[k], np.float64) for k in ('validation_loss', 'training_loss')
            if k in counts}
  return {**losses, 'validation_accuracy': 100.0 * np.asarray(counts['validation_correct'],
                                                     np.float64) / data.n_test,
          'training_accuracy': 100.0 * np.asarray(counts['training_correct'],
                                                   np.float64) / data.n_train}


def run_slice(tree, r: int):
  """Run ``r`` of a batched pytree."""
  return jax.tree.map(lambda x: x[r], tree)


def stack_runs(trees: Sequence[Any]):
  """Inverse of ``run_slice``: stack single-run pytrees along a new runs axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)



