"""The experiment: build data, model and runs from a config, train, write every output.

``run(config, workdir)`` is what ``main.py`` calls and what a notebook can call. The
epoch loop is one jitted call per epoch for the whole batch of runs; the host only
fetches a few scalars per run, writes the sinks and hands checkpoints to Orbax.
"""

from __future__ import annotations

import contextlib
import collections
import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ordered_jax import (budget, checkpoint, console, continuation, environment, identity,
                         instrument, lockstep, models, optim, orderings, runs, sharding,
                         sinks, tasks, train, trajectory)
from ordered_jax import workdir as workdir_lib
from ordered_jax import teacher as teacher_lib

EXPERIMENT = 'mod_arithmetic'
MEMORIZATION_ACC = 99.0  # train accuracy (percent) that counts as memorised
# Fields that may change between a run and its --resume (they do not touch the trajectory).
RESUME_SAFE = ('tensorboard', 'csv', 'checkpoint_every', 'keep_checkpoints', 'keep_every',
               'stop_after', 'wandb', 'trajectory')


WorkdirError = workdir_lib.WorkdirError  # the workdir's state forbids the request
DiskFull = workdir_lib.DiskFull  # a full disk stopped the run (its last checkpoint is kept)


class Interrupted(RuntimeError):
  """SIGINT/SIGTERM arrived; a checkpoint was written. ``signum`` says which."""

  def __init__(self, signum: int, epoch: int):
    super().__init__(f'interrupted by {signal.Signals(signum).name} after epoch {epoch}; '
                     'checkpoint written, continue with --resume')
    self.signum = signum


@contextlib.contextmanager
def _signal_flag():
  """Turns SIGINT/SIGTERM into a flag read between epochs; a second SIGINT aborts at once."""
  flag: dict[str, Any] = {'signum': None}
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def handler(signum, frame):
    del frame
    if flag['signum'] is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    flag['signum'] = signum

  old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield flag
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def model_config(config) -> models.ModelConfig:
  """The model of ``config.model`` sized for ``config``'s task (vocabulary = classes = the
  group order, one input per operand)."""
  t = runs.task(config)
  return models.ModelConfig(vocab=t.order, embed_dim=config.embed_dim,
                            num_heads=config.num_heads, layers=config.layers,
                            mlp_dim=config.mlp_dim, dropout=config.dropout,
                            identical_layers=config.identical_layers, kind=config.model,
                            n_ops=t.n_ops, activation=config.mlp.activation,
                            embed_trainable=config.mlp.embed_trainable,
                            inner_product=config.mlp.inner_product,
                            other_layers=config.mlp.get('other_layers', 0),
                            complex_weights=config.mlp.get('complex_weights', False),
                            imag_init=config.mlp.get('imag_init', 0.0),
                            tied_head=config.gpt2.tied_head if 'gpt2' in config else True,
                            value_mode=(config.gpt2.value_mode if 'gpt2' in config
                                        else 'resformer'),
                            options=_model_section(config),
                            **dln_shape(config))


def _model_section(config) -> tuple:
  """``ModelConfig.options``: the model's own config section, if it declares one."""
  kind = models.REGISTRY.get(config.model)
  if kind is None or kind.section is None:
    return ()
  section = config.get(kind.section) or {}
  if not hasattr(section, 'items'):
    raise runs.ConfigError(kind.section, f'must be a group of fields (model {kind.name!r} '
                           f'reads its options there); got {section!r}')
  return models.freeze(section)


def dln_shape(config) -> dict:
  """The dln's ModelConfig fields: depth, width, gamma of ``config.dln`` (defaults where
  a config predates them); the teacher task's sizes as its input and output sizes."""
  d = config.get('dln', {})
  io = runs.teacher_dim(config)['dim'] if runs.is_teacher(config) else 0
  return dict(depth=d.get('depth', 2), width=d.get('width', 16), gamma=d.get('gamma', 0.5),
              in_dim=io, out_dim=io)



# On the CPU, an evaluation chunk whose activations outgrow the caches is slower per pair
# (reference model, 2 cores: 1,024 pairs per chunk evaluate 1.1-1.4x faster than the
# configured 2,048 at p = 97 and 1.1x at p = 9,973; docs/benchmarks.md); accelerators keep
# the configured size.
CPU_EVAL_BYTES = 16 * 2**20


def eval_chunk(config, backend: str | None = None) -> int:
  """Pairs per evaluation chunk: ``eval_batch_size``, capped on the CPU to the largest
  power of two whose widest hidden activation (operands x max(MLP width, 3 x embedding)
  float32 values per pair) fits in ``CPU_EVAL_BYTES``. Counts of correct predictions do
  not depend on the chunk (docs/configs.md)."""
  backend = backend or jax.default_backend()
  if backend != 'cpu':
    return config.eval_batch_size
  m = model_config(config)
  widest = 4 * m.n_ops * max(m.mlp_dim, 3 * m.embed_dim)
  cap = 1 << max(0, (CPU_EVAL_BYTES // widest).bit_length() - 1)
  return min(config.eval_batch_size, cap)


def schedule(config) -> optim.Schedule:
  """The config's learning-rate schedule (``optim.Schedule``; docs/optimization.md)."""
  return optim.Schedule(kind=config.schedule, epochs=config.epochs, min_lr=config.min_lr,
                        warmup_epochs=config.warmup_epochs,
                        step_every=config.schedule_step.every,
                        step_gamma=config.schedule_step.gamma, gamma=config.schedule_gamma,
                        changes=runs.changes(config, 'lr'))


def make_trainer(config, shared_data: bool = True, probes=(),
                 batch_size: int | None = None) -> train.Trainer:
  """The config's trainer (with ``batch_size`` instead of the config's, for interventions)."""
  gf = config.grokfast
  hyper = train.Hyper(batch_size=batch_size or config.batch_size, epochs=config.epochs,
                      min_lr=config.min_lr,
                      target_correct=train.target_correct(config.target_acc,
                                                          runs.sizes(config)[1]),
                      optimizer=config.optimizer, b1=config.adam_b1, b2=config.adam_b2,
                      eps=config.adam_eps, momentum=config.momentum, grokfast=gf.kind,
                      grokfast_alpha=gf.alpha,
                      grokfast_lamb=gf.lamb_ma if gf.kind == 'ma' else gf.lamb_ema,
                      grokfast_window=gf.window, grad_clip=config.grad_clip,
                      loss=config.loss, l1=config.l1,
                      set_weight_reg=float(config.mlp.get('set_weight_reg', 0.0)),
                      schedule=schedule(config),
                      regression_in=(config.teacher.dim if runs.is_teacher(config) else 0),
                      **_online(config))
  return train.Trainer(models.Model(model_config(config)), hyper, shared_data=shared_data,
                       probes=probes, cadence=cadence(config))


def _online(config) -> dict:
  """The trainer's online-teacher fields: W* (nested tuples, static) and the noise."""
  if not (runs.is_teacher(config) and config.teacher.get('online', False)):
    return {}
  t = config.teacher
  seed = runs.expand(config)[0].data_seed
  w = teacher_lib.matrix(config.task.strip().partition(':')[2], t.dim, t.scale, seed,
                         **runs.teacher_kw(config))
  return {'online_teacher': tuple(map(tuple, w.tolist())), 'online_noise': float(t.noise_std)}


def cadence(config) -> instrument.Cadence:
  """The probe schedule (docs/probes.md#cadence): per-epoch probes every
  ``probes.every`` epochs (1, the reference), snapshot probes every ``probe_every`` (the
  reference's snapshot_every), the counterfactual family every epoch below
  ``probes.counterfactual.every_epoch_until`` and at snapshots after."""
  pc = config.probes if 'probes' in config else {}
  every = pc.get('every', 1) if pc else 1
  early = pc.counterfactual.get('every_epoch_until', 50) if pc and 'counterfactual' in pc else 50
  return instrument.Cadence(every=int(every), snapshot=int(config.probe_every),
                            early=int(early))


@dataclasses.dataclass
class Batch:
  """A config's runs, ready to train: trainer, device data, per-run spec, fresh state."""

  runs: list[runs.Run]
  trainer: train.Trainer
  data: train.Data
  spec: train.RunSpec
  state: train.RunState
  train_sets: dict[int, np.ndarray]  # host train arrays by data seed


def _is_single_weights(path: str) -> bool:
  """A file, one of our run folders, its final_params/ or one checkpoints/<step>/."""
  return os.path.isfile(path) or any(os.path.exists(os.path.join(path, p)) for p in (
      'final_params', 'checkpoints', 'state', '_CHECKPOINT_METADATA'))


def load_reference(config, batch: list[runs.Run], source: str) -> list[Any]:
  """Each run's reference ("solution") parameters.

  ``source`` is the workdir of an earlier run of the same runs (each run reads
  ``<source>/<run>``'s final weights), or one set of weights for every run: one of our run
  folders or checkpoints, or a reference ``.pt`` file (``checkpoint.load_weights``). A
  missing or unreadable file is a ``ConfigError`` naming ``probes.reference_weights``."""
  model = models.Model(model_config(config))
  single = _is_single_weights(source)
  out = []
  for r in batch:
    path = source if single else os.path.join(source, r.name)
    try:
      if not os.path.exists(path):
        raise FileNotFoundError(path)
      out.append(checkpoint.load_weights(path, model) if single else
                 checkpoint.load_params(path, model))
    except Exception as e:  # pylint: disable=broad-except
      what = repr(source) if single else f'run {r.name!r} under {source!r}'
      raise runs.ConfigError('probes.reference_weights', f'cannot read the weights of {what} '
                             f'({type(e).__name__}); give a finished run, one of its '
                             'checkpoints, a reference .pt file or the workdir of a finished '
                             'run of the same config') from None
    if single:
      return out * len(batch)
  return out


def load_init(config) -> tuple[Any, continuation.Continuation | None]:
  """(params, continuation): the weights ``config.init_from`` names (a reference ``.pt``
  file, one of our run folders or checkpoints; see ``checkpoint.load_weights``), shaped for
  the config's model, and with ``config.init_optimizer`` the reference checkpoint's
  optimiser state and epoch (``continuation.load``; else None). A missing, unreadable or
  differently shaped file is a ``ConfigError``."""
  path = config.init_from
  model = models.Model(model_config(config))
  if config.get('init_optimizer', False):
    return continuation.load(config, path, model)
  try:
    return checkpoint.load_weights(path, model), None
  except Exception as e:  # pylint: disable=broad-except
    why = (str(e).splitlines() or [''])[0][:200]
    raise runs.ConfigError('init_from', f'cannot load weights from {path!r}: '
                           f'{type(e).__name__}: {why}') from None


def build(config, probes=(), reference=None, init_params=None,
          batch: list[runs.Run] | None = None) -> Batch:
  """Data (one copy per distinct seed, shared on device when all runs share it), trainer,
  orders and initial state for every run of ``config``; ``probes`` go to the trainer and
  ``reference`` (one parameter tree per run, or None) to the probes; ``init_params`` (one
  tree, or None) replaces every run's initial weights."""
  config = runs.resolve(config)
  batch = runs.expand(config) if batch is None else batch
  t_data = time.perf_counter()
  task = runs.task(config)
  n_train, n_test = runs.sizes(config)
  host_data = {}
  for r in batch:
    if r.data_seed in host_data:
      continue
    own = orderings.get(r.strategy).make_data(config, n_test, r.data_seed)  # e.g. resonant
    if own is not None:
      host_data[r.data_seed] = own
    elif runs.is_teacher(config):
      tc = config.teacher
      host_data[r.data_seed] = teacher_lib.make(task.name.partition(':')[2], tc.dim, tc.scale, tc.noise_std,
                                                n_train, n_test, r.data_seed,
                                                **runs.teacher_kw(config))
    else:
      host_data[r.data_seed] = tasks.make_task(task, n_train, n_test, r.data_seed,
                                               config.data_generator)
  shared = len(host_data) == 1
  per_seed = {s: train.make_data(tr, te, eval_chunk(config))
              for s, (tr, te) in host_data.items()}
  data = next(iter(per_seed.values())) if shared else train.stack_runs(
      [per_seed[r.data_seed] for r in batch])
  logging.info('data: task %s, %d train / %d test examples per run, %d distinct set(s), %.2fs',
               task.name, n_train, n_test, len(host_data),
               time.perf_counter() - t_data)
  trainer = make_trainer(config, shared_data=shared, probes=probes)
  parts = orderings.spec_parts(config, [r.strategy for r in batch],
                               [host_data[r.data_seed][0] for r in batch])
  spec = jax.device_put(train.RunSpec(
      lr=np.array([r.lr for r in batch], np.float32),
      weight_decay=np.array([r.weight_decay for r in batch], np.float32),
      reference=None if reference is None else train.stack_runs(reference),
      order_key=np.stack([jax.random.key_data(jax.random.key(r.order_seed)) for r in batch]),
      **parts))
  state = trainer.init_state([r.seed for r in batch], [r.lr for r in batch],
                             [r.weight_decay for r in batch], params=init_params,
                             init_seeds=[r.init_seed for r in batch])
  state = state.replace(order_state=orderings.initial_state(parts['orderings'], len(batch),
                                                             n_train))
  return Batch(batch, trainer, data, spec, state, {s: v[0] for s, v in host_data.items()})


def run_config(config, r: runs.Run, env: dict) -> dict:
  """Run ``r``'s resolved config as saved in ``experiment_config.json`` (with ``env``)."""
  cfg = config.to_dict()
  cfg.update(strategy=r.strategy, seed=r.seed, lr=r.lr, weight_decay=r.weight_decay,
             seeds=[], lrs=[], weight_decays=[], run_name=r.name, stride=runs.stride(config),
             experiment_name=EXPERIMENT)
  cfg.update(orderings.get(r.strategy).from_config(config).run_fields(config))
  return {**json.loads(json.dumps(cfg, default=list)), 'environment': env}


def _occupied(run_dir: str) -> bool:
  return os.path.isdir(run_dir) and bool(os.listdir(run_dir))


def _check_workdir(dirs, workdir, resume, overwrite, files=()):
  """Whether the run folders ``dirs`` (and the batch-level ``files``) may be written."""
  if resume and overwrite:
    raise WorkdirError('--resume and --overwrite exclude each other')
  busy = [d for d in dirs if _occupied(d)]
  if not resume:
    for f in files:
      if os.path.exists(f):
        if not overwrite:
          raise WorkdirError(f'{f} already exists; pass --resume to continue its runs or '
                             '--overwrite to replace it')
        os.remove(f)
  if resume:
    if not busy:
      raise WorkdirError(f'--resume: no run of this config in {workdir} to resume')
    if all(workdir_lib.is_complete(d) for d in dirs):
      raise WorkdirError(f'--resume: every run in {workdir} is already complete')
  elif busy:
    if not overwrite:
      raise WorkdirError(
          f'{busy[0]} already holds a run; pass --resume to continue it or --overwrite to '
          'replace it')
    for d in busy:
      shutil.rmtree(d)


def _saved_config(run_dir: str) -> dict | None:
  """The run's ``experiment_config.json`` (None if missing); one-line ``WorkdirError`` if
  it is not a JSON object."""
  path = os.path.join(run_dir, 'experiment_config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError, RecursionError) as e:
    why = e.strerror if isinstance(e, OSError) else 'not valid JSON'
    raise WorkdirError(f'--resume: {path} cannot be read ({why}); restore it, or pass '
                       '--overwrite to start the run again') from None
  if not isinstance(old, dict) or not isinstance(old.get('environment', {}), dict):
    raise WorkdirError(f'--resume: {path} is not a run config (a JSON object); restore it, '
                       'or pass --overwrite to start the run again')
  return old


def _check_resume_config(run_dir: str, new: dict) -> None:
  old = _saved_config(run_dir)
  if old is None:
    raise WorkdirError(f'--resume: {run_dir} has checkpoints but no experiment_config.json; '
                       'restore it, or pass --overwrite to start the run again')
  skip = set(RESUME_SAFE) | {'environment', 'sweep'}  # the sweep spec is not the run's
  # Identities: a field added after the run was saved reads as its default (identity.py).
  drop = lambda c: {k: v for k, v in c.items() if k not in skip}
  k = identity.first_difference(drop(old), drop(new))
  if k is not None:
    raise WorkdirError(f'--resume: config.{k} differs from the saved run '
                       f'({identity.value(drop(old), k)!r} -> {identity.value(drop(new), k)!r}); '
                       'resume with the same config')
  if old.get('environment') != new['environment']:
    logging.warning('resuming on a different environment; results may not be bit-identical '
                    'to an uninterrupted run')


def _check_meta(meta: dict) -> None:
  """A checkpoint's bookkeeping has every field a run keeps (else ValueError)."""
  missing = sorted(set(_fresh_host(runs.Run('', '', 0, 0.0, 0.0))) - set(meta))
  if missing:
    raise ValueError(f'its meta lacks {", ".join(missing)}')


def _fresh_host(r: runs.Run) -> dict:
  """Host-side bookkeeping of one run (saved in every checkpoint's meta)."""
  return {'run': r.name, 'init_eval': None, 'last_eval': None, 'memorization_epoch': None,
          'generalization_epoch': None, 'steps': 0, 'epochs_trained': 0, 'last_epoch': None,
          'stop_reason': 'running', 'stop_epoch': None, 'duration_seconds': 0.0}


def _progress(batch, quiet, total, initial, every=0):
  """The progress output (``console.bar``): ``quiet`` False = a bar on a terminal and lines
  elsewhere, True = lines, 'silent' = none, 'live' = the full-screen view."""
  mode = quiet if quiet in ('silent', 'live') else 'lines' if quiet else 'auto'
  return console.bar(mode, batch[0].name if len(batch) == 1 else f'{len(batch)} runs',
                     total, initial, every)


def _postfix(batch, host, active) -> str:
  parts = []
  for r, h, a in zip(batch, host, active):
    ev = h['last_eval'] or {}
    if 'validation_loss' in ev:  # a regression: its test loss, no accuracy
      parts.append(f"{r.name}{'' if a else '*'} loss {h.get('last_loss', float('nan')):.3g} "
                   f"test loss {ev['validation_loss']:.3g}")
      continue
    parts.append(f"{r.name}{'' if a else '*'} loss {h.get('last_loss', float('nan')):.3g} "
                 f"train {ev.get('training_accuracy', float('nan')):.1f} "
                 f"val {ev.get('validation_accuracy', float('nan')):.1f}")
  if len(parts) > 4 and any('validation_loss' in (h['last_eval'] or {}) for h in host):
    best = min((h['last_eval'] or {}).get('validation_loss', np.inf) for h in host)
    return f'{int(np.sum(active))}/{len(parts)} active, best test loss {best:.3g}'
  if len(parts) > 4:
    best = max((h['last_eval'] or {}).get('validation_accuracy', 0.0) for h in host)
    return f'{int(np.sum(active))}/{len(parts)} active, best val {best:.1f}'
  return ' | '.join(parts)


def _statuses(batch, host, active, latest) -> list[console.RunStatus]:
  """The live view's rows from the bookkeeping the loop keeps anyway (``latest``: each
  run's last probe headline values)."""
  out = []
  for r, h, a, p in zip(batch, host, active, latest):
    ev = h['last_eval'] or {}
    out.append(console.RunStatus(
        r.name, active=bool(a), loss=h.get('last_loss', float('nan')),
        train=ev.get('training_accuracy', float('nan')),
        test=ev.get('validation_accuracy', float('nan')),
        memorized=h['memorization_epoch'], grokked=h['generalization_epoch'],
        stop=h['stop_reason'] if h['stop_reason'] != 'running' else '', probes=p))
  return out


def last_epoch(config) -> int:
  """The epoch count this invocation trains up to: ``stop_after`` when set (> 0), else
  ``epochs``; the schedule always spans ``epochs``."""
  cap = config.get('stop_after', 0)
  return min(cap, config.epochs) if cap else config.epochs


def _summary(config, r: runs.Run, h: dict, final_eval: dict, n_params: int, env: dict,
             steps_per_epoch: int, capped: bool = False) -> dict:
  dur = h['duration_seconds']
  init = h['init_eval'] or {}
  deltas = {}
  for k in init:
    if k in final_eval:
      d = {'init': init[k], 'final': final_eval[k], 'change': round(final_eval[k] - init[k], 6)}
      if init[k] != 0:
        d['ratio'] = round(final_eval[k] / init[k], 4)
      deltas[k] = d
  mem, gen = h['memorization_epoch'], h['generalization_epoch']
  return {
      'experiment': EXPERIMENT, 'strategy': r.strategy, 'run': r.name,
      'timing': {'duration_seconds': round(dur, 2),
                 'compile_seconds': round(h.get('compile_seconds', 0.0), 2),
                 'steps_per_second': round(h['steps'] / dur, 2) if dur else None,
                 'epochs_per_second': round(h['epochs_trained'] / dur, 4) if dur else None},
      'model': {'parameters': n_params},
      'training': {
          'planned_epochs': config.epochs,
          'epochs_trained': h['epochs_trained'],
          'last_epoch': h['last_epoch'],
          'actual_epochs': h['last_epoch'],  # the reference's name for last_epoch
          'early_stopped': h['stop_reason'] != 'running' and h['epochs_trained'] < config.epochs,
          'stop_reason': h['stop_reason'] if h['stop_reason'] != 'running' else (
              'stop_after' if capped else 'completed'),
          'total_gradient_steps': h['steps'], 'steps_per_epoch': steps_per_epoch,
          'seed': r.seed, 'lr': r.lr, 'batch_size': config.batch_size,
          'weight_decay': r.weight_decay, 'optimizer': config.optimizer,
          'device': env['device_kind']},
      'init_eval': init, 'final_eval': final_eval, 'deltas': deltas,
      'grokking': {'memorization_epoch': mem, 'generalization_epoch': gen,
                   'grokking_gap': gen - mem if mem is not None and gen is not None else None,
                   'memorization_threshold': MEMORIZATION_ACC,
                   'generalization_threshold': config.target_acc},
  }


def _record(config, r: runs.Run, h: dict, m: dict, epoch: int,
            steps_per_epoch: int) -> dict | None:
  """Update run ``r``'s bookkeeping ``h`` with one trained epoch's metrics ``m``.

  Returns the epoch's metrics row, or None when the epoch was not finite (the run stops,
  its weights are those from before the epoch)."""
  h['last_loss'] = float(m['loss'])
  if not math.isfinite(h['last_loss']):
    logging.error('run %s: non-finite loss or weights in epoch %d; the run stops and keeps '
                  'its weights from %s', r.name, epoch,
                  f'after epoch {epoch - 1}' if epoch else 'initialisation')
    h.update(stop_reason=train.STOP_REASONS[train.NON_FINITE], stop_epoch=epoch)
    return None
  h['steps'] += steps_per_epoch
  h['epochs_trained'] += 1
  h['last_epoch'] = epoch
  # The rate of the next epoch's first step (per-epoch schedules: the next epoch's rate).
  row = {'training_metrics/loss': h['last_loss'],
         'training_metrics/perplexity': math.exp(min(h['last_loss'], 700.0)),
         'training_metrics/learning_rate': float(schedule(config).lr(
             r.lr, epoch + 1, 0, steps_per_epoch, xp=np))}
  if 'l1_penalty' in m:
    row['training_metrics/l1_penalty'] = float(m['l1_penalty'])
  if 'validation_accuracy' not in m:
    return row
  ev = {k: float(m[k]) for k in ('validation_accuracy', 'training_accuracy',
                                 'validation_loss', 'training_loss') if k in m}
  h['last_eval'] = ev
  for k in ('validation_loss', 'training_loss'):  # regressions (task teacher:...)
    if k in ev:
      row[f'training_metrics/{k}'] = ev[k]
  row['training_metrics/training_accuracy'] = ev['training_accuracy']
  row['training_metrics/validation_accuracy'] = ev['validation_accuracy']
  if h['memorization_epoch'] is None and ev['training_accuracy'] >= MEMORIZATION_ACC:
    h['memorization_epoch'] = epoch
  if h['generalization_epoch'] is None and ev['validation_accuracy'] >= config.target_acc:
    h['generalization_epoch'] = epoch
    h.update(stop_reason=train.STOP_REASONS[train.REACHED_TARGET], stop_epoch=epoch)
    logging.info('run %s reached %.2f%% validation accuracy at epoch %d', r.name,
                 ev['validation_accuracy'], epoch)
  return row


def probe_epoch(config, epoch: int, probes) -> bool:
  """Whether any probe fires at ``epoch`` (each at its cadence, ``cadence(config)``)."""
  c = cadence(config)
  return any(bool(c.fires(instrument.cadence_of(p), epoch)) for p in probes)


def eval_epoch(config, epoch: int) -> bool:
  """Evaluation epochs: every ``eval_every``, every snapshot (``probe_every``, as the
  reference's snapshots force an evaluation) and the last epoch."""
  return (epoch % config.eval_every == 0 or epoch % config.probe_every == 0
          or epoch == config.epochs - 1)


def _warn_missing_rows(config, path: str, start: int, last_epoch: int | None) -> None:
  """One warning when a resumed run's JSONL lacks rows of evaluated epochs before
  ``start`` (the file removed, cut or edited since): they are not recomputed, and the
  checkpoints, summary and trajectory do not depend on them. One more when it holds an
  epoch's row twice (a file joined or edited by hand): kept, since the readers merge an
  epoch's rows, but a curve drawn from the file by other tools would double it."""
  end = start if last_epoch is None else min(start, last_epoch + 1)
  want = [e for e in range(end) if eval_epoch(config, e)]
  counts = collections.Counter(r.get('epoch') for r in sinks.read_jsonl(path))
  missing = [e for e in want if e not in counts]
  if missing:
    logging.warning('--resume: %s %s the rows of %s before %d (%s); they are not '
                    'recomputed: restore the file to keep the whole curve',
                    path, 'lacks' if os.path.exists(path) else 'is gone, with',
                    _epochs(len(missing), 'evaluated '), start, _some(missing))
  twice = sorted(e for e, n in counts.items() if n > 1 and isinstance(e, int))
  if twice:
    logging.warning('--resume: %s holds more than one row for %s (%s); kept as they are',
                    path, _epochs(len(twice)), _some(twice))


def _epochs(n: int, kind: str = '') -> str:
  return f'{n} {kind}epoch' + ('s' if n != 1 else '')


def _some(epochs: list[int]) -> str:
  return ', '.join(map(str, epochs[:5])) + (', ...' if len(epochs) > 5 else '')


def _probe_row(probes, m: dict, i: int) -> dict:
  """Run ``i``'s probe metrics as JSON-ready values (probes that were not present: none)."""
  row = {}
  for p in probes:
    if not bool(m['probes_present'][p.name][i]):
      continue
    prefix = f'{p.name}/'
    mine = {k[len(prefix):]: np.asarray(v[i]) for k, v in m['probes'].items()
            if k.startswith(prefix)}
    host = p.to_host(mine) if hasattr(p, 'to_host') else mine
    for k, v in host.items():
      row[prefix + k] = v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v
  return row


class _Lockstep:
  """``config.lockstep``: the batch's pairwise comparison, written to
  ``<workdir>/lockstep.jsonl`` after every evaluated epoch (``ordered_jax.lockstep``)."""

  def __init__(self, config, workdir, batch, trainer, state, start, write=True):
    self.names = [r.name for r in batch]
    self.layers = models.param_names(train.run_slice(state.params, 0))
    self.compare = lockstep.make_compare(trainer.model.apply, len(batch),
                                         regression_in=trainer.hyper.regression_in,
                                         dln=trainer.model.cfg.kind == 'dln')
    self.sink = sinks.JsonlSink(os.path.join(workdir, lockstep.FILENAME),
                                start_epoch=start) if write else sinks.MultiSink([])

  def write(self, epoch, params, data):
    m = sharding.fetch(self.compare(params, data.test_chunks, data.test_valid))
    for row in lockstep.rows(m, self.names, self.layers):
      self.sink.write(epoch, row)

  def close(self):
    self.sink.close()


def _close_all(closers) -> None:
  """Call every closer even if some fail; then raise the first failure (if no exception
  is already on its way, which it would otherwise replace)."""
  errors = []
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  if errors and sys.exc_info()[0] is None:
    raise errors[0]


def _probe_untrained(trainer, state, spec, data, batch, writers) -> None:
  """Evaluate-only (``epochs = 0``): one row at epoch 0 with the weight-only probes and
  the accuracies of the initial (or ``init_from``) weights; other probes need training."""
  skipped = [p.name for p in trainer.probes if p not in trainer.weight_probes]
  if skipped:
    logging.info('epochs=0: probes that need training are skipped: %s', ', '.join(skipped))
  metrics, present, counts = sharding.fetch(trainer.probe_weights(state, spec, data))
  acc = train.accuracies(counts, data)
  m = {'probes': metrics, 'probes_present': present}
  for i, w in enumerate(writers):
    w.write(0, {'training_metrics/training_accuracy': float(acc['training_accuracy'][i]),
                'training_metrics/validation_accuracy': float(acc['validation_accuracy'][i]),
                **_probe_row(trainer.weight_probes, m, i)})


def run(config, workdir: str, *, resume: bool = False, overwrite: bool = False,
        quiet: bool | str = False, probes=(), batch: list[runs.Run] | None = None,
        print_every: int = 0) -> list[dict]:
  """Train every run of ``config`` into ``workdir/<run>/``; returns the summaries.

  ``probes`` (built by ``probes.build(config)``) add their metrics to the epoch rows.
  ``quiet``: False = a progress bar on a terminal, one line every ``print_every`` epochs
  (0 = about 50 lines a run) in logs and pipes; True = those lines always; 'silent' = no
  progress output; 'live' = a full-screen view of every run (``console.Live``; lines when
  not on a terminal).
  Before anything is built the config is validated and its memory estimated
  (``budget.check``); the run folders are locked for the whole run (``workdir.lock``:
  another process writing them is refused). A full disk stops the run with a one-line
  ``DiskFull``, its last complete checkpoint kept."""
  runs.validate(config)
  config = runs.resolve(config)  # strategy resonant sizes its own data and batches
  runs.validate(config)
  batch = runs.expand(config) if batch is None else batch
  budget.check(config, len(batch), probes)
  # Read before anything is written: a bad file leaves the workdir as it was.
  init = load_init(config) if config.get('init_from') and not resume else (None, None)
  runs.check_workdir(workdir)
  names = [r.name for r in batch] + ([lockstep.FILENAME] if config.get('lockstep') else [])
  dirs = [os.path.join(workdir, r.name) for r in batch]
  held = workdir_lib.lock(workdir, names) if sharding.is_primary() else contextlib.nullcontext()
  with held:
    try:
      return _run(config, workdir, resume=resume, overwrite=overwrite, quiet=quiet,
                  probes=probes, batch=batch, init=init, print_every=print_every)
    except Exception as e:  # pylint: disable=broad-except
      full = workdir_lib.disk_full(e)
      if full is None:
        raise
      raise _disk_full(config, dirs, full[0], e) from None


def _disk_full(config, dirs, path: str, e: Exception) -> DiskFull:
  """One line: where the disk is full, what a checkpoint needs, what is kept."""
  for d in dirs:
    workdir_lib.remove_partial_checkpoints(d)
  common = _common_steps(dirs)
  kept = (f'the checkpoint after epoch {max(common) - 1} is kept' if common else
          'no checkpoint was written')
  need = workdir_lib.gib(budget.state_bytes(config) * len(dirs) * 1.1 + len(dirs) * 2**18)
  where = path or os.path.dirname(dirs[0])
  if '.orbax-checkpoint-tmp' in where:  # a file of the unfinished (now removed) save
    where = where[:where.index('.orbax-checkpoint-tmp')].rsplit(os.sep, 1)[0]
  text = str(e) if isinstance(e, DiskFull) else (
      f'{where}: no space left on device ({workdir_lib.gib(workdir_lib.free_bytes(where))} '
      f'free; a checkpoint of this batch needs about {need})')
  err = DiskFull(f'{text}; {kept}: free some space and continue with --resume')
  err.path = where
  return err


def _common_steps(dirs) -> set[int]:
  common = set(checkpoint.steps(dirs[0]))
  for d in dirs[1:]:
    common &= set(checkpoint.steps(d))
  return common


def _run(config, workdir: str, *, resume: bool, overwrite: bool, quiet: bool | str, probes,
         batch: list[runs.Run], init: tuple, print_every: int = 0) -> list[dict]:
  """``run`` after validation, under the lock; ``init`` = ``load_init``'s (params,
  continuation), or (None, None)."""
  init_params, cont = init
  dirs = [os.path.join(workdir, r.name) for r in batch]
  source = config.probes.reference_weights if 'probes' in config else ''
  reference = None
  if probes and source:  # read before --overwrite may delete it ('auto' = this workdir)
    reference = load_reference(config, batch, workdir if source == 'auto' else source)
  primary = sharding.is_primary()  # with several processes, only process 0 writes files
  if primary:
    _check_workdir(dirs, workdir, resume, overwrite, files=[
        os.path.join(workdir, lockstep.FILENAME)] if config.get('lockstep', False) else [])
  sharding.barrier('workdir checked')
  env = environment.metadata()
  run_cfgs = [run_config(config, r, env) for r in batch]
  if resume and not _common_steps(dirs):
    # A run that never started here beside runs with checkpoints: another batch than the
    # saved one (starting afresh would delete the others' checkpoints).
    have = [r.name for r, d in zip(batch, dirs) if checkpoint.steps(d)]
    new = [r.name for r, d in zip(batch, dirs) if _saved_config(d) is None]
    if have and new:
      raise WorkdirError(
          f'--resume: run(s) {", ".join(new)} never ran in {workdir}, while '
          f'{", ".join(have)} have checkpoints: this is not the batch that was saved; resume '
          'that batch (its strategies and seeds), or use another --workdir for the new runs')
    # Killed before every run had a checkpoint: nothing to continue from, so the batch
    # starts again (as one batch, so it repeats an uninterrupted run).
    for d, c in zip(dirs, run_cfgs):
      if _saved_config(d) is not None:
        _check_resume_config(d, c)
    logging.warning('--resume: no checkpoint common to every run in %s (killed before its '
                    'first one); starting afresh', workdir)
    resume = False
    if config.get('init_from'):
      init_params, cont = load_init(config)
  if resume:
    for d, c in zip(dirs, run_cfgs):
      _check_resume_config(d, c)
    why = trajectory.check_resume(config, dirs)
    if why:
      raise WorkdirError(f'--resume: {why}')
    for d in dirs if primary else []:
      workdir_lib.unmark_complete(d)  # complete again only when this resume finishes

  b = build(config, probes, reference, init_params, batch)
  trainer, data, spec, state = b.trainer, b.data, b.spec, b.state
  mesh = sharding.runs_mesh()
  n_pad = sharding.padding(len(batch), mesh)
  n_params = int(sum(np.prod(x.shape[1:]) for x in jax.tree.leaves(state.params)))
  steps_per_epoch = orderings.steps_per_epoch(runs.sizes(config)[0], config.batch_size)
  if primary:
    for d in dirs:
      os.makedirs(d, exist_ok=True)
  mgrs = [checkpoint.manager(d, keep=config.keep_checkpoints, keep_every=config.keep_every)
          for d in dirs] if primary else []
  sharding.barrier('checkpoint folders')
  if not primary and resume:  # the others read the primary's checkpoints
    mgrs = [checkpoint.manager(d, read_only=True) for d in dirs]

  pending_init = None  # (counts, data) of the initial evaluation until read
  if resume:
    errors = []
    restored = checkpoint.restore_latest(mgrs, [train.run_slice(state, i)
                                                for i in range(len(batch))],
                                         check_meta=_check_meta, errors=errors)
    if restored is None:
      step, why = errors[0] if errors else (None, 'none found')
      raise WorkdirError(f'--resume: no readable checkpoint in {dirs[0]}/checkpoints (the '
                         f'latest, after epoch {step - 1 if step else "?"}: {why}); pass '
                         '--overwrite to start again')
    start, states, metas = restored
    state = jax.device_put(train.stack_runs(states))
    host = [dict(m) for m in metas]
    logging.info('resumed from the checkpoint after epoch %d', start - 1)
  else:
    start = 0
    host = [_fresh_host(r) for r in batch]
    if cont is not None:  # init_optimizer: count on from the reference's checkpoint
      state, start = continuation.apply(state, cont), cont.next_epoch
      for h in host:
        h.update(steps=cont.step, epochs_trained=start, last_epoch=start - 1)
    for d, c in zip(dirs, run_cfgs if primary else []):
      sinks.write_json(os.path.join(d, 'experiment_config.json'), c)
    # Dispatched, read later (``resolve_init``): it computes while the epoch compiles.
    pending_init = (trainer.evaluate(state.params, data), data)

  # Over every device: the runs axis split over a mesh (padded with inactive copies).
  state, spec, data = sharding.place(state, spec, data, mesh, n_pad,
                                     shared_data=trainer.shared_data)
  if mesh.size > 1:
    logging.info('%d runs (+%d padding) sharded over %d devices', len(batch), n_pad, mesh.size)
  for d, r, h in zip(dirs, batch, host) if resume and primary else []:
    _warn_missing_rows(config, os.path.join(d, f'{r.name}.jsonl'), start, h['last_epoch'])
  writers = [sinks.for_run(d, r.name, tensorboard=config.tensorboard, csv_file=config.csv,
                           start_epoch=start, config=c) if primary else sinks.MultiSink([])
             for d, r, c in zip(dirs, batch, run_cfgs)]
  if primary and config.get('wandb') and config.wandb.project:
    from ordered_jax import wandb_sink  # pylint: disable=g-import-not-at-top
    for w, d, r, c in zip(writers, dirs, batch, run_cfgs):
      w.sinks.append(wandb_sink.WandbSink(d, r.name, c, project=config.wandb.project,
                                          entity=config.wandb.entity, mode=config.wandb.mode,
                                          group=os.path.basename(os.path.abspath(workdir))))
  compare = None
  if config.get('lockstep', False):
    compare = _Lockstep(config, workdir, batch, trainer, state, start, write=primary)
  active = np.asarray(sharding.fetch(state.active))
  record = None
  if trajectory.enabled(config):  # <run>/trajectory.npy (ordered_jax.trajectory)
    record = trajectory.Recorder(config, dirs, train.run_slice(state.params, 0), start=start,
                                 resume=resume, active=active, write=primary)
    if not resume:
      record.initial(state.params, start - 1)
  end = last_epoch(config)
  bar = _progress(batch, 'silent' if not primary else quiet, end, start, print_every)
  live = getattr(bar, 'live', False)
  latest = [{} for _ in batch]  # --live: each run's last probe headline values
  last_saved = start if resume else None

  executables = {}
  n_train = runs.sizes(config)[0]
  trainers = {config.batch_size: trainer}  # more when interventions change the batch size

  def compiled(variant: tuple[int, bool, bool]):
    """The epoch for (batch size, do_eval, do_probe), compiled ahead of time once (timed
    apart)."""
    if variant not in executables:
      t = time.perf_counter()
      size = variant[0]
      if size not in trainers:
        trainers[size] = make_trainer(config, shared_data=trainer.shared_data, probes=probes,
                                      batch_size=size)
      executables[variant] = trainers[size].epoch.lower(
          state, spec, data, jnp.int32(0), do_eval=variant[1], do_probe=variant[2]).compile()
      for h in host:
        h['compile_seconds'] = h.get('compile_seconds', 0.0) + time.perf_counter() - t
    return executables[variant]

  def resolve_init():
    """The initial evaluation's accuracies into the host records (before they are saved)."""
    nonlocal pending_init
    if pending_init is not None:
      init_eval = train.accuracies(*pending_init)
      for i, h in enumerate(host):
        h['init_eval'] = {k: float(v[i]) for k, v in init_eval.items()}
      pending_init = None

  ckpt_bytes = int(sum(x.nbytes for x in jax.tree.leaves(state)) * 1.1) + len(batch) * 2**18

  def save_all(step):
    nonlocal last_saved
    resolve_init()
    if primary:  # refuse before Orbax starts a save that cannot fit
      workdir_lib.check_space(dirs[0], ckpt_bytes, f'the checkpoint after epoch {step - 1}')
    saved = sharding.fetch(state) if sharding.multiprocess() else state
    for i, m in enumerate(mgrs if primary else []):
      checkpoint.save(m, step, train.run_slice(saved, i), copy.deepcopy(host[i]))
    last_saved = step

  epochs_done = start
  last_eval = None  # the accuracies of the last epoch run, if it evaluated (after training)
  if config.epochs == 0 and trainer.weight_probes and not resume:
    _probe_untrained(trainer, state, spec, data, batch, writers)
  try:
    with _signal_flag() as flag:
      t0 = time.perf_counter()
      for epoch in range(start, end):
        if not active.any():
          break
        do_probe = probe_epoch(config, epoch, probes)
        do_eval = eval_epoch(config, epoch)
        size = runs.batch_size_at(config, epoch)
        steps_per_epoch = orderings.steps_per_epoch(n_train, size)
        variant = (size, do_eval, do_probe)
        now_before = time.perf_counter()
        if variant not in executables:
          compiled(variant)
          resolve_init()
          if bar is not None:  # the ETA counts training only
            bar.exclude(time.perf_counter() - now_before)
          t0 = time.perf_counter()
        state, m = compiled(variant)(state, spec, data, jnp.int32(epoch))
        m = sharding.fetch(m)
        now = time.perf_counter()
        last_eval = None
        if do_eval:
          acc = train.accuracies(m, data)
          m.update(acc)
          if np.all(m['trained'][:len(batch)]):  # an inactive run evaluated discarded weights
            last_eval = acc
        for i, (r, h) in enumerate(zip(batch, host)):
          if m['trained'][i]:
            h['duration_seconds'] += now - t0
            row = _record(config, r, h, {k: v[i] for k, v in m.items()
                                         if not k.startswith('probes')}, epoch,
                          steps_per_epoch)
            extra = _probe_row(probes, m, i) if do_probe and row is not None else {}
            if row is not None and (do_eval or extra):
              writers[i].write(epoch, {**row, **extra})
            if live and extra:
              latest[i].update(console.headline_values(extra))
        if compare is not None and do_eval:
          compare.write(epoch, state.params, data)
        if record is not None:  # runs whose epoch counted (trained, finite)
          record.after_epoch(epoch, state.params, [
              bool(m['trained'][i]) and h['last_epoch'] == epoch for i, h in enumerate(host)])
        epochs_done = epoch + 1
        t0 = now
        active = np.asarray(sharding.fetch(state.active))
        if live:  # the view reads only what is on the host already, when it redraws
          bar.update(1)
          bar.show(lambda: _statuses(batch, host, active, latest))
        elif bar is not None:
          bar.update(1)
          bar.set_postfix_str(_postfix(batch, host, active), refresh=False)
        if flag['signum'] is not None:
          save_all(epoch + 1)
          raise Interrupted(flag['signum'], epoch)
        if epoch % config.checkpoint_every == 0:
          save_all(epoch + 1)
      # Completion checkpoint (the step is the number of epochs the batch went through).
      if config.epochs and last_saved != epochs_done:
        save_all(epochs_done)
      if record is not None:
        record.finish(state.params, [h['last_epoch'] for h in host])
  finally:
    _close_all([m.wait_until_finished for m in mgrs] + [m.close for m in mgrs] +
               [w.close for w in writers] + ([compare.close] if compare is not None else []) +
               ([record.close] if record is not None else []) +
               ([bar.close] if bar is not None else []))

  resolve_init()
  # The last epoch evaluated the final weights of every run: no second pass (unless a run
  # turned non-finite then, whose state kept the weights before it).
  final_eval = last_eval
  if final_eval is not None and np.any(np.asarray(sharding.fetch(
      state.stop_reason))[:len(batch)] == train.NON_FINITE):
    final_eval = None
  if final_eval is None:
    final_eval = train.accuracies(sharding.fetch(trainer.evaluate(state.params, data)), data)
  params = sharding.fetch(state.params) if sharding.multiprocess() else state.params
  summaries = []
  # stop_after cut the batch short: its runs are not complete (--resume continues them).
  capped = end < config.epochs and epochs_done == end and bool(active[:len(batch)].any())
  if capped:
    logging.info('stopped after epoch %d of %d (config.stop_after=%d; the schedule spans '
                 'epochs=%d); continue with --resume', end - 1, config.epochs,
                 config.stop_after, config.epochs)
  for i, (r, d, h) in enumerate(zip(batch, dirs, host)):
    fe = {k: float(v[i]) for k, v in final_eval.items()}
    s = _summary(config, r, h, fe, n_params, env, steps_per_epoch, capped=capped)
    if primary:  # the marker last: a run is complete only with every output
      checkpoint.save_params(d, train.run_slice(params, i))
      sinks.write_json(os.path.join(d, 'summary.json'), s)
      if not capped:
        workdir_lib.mark_complete(d, {'run': r.name, 'epochs_trained': h['epochs_trained']})
    summaries.append(s)
  sharding.barrier('run finished')
  return summaries
