"""Config validation and expansion of one config into a batch of runs.

A config describes R runs: the product of its strategies (``strategy``: one name, a
comma-separated list or ``all``), ``seeds``, ``lrs`` and ``weight_decays`` (each empty
tuple meaning the single ``seed`` / ``lr`` / ``weight_decay``). ``validate`` checks every
field and raises ``ConfigError`` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import tempfile
from typing import Any

from absl import logging

from ordered_jax import models, optim, orderings, tasks


class ConfigError(ValueError):
  """A bad config value; ``str(e)`` is one line: ``config.<field>: <what is allowed>``."""

  def __init__(self, field: str, message: str):
    where = field if field.startswith('--') else f'config.{field}'
    super().__init__(f'{where}: {message}')
    self.field = field


GENERATORS = ('auto', 'reference', 'fast')
CRITICAL = 'critical'
REFERENCE_TASKS = tasks.REFERENCE_TASKS  # 2-operand Z_p tasks: every pair is valid
PRECISIONS = ('highest', 'high', 'default')
ALL = 'all'
MAX_SEED = 2**32 - 1  # JAX keys take 32 bits: larger seeds would collide silently
MAX_STEPS = 2**31 - 1  # epoch and step counters are int32
MAX_LAYERS = 128  # the epoch program unrolls every layer: compile time grows with depth


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a batch: what varies between runs, and where its files go."""

  name: str
  strategy: str
  seed: int
  lr: float
  weight_decay: float
  data_seed: int = -1   # resolved by expand: the run's seed unless config.data_seed >= 0
  init_seed: int = -1
  order_seed: int = -1


def strategies(config) -> list[str]:
  names = [s.strip() for s in str(config.strategy).split(',') if s.strip()]
  if names == [ALL]:
    return list(orderings.PAPER_STRATEGIES)
  return names


def _is_prime(n: int) -> bool:
  return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


def _check(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ConfigError(field, message)


def _value(config, field):
  """``config[field]`` (dotted); a missing field or section is a ``ConfigError``."""
  try:
    return config[field]
  except (KeyError, AttributeError):
    raise ConfigError(field, 'missing from this config (a section of your own belongs in '
                      'the config file, docs/extending.md "Config sections of your own"; a '
                      'validate= that also runs on configs without it returns early when '
                      'the section is absent)') from None


def _number(config, field, *, integer=False, lo=None, hi=None, lo_open=False, what=''):
  v = _value(config, field)
  kinds = (int,) if integer else (int, float)
  _check(isinstance(v, kinds) and not isinstance(v, bool), field,
         f'must be {"an integer" if integer else "a number"}{what}; got {v!r}')
  _check(math.isfinite(v), field, f'must be finite{what}; got {v!r}')
  if lo is not None:
    _check(v > lo if lo_open else v >= lo, field,
           f'must be {">" if lo_open else ">="} {lo}{what}; got {v!r}')
  if hi is not None:
    _check(v <= hi, field, f'must be <= {hi}{what}; got {v!r}')
  return v


def validate(config) -> None:
  """Raise ``ConfigError`` for the first bad field."""
  names = strategies(config)
  allowed = ', '.join(tuple(orderings.REGISTRY) + (ALL,))
  _check(bool(names), 'strategy', f'must name at least one of {allowed}')
  for s in names:
    _check(s in orderings.REGISTRY, 'strategy',
           f'unknown strategy {s!r}; allowed: {allowed} (or a comma-separated list)')
  _check(len(set(names)) == len(names), 'strategy', f'lists a strategy twice: {config.strategy}')

  p = _number(config, 'p', integer=True, lo=3)
  _check(_is_prime(p), 'p', f'must be a prime >= 3; got {p}')
  _check(p * p < 2**31, 'p', f'must be < 46341 (pairs are int32); got {p}')
  t = task(config)
  _number(config, 'seed', integer=True, lo=0, hi=MAX_SEED)
  for field in ('data_seed', 'init_seed', 'order_seed'):
    v = config.get(field, -1)
    _check(isinstance(v, int) and not isinstance(v, bool) and -1 <= v <= MAX_SEED, field,
           f'must be an integer >= 0 (and <= {MAX_SEED}), or -1 for the run\'s seed; '
           f'got {v!r}')
  _check(config.data_generator in GENERATORS, 'data_generator',
         f'must be one of {", ".join(GENERATORS)}; got {config.data_generator!r}')
  kind = tasks.KINDS.get(t.kind)
  if kind is not None and kind.validate is not None:  # the task's own section (teacher.*)
    kind.validate(config, names)
  train, test = _validate_sizes(config, t)
  _number(config, 'batch_size', integer=True, lo=1, hi=train,
          what=f' (and <= the {train} training examples)')
  _number(config, 'eval_batch_size', integer=True, lo=1)
  lr = _number(config, 'lr', lo=0, lo_open=True)
  _number(config, 'min_lr', lo=0, hi=lr, what=' (and <= lr)')
  epochs = _number(config, 'epochs', integer=True, lo=0, hi=MAX_STEPS)
  steps = epochs * orderings.steps_per_epoch(train, min(
      [config.batch_size] + [v for _, v in changes(config, 'batch_size')
                             if isinstance(v, int) and v >= 1]))
  _check(steps <= MAX_STEPS, 'epochs', f'gives {steps} optimiser steps; at most {MAX_STEPS} '
         '(int32 step counters)')
  if 'stop_after' in config:
    _number(config, 'stop_after', integer=True, lo=0, hi=max(epochs, 0),
            what=' (and <= epochs; 0 = train to epochs)')
  _validate_interventions(config, train)
  _one_of(config, 'model', tuple(models.REGISTRY))
  for kind in models.REGISTRY.values():  # each model checks its own config section
    if kind.validate is not None:
      kind.validate(config)
  d = _number(config, 'embed_dim', integer=True, lo=1)
  h = _number(config, 'num_heads', integer=True, lo=1)
  _check(d % h == 0, 'embed_dim', f'must be divisible by num_heads ({h}); got {d}')
  _number(config, 'layers', integer=True, lo=1, hi=MAX_LAYERS,
          what=' (every layer is unrolled in the compiled epoch)')
  _number(config, 'mlp_dim', integer=True, lo=1)
  _number(config, 'dropout', lo=0, hi=0.99)
  _number(config, 'weight_decay', lo=0)
  _check(config.optimizer in optim.REGISTRY, 'optimizer',
         f'must be one of {", ".join(optim.REGISTRY)}; got {config.optimizer!r}')
  _number(config, 'adam_b1', lo=0, hi=0.999999)
  _number(config, 'adam_b2', lo=0, hi=0.999999)
  _number(config, 'adam_eps', lo=0, lo_open=True)
  _validate_optimisation(config)
  _number(config, 'stride', integer=True, lo=0, hi=t.order,
          what=f' (at most the group order {t.order}; 0 = floor(sqrt {t.order}))')
  _number(config, 'target_acc', lo=0, hi=100, lo_open=True, what=' (percent)')
  for field in ('eval_every', 'probe_every', 'checkpoint_every', 'keep_checkpoints'):
    _number(config, field, integer=True, lo=1)
  _number(config, 'keep_every', integer=True, lo=0, what=' (0 = off)')
  _check(config.matmul_precision in PRECISIONS, 'matmul_precision',
         f'must be one of {", ".join(PRECISIONS)}; got {config.matmul_precision!r}')
  if 'wandb' in config:
    _validate_wandb(config)
  if 'trajectory' in config:
    _validate_trajectory(config)
  for field in ('tensorboard', 'csv', 'deterministic', 'identical_layers', 'lockstep'):
    _check(isinstance(config[field], bool), field, f'must be true or false; got {config[field]!r}')
  _check(isinstance(config.get('init_from', ''), str), 'init_from',
         f"must be a path ('' = fresh weights); got {config.get('init_from')!r}")
  if config.get('init_optimizer', False) is not False:
    _check(config.init_optimizer is True, 'init_optimizer',
           f'must be true or false; got {config.init_optimizer!r}')
    _check(bool(config.init_from), 'init_optimizer',
           'continues a reference checkpoint: set init_from to its checkpoint_<epoch>.pt')
    _check(config.optimizer in ('adamw', 'adam'), 'init_optimizer',
           f"continues the reference's AdamW/Adam state; config.optimizer is "
           f'{config.optimizer!r}')
  for field, lo, integer in (('seeds', 0, True), ('lrs', 0, False),
                             ('weight_decays', 0, False)):
    values = config[field]
    _check(isinstance(values, (tuple, list)), field,
           f'must be a tuple such as (1, 2); got {values!r}')
    for v in values:
      kinds = (int,) if integer else (int, float)
      ok = isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) and (
          v >= lo if field != 'lrs' else v > 0) and (not integer or v <= MAX_SEED)
      _check(ok, field, f'entries must be {f"integers >= 0 (and <= {MAX_SEED})" if integer else "finite numbers > 0" if field == "lrs" else "finite numbers >= 0"}; got {v!r}')
    _check(len(set(values)) == len(values), field, f'lists a value twice: {values}')
  if 'sweep' in config:
    _number(config, 'sweep.max_runs_per_batch', integer=True, lo=0,
            what=' (0 = from a memory estimate)')
    _check(isinstance(config.sweep.single_batch, bool), 'sweep.single_batch',
           f'must be true or false; got {config.sweep.single_batch!r}')
  if config.lockstep:
    _check(len(expand(config)) >= 2, 'lockstep',
           'compares the runs of a batch: give at least two (e.g. strategy=stride,random)')
  for s in names:  # each ordering's own fields (orderings/<name>.py)
    orderings.get(s).validate(config, names)


def _validate_wandb(config) -> None:
  from ordered_jax import wandb_sink  # pylint: disable=g-import-not-at-top
  for field in ('wandb.project', 'wandb.entity'):
    _check(isinstance(config[field], str), field, f"must be a string; got {config[field]!r}")
  _one_of(config, 'wandb.mode', wandb_sink.MODES)
  if config.wandb.project:
    _check(wandb_sink.available(), 'wandb.project', wandb_sink.MISSING)


def _validate_trajectory(config) -> None:
  from ordered_jax import trajectory  # pylint: disable=g-import-not-at-top
  _number(config, 'trajectory.every', integer=True, lo=0,
          what=' (epochs between records; 0 = off)')
  _number(config, 'trajectory.seed', integer=True, lo=0, hi=MAX_SEED)
  try:
    trajectory.parse_projection(config.trajectory.projection)
  except ValueError as e:
    raise ConfigError('trajectory.projection', str(e)) from None


def _one_of(config, field, allowed):
  v = _value(config, field)
  _check(v in allowed, field, f'must be one of {", ".join(allowed)}; got {v!r}')
  return v


# For the extensions' own validation (a model's config section, ...): one-line ConfigErrors.
check, number, one_of = _check, _number, _one_of


def _validate_optimisation(config) -> None:
  """The optimiser, filter, loss and schedule fields (docs/optimization.md)."""
  _number(config, 'momentum', lo=0, hi=0.999999, what=' (sgd momentum, < 1)')
  _one_of(config, 'schedule', optim.SCHEDULES)
  _number(config, 'schedule_step.every', integer=True, lo=1, what=' (epochs)')
  for field in ('schedule_step.gamma', 'schedule_gamma'):
    _number(config, field, lo=0, lo_open=True, hi=1, what=' (a decay factor in (0, 1])')
  _number(config, 'warmup_epochs', integer=True, lo=0, hi=max(config.epochs, 0),
          what=' (and <= epochs; 0 = no warm-up)')
  _number(config, 'grad_clip', lo=0, what=' (a global norm; 0 = off)')
  _one_of(config, 'grokfast.kind', optim.GROKFAST_KINDS)
  _number(config, 'grokfast.alpha', lo=0, hi=0.999999, what=' (the EMA decay, < 1)')
  _number(config, 'grokfast.lamb_ema', lo=0)
  _number(config, 'grokfast.lamb_ma', lo=0)
  _number(config, 'grokfast.window', integer=True, lo=1)
  _one_of(config, 'loss', optim.LOSSES)
  _number(config, 'l1', lo=0, what=' (0 = off)')


def task(config) -> tasks.Task:
  """The config's task (``config.task`` over ``config.p``); ``ConfigError`` if malformed."""
  _check(isinstance(config.task, str), 'task', f'must be a string; got {config.task!r}')
  try:
    return tasks.parse_task(config.task, config.p, **teacher_dim(config), sections=config)
  except ValueError as e:
    message = str(e).splitlines()[0]
    raise ConfigError('task', message.removeprefix('task: ')) from None


def teacher_dim(config) -> dict:
  """``{'dim': config.teacher.dim}`` where the config has a teacher group, else {}."""
  return {'dim': config.teacher.dim} if 'teacher' in config else {}


def is_teacher(config) -> bool:
  """Whether the task is a teacher regression (``teacher:<kind>``)."""
  return isinstance(config.task, str) and config.task.strip().startswith('teacher:')


def teacher_kw(config) -> dict:
  """``teacher.matrix``'s alpha and rotate from ``config.teacher`` (defaults where absent)."""
  t = config.teacher
  return {'alpha': t.get('alpha', 1.0), 'rotate': t.get('rotate', False)}


def sizes(config) -> tuple[int, int]:
  """(training, test) examples: ``train_fraction`` of all tuples when > 0, else
  ``train_size`` (an int, or 'critical' for Tian's critical ratio); ``test_size`` = 0 means
  every tuple not used for training."""
  t = task(config)
  if config.train_fraction:
    n = tasks.fraction_train_size(t, config.train_fraction)
  elif config.train_size == CRITICAL:
    n = tasks.critical_train_size(t, delta=config.critical_delta)
  else:
    n = int(config.train_size)
  return n, (int(config.test_size) or t.n_codes - n)


def generator(config) -> str:
  """The data generator that runs: ``data_generator``, with ``'auto'`` resolved
  (``tasks.pick_generator``: the reference's exact draws for add, sub, mul and poly with a
  test set, ``fast`` elsewhere)."""
  t = task(config)
  test = config.test_size if isinstance(config.test_size, int) else 1
  return tasks.pick_generator(t, test, config.data_generator)


def _fit_hint(config, t: tasks.Task, train: int, test: int) -> str:
  """Which size fields to set when training + test exceed a small task's tuples."""
  set_train = 'train_fraction' if config.train_fraction else 'train_size'
  return (f'{train} training + {test} test examples exceed the {t.n_codes} tuples of task '
          f'{t.name!r}: set train_fraction (e.g. 0.5) and test_size=0 (the rest), or '
          f'{set_train} and test_size to sum to at most {t.n_codes}')


def _validate_sizes(config, t: tasks.Task) -> tuple[int, int]:
  size = config.train_size
  _check(size == CRITICAL or (isinstance(size, int) and not isinstance(size, bool) and size >= 1),
         'train_size', f"must be an integer >= 1 or 'critical'; got {size!r}")
  _number(config, 'train_fraction', lo=0, hi=1, what=' (0 = use train_size)')
  _number(config, 'critical_delta', hi=2.7482, what=" (train_size='critical')")
  _check(size != CRITICAL or not config.train_fraction, 'train_size',
         f"'critical' sets the training size, but train_fraction={config.train_fraction!r} "
         "would override it: set train_fraction=0 too")
  _number(config, 'test_size', integer=True, lo=0, what=' (0 = every tuple not in training)')
  gen = generator(config)
  if gen == 'reference':
    _check(t.kind in REFERENCE_TASKS, 'data_generator',
           f"'reference' reproduces the reference's (a, b) draws and applies to tasks "
           f"{', '.join(REFERENCE_TASKS)}; use 'fast' or 'auto' for task {t.name!r}")
    _check(config.test_size >= 1, 'test_size',
           "must be >= 1 with data_generator='reference' (its test set is drawn with "
           "replacement; 0 = 'the rest' needs data_generator='fast' or 'auto')")
  train, test = sizes(config)
  _check(train >= 1, 'train_size', f'gives no training example ({train})')
  if gen == 'reference':
    # As the reference: its test pairs are drawn with replacement from the pairs outside
    # the training set, so any test_size works while one pair is left.
    _check(train < t.n_codes, 'train_fraction' if config.train_fraction else 'train_size',
           f'must be < the {t.n_codes} pairs of task {t.name!r} with data_generator='
           f"'reference' (its test pairs are drawn from the pairs left); got {train}")
  else:
    _check(train + test <= t.n_codes, 'train_fraction' if config.train_fraction else
           'train_size', _fit_hint(config, t, train, test))
  _check(test >= 1, 'test_size', f'leaves no test example for task {t.name!r}')
  return train, test


def resolve(config):
  """The config as it will run: ``data_generator='auto'`` becomes the generator it picks
  (``generator``; so saved configs and sweep run ids name it), then each ordering's
  ``resolve`` hook (``strategy='resonant'``: its dataset fixes the training set size and
  the batch size, which replace ``train_size`` and ``batch_size``, logged). Other configs
  come back unchanged."""
  if config.data_generator == tasks.AUTO:
    gen = generator(config)
    out = config.copy_and_resolve_references()
    with out.unlocked():
      out.data_generator = gen
    out.lock()
    if gen != 'reference':
      logging.info("data_generator='auto': 'fast' for task %s (the reference's exact draws "
                   'exist for %s with a test set)', config.task, ', '.join(REFERENCE_TASKS))
    config = out
  for s in strategies(config):  # e.g. resonant's own data set sizes
    if s in orderings.REGISTRY:
      config = orderings.get(s).resolve(config)
  return config


def changes(config, field: str) -> tuple[tuple[int, Any], ...]:
  """``config.interventions.<field>`` ('epoch:value,...') as ((epoch, value), ...), epochs
  ascending; ``ConfigError`` naming the field when malformed."""
  text = str(config.interventions[field]).strip()
  name = f'interventions.{field}'
  integer = field == 'batch_size'
  allowed = (f"must be 'epoch:{'size' if integer else 'factor'},...' with epochs ascending in "
             f"[1, epochs) and {'sizes in [1, training examples]' if integer else 'factors > 0'}")
  out = []
  for item in filter(None, (x.strip() for x in text.split(','))):
    try:
      at, value = item.split(':')
      at, value = int(at), (int(value) if integer else float(value))
    except ValueError:
      raise ConfigError(name, f'{allowed}; got {text!r}') from None
    ok = 1 <= at < max(config.epochs, 1) and value > 0 and (not out or at > out[-1][0])
    _check(ok, name, f'{allowed}; got {text!r}')
    out.append((at, value))
  return tuple(out)


def batch_size_at(config, epoch: int) -> int:
  """The batch size of ``epoch`` (``config.batch_size`` until an intervention changes it)."""
  size = config.batch_size
  for at, value in changes(config, 'batch_size'):
    if epoch >= at:
      size = value
  return size


def _validate_interventions(config, n_train: int) -> None:
  changes(config, 'lr')
  for _, size in changes(config, 'batch_size'):
    _check(size <= n_train, 'interventions.batch_size',
           f'sizes must be <= the {n_train} training examples; got {size}')
  if changes(config, 'batch_size'):
    per_step = config.schedule == 'cosine_step' or config.warmup_epochs > 0
    _check(not per_step, 'interventions.batch_size',
           'cannot change the batch size under a per-step schedule (cosine_step or '
           'warmup_epochs > 0): its step count assumes one batch size')


def stride(config) -> int:
  return config.stride or orderings.default_stride(task(config).order)


def expand(config) -> list[Run]:
  """The runs of a config, in a stable order (strategy, seed, lr, weight decay)."""
  names = strategies(config)
  seeds = tuple(config.seeds) or (config.seed,)
  lrs = tuple(config.lrs) or (config.lr,)
  wds = tuple(config.weight_decays) or (config.weight_decay,)
  runs = []
  for s, seed, lr, wd in itertools.product(names, seeds, lrs, wds):
    name = s
    if len(seeds) > 1:
      name += f'_seed{seed}'
    if len(lrs) > 1:
      name += f'_lr{lr:g}'
    if len(wds) > 1:
      name += f'_wd{wd:g}'
    # With lockstep every run starts from one initialisation on one data set: the config's
    # seed unless init_seed / data_seed name another; the run's seed still drives dropout
    # and the random order.
    base = int(config.seed) if config.get('lockstep', False) else int(seed)
    pick = lambda field: (base if field != 'order_seed' else int(seed)) if config.get(  # pylint: disable=cell-var-from-loop
        field, -1) < 0 else int(config[field])
    runs.append(Run(name=name, strategy=s, seed=int(seed), lr=float(lr),
                    weight_decay=float(wd), data_seed=pick('data_seed'),
                    init_seed=pick('init_seed'), order_seed=pick('order_seed')))
  return runs


def check_workdir(workdir: str) -> None:
  """The workdir exists (or can be made) and is writable."""
  try:
    os.makedirs(workdir, exist_ok=True)
    # An anonymous file: several processes of one job (--distributed) check the same
    # workdir at once, and a shared name would let one remove the other's.
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError('--workdir', f'{workdir!r} is not a writable directory ({e.strerror})') from None
