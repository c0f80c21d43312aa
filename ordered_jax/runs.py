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

from ordered_jax import optim, orderings


class ConfigError(ValueError):
  """A bad config value; ``str(e)`` is one line: ``config.<field>: <what is allowed>``."""

  def __init__(self, field: str, message: str):
    where = field if field.startswith('--') else f'config.{field}'
    super().__init__(f'{where}: {message}')
    self.field = field


GENERATORS = ('reference', 'fast')
# Fields added after runs were first written, with their defaults: an older run's saved
# config lacks them and had exactly these values (``--resume`` treats them as equal).
ADDED_DEFAULTS = {
    'momentum': 0.9, 'schedule': 'cosine', 'schedule_step': {'every': 1000, 'gamma': 0.1},
    'schedule_gamma': 0.999, 'warmup_epochs': 0, 'grad_clip': 0.0,
    'grokfast': {'kind': 'none', 'alpha': 0.98, 'lamb_ema': 2.0, 'window': 100,
                 'lamb_ma': 5.0},
    'loss': 'ce', 'l1': 0.0, 'data_seed': -1, 'init_seed': -1, 'order_seed': -1}
PRECISIONS = ('highest', 'high', 'default')
ALL = 'all'


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


def _number(config, field, *, integer=False, lo=None, hi=None, lo_open=False, what=''):
  v = config[field]
  kinds = (int,) if integer else (int, float)
  _check(isinstance(v, kinds) and not isinstance(v, bool), field,
         f'must be {"an integer" if integer else "a number"}{what}; got {v!r}')
  if lo is not None:
    _check(v > lo if lo_open else v >= lo, field,
           f'must be {">" if lo_open else ">="} {lo}{what}; got {v!r}')
  if hi is not None:
    _check(v <= hi, field, f'must be <= {hi}{what}; got {v!r}')
  return v


def validate(config) -> None:
  """Raise ``ConfigError`` for the first bad field."""
  names = strategies(config)
  allowed = ', '.join(orderings.STRATEGIES + (ALL,))
  _check(bool(names), 'strategy', f'must name at least one of {allowed}')
  for s in names:
    _check(s in orderings.STRATEGIES, 'strategy',
           f'unknown strategy {s!r}; allowed: {allowed} (or a comma-separated list)')
  _check(len(set(names)) == len(names), 'strategy', f'lists a strategy twice: {config.strategy}')

  p = _number(config, 'p', integer=True, lo=3)
  _check(_is_prime(p), 'p', f'must be a prime >= 3; got {p}')
  _check(p * p < 2**31, 'p', f'must be < 46341 (pairs are int32); got {p}')
  _number(config, 'seed', integer=True, lo=0)
  for field in ('data_seed', 'init_seed', 'order_seed'):
    v = config.get(field, -1)
    _check(isinstance(v, int) and not isinstance(v, bool) and v >= -1, field,
           f'must be an integer >= 0, or -1 for the run\'s seed; got {v!r}')
  train = _number(config, 'train_size', integer=True, lo=1)
  test = _number(config, 'test_size', integer=True, lo=1)
  _check(config.data_generator in GENERATORS, 'data_generator',
         f'must be one of {", ".join(GENERATORS)}; got {config.data_generator!r}')
  # Both sets must fit among the p*p pairs (the reference generator draws its test pairs with
  # replacement, but a test set larger than the pairs left would be mostly duplicates).
  _check(train + test <= p * p, 'train_size',
         f'train_size + test_size must be <= p*p = {p * p}; got {train + test}')
  _number(config, 'batch_size', integer=True, lo=1, hi=train, what=' (and <= train_size)')
  _number(config, 'eval_batch_size', integer=True, lo=1)
  lr = _number(config, 'lr', lo=0, lo_open=True)
  _number(config, 'min_lr', lo=0, hi=lr, what=' (and <= lr)')
  _number(config, 'epochs', integer=True, lo=0)
  d = _number(config, 'embed_dim', integer=True, lo=1)
  h = _number(config, 'num_heads', integer=True, lo=1)
  _check(d % h == 0, 'embed_dim', f'must be divisible by num_heads ({h}); got {d}')
  _number(config, 'layers', integer=True, lo=1)
  _number(config, 'mlp_dim', integer=True, lo=1)
  _number(config, 'dropout', lo=0, hi=0.99)
  _number(config, 'weight_decay', lo=0)
  _check(config.optimizer in optim.OPTIMIZERS, 'optimizer',
         f'must be one of {", ".join(optim.OPTIMIZERS)}; got {config.optimizer!r}')
  _number(config, 'adam_b1', lo=0, hi=0.999999)
  _number(config, 'adam_b2', lo=0, hi=0.999999)
  _number(config, 'adam_eps', lo=0, lo_open=True)
  _validate_optimisation(config)
  _number(config, 'stride', integer=True, lo=0, hi=p, what=' (0 = floor(sqrt p))')
  _number(config, 'target_acc', lo=0, hi=100, lo_open=True, what=' (percent)')
  for field in ('eval_every', 'probe_every', 'checkpoint_every', 'keep_checkpoints'):
    _number(config, field, integer=True, lo=1)
  _number(config, 'keep_every', integer=True, lo=0, what=' (0 = off)')
  _check(config.matmul_precision in PRECISIONS, 'matmul_precision',
         f'must be one of {", ".join(PRECISIONS)}; got {config.matmul_precision!r}')
  for field in ('tensorboard', 'csv', 'deterministic', 'identical_layers'):
    _check(isinstance(config[field], bool), field, f'must be true or false; got {config[field]!r}')
  _check(isinstance(config.get('init_from', ''), str), 'init_from',
         f"must be a path ('' = fresh weights); got {config.get('init_from')!r}")
  for field, lo, integer in (('seeds', 0, True), ('lrs', 0, False),
                             ('weight_decays', 0, False)):
    values = config[field]
    _check(isinstance(values, (tuple, list)), field,
           f'must be a tuple such as (1, 2); got {values!r}')
    for v in values:
      kinds = (int,) if integer else (int, float)
      ok = isinstance(v, kinds) and not isinstance(v, bool) and (
          v >= lo if field != 'lrs' else v > 0)
      _check(ok, field, f'entries must be {"integers >= 0" if integer else "numbers > 0" if field == "lrs" else "numbers >= 0"}; got {v!r}')
    _check(len(set(values)) == len(values), field, f'lists a value twice: {values}')


def _one_of(config, field, allowed):
  v = config[field]
  _check(v in allowed, field, f'must be one of {", ".join(allowed)}; got {v!r}')
  return v


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


def stride(config) -> int:
  return config.stride or orderings.default_stride(config.p)


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
    pick = lambda field: int(seed) if config.get(field, -1) < 0 else int(config[field])  # pylint: disable=cell-var-from-loop
    runs.append(Run(name=name, strategy=s, seed=int(seed), lr=float(lr),
                    weight_decay=float(wd), data_seed=pick('data_seed'),
                    init_seed=pick('init_seed'), order_seed=pick('order_seed')))
  return runs


def check_workdir(workdir: str) -> None:
  """The workdir exists (or can be made) and is writable."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, '.write_test')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    raise ConfigError('--workdir', f'{workdir!r} is not a writable directory ({e.strerror})') from None
