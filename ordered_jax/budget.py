"""Memory a config needs, estimated from the config alone, before anything is built.

``estimate(config, n_runs)`` adds up, in bytes: the parameters (counted from the shapes,
``param_count``, without building the model), the optimiser state, gradients and
Grokfast buffers; the activations of one training batch (forward and backward) and of one
evaluation chunk; the data on the device (the training and test tables, each run's
orders); what the enabled probes declare they hold (``probes.registry``'s ``memory``:
gradient windows, the Lanczos basis, replays), or for a built probe that declares nothing
the state its ``init`` returns (traced, not allocated); the trajectory's flattened and projected
parameters; and the host memory that generating the data takes (measured per example for
each generator). ``check`` compares that with the machine: on an accelerator the device
part against one device's ``bytes_limit`` (runs are split over the devices) and the host
part against the host's available memory; on the CPU their sum against the available
memory. It refuses with one ``ConfigError`` line naming the field that contributes most
(the one whose reset to a small value, or a probe option's to its default, shrinks the
estimate most) and both sizes. The estimate is rough on purpose (an upper bound within a
factor of about two).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ordered_jax import models, runs, trajectory

# Small values a field is reset to when looking for the one that makes a config too big.
SMALL = {'embed_dim': 128, 'mlp_dim': 512, 'layers': 2, 'num_heads': 4, 'p': 97,
         'train_size': 3500, 'train_fraction': 0.0, 'test_size': 4000, 'batch_size': 256,
         'eval_batch_size': 2048, 'grokfast.window': 1, 'task': 'add',
         'trajectory.projection': 'none'}
# Host bytes per generated example, measured (peak RSS of tasks.make_task, p = 9973 and
# 46337, up to 10M examples): the reference generator's Python set of training pairs
# dominates its training examples.
HOST_BYTES = {'reference': (320, 110), 'fast': (80, 80)}  # (per train, per test) example
F32 = 4
HEADROOM = 0.9  # the share of the available memory a config may need (the rest: Python,
                # XLA's own buffers, the OS)


def _count_layers(d: int, f: int, layers: int) -> int:
  """An encoder/decoder block: fused QKV and output projections, two LayerNorms, MLP."""
  return layers * (4 * d * d + 2 * d * f + 9 * d + f)


def param_count(config) -> int:
  """The number of parameters of ``config``'s model, from its shapes (equals
  ``models.param_count`` of the built model; tested)."""
  t = runs.task(config)
  v, k = t.order, t.n_ops
  d, f, layers = config.embed_dim, config.mlp_dim, config.layers
  if config.model == 'mlp':
    embed = v * v if config.mlp.embed_trainable else 0
    weights = k * v * f + f * v + config.mlp.get('other_layers', 0) * f * f
    return embed + weights * (2 if config.mlp.get('complex_weights', False) else 1)
  if config.model == 'dln':
    d_in = v if runs.is_teacher(config) else k * v  # a teacher's x has dim = order entries
    dims = [d_in] + [config.dln.width] * (config.dln.depth - 1) + [v]
    return sum(a * b for a, b in zip(dims[:-1], dims[1:]))
  if config.model == 'power':
    return (v + 2) * d + 2 * k * d + _count_layers(d, f, layers) + 2 * d + d * v + v
  if config.model in ('gpt2', 'gpt2_resv'):
    n = (v + 2) * d + 2 * k * d + _count_layers(d, f, layers) + 2 * d
    n += 0 if config.gpt2.tied_head else d * v
    if config.model == 'gpt2_resv' and layers > 1:  # per later layer: lam, or no V (d x d + d)
      n += (layers - 1) * (1 if config.gpt2.value_mode == 'resformer' else -(d * d + d))
    return n
  if config.model == 'reference':
    return v * d + k * d + _count_layers(d, f, layers) + d * v + v
  # A registered model: its shapes, traced without allocating them.
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  return models.param_count(models.Model(experiment.model_config(config)).abstract_params())


def _state_copies(config) -> int:
  """Parameter-sized arrays alive in a step: params, gradients, optimiser moments (sgd
  and muon one, Adam two), Grokfast's average or window."""
  moments = 1 if config.optimizer in ('sgd', 'muon') else 2
  gf = config.grokfast
  return 2 + moments + (1 if gf.kind == 'ema' else gf.window if gf.kind == 'ma' else 0)


def state_bytes(config) -> int:
  """Bytes of one run's checkpointed state: parameters and optimiser state."""
  moments = 1 if config.optimizer in ('sgd', 'muon') else 2
  gf = config.grokfast
  buffers = 1 if gf.kind == 'ema' else gf.window if gf.kind == 'ma' else 0
  return F32 * param_count(config) * (1 + moments + buffers)


def _largest_batch(config) -> int:
  return max([config.batch_size] + [v for _, v in runs.changes(config, 'batch_size')])


def _file_rows(config) -> int:
  """Rows of strategy file's order file (0 without it; its shape only, memory-mapped)."""
  if 'file' not in runs.strategies(config):
    return 0
  try:
    return int(np.prod(np.load(config.order_file, mmap_mode='r').shape[:-1]))
  except Exception:  # pylint: disable=broad-except  (validation names a bad file)
    return 0


def _registry():
  from probes import registry  # pylint: disable=g-import-not-at-top
  return registry


def _probes(config, probe_names):
  """(entry, options) of the enabled probes that declare their memory; ``probe_names``:
  those of the built probes (None: the config's, ``probes.names``)."""
  import probes as probes_lib  # pylint: disable=g-import-not-at-top
  names = probes_lib.names(config) if probe_names is None else probe_names
  entries = _registry().entries()
  return [(entries[n], _registry().options(entries[n], config)) for n in names
          if n in entries and entries[n].memory is not None]


def undeclared_bytes(config, probes) -> int:
  """Bytes per run of the state that the built ``probes`` without a ``memory``
  declaration carry through the epoch (their ``init``'s output for the config's model,
  traced with ``jax.eval_shape``: nothing allocated). Their transient memory inside the
  epoch is not known; a probe that needs much should declare ``memory=``."""
  entries = _registry().entries()
  mine = [p for p in probes
          if getattr(entries.get(getattr(p, 'name', None)), 'memory', None) is None
          and callable(getattr(p, 'init', None))]
  if not mine:
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  params = models.Model(experiment.model_config(config)).abstract_params()
  total = 0
  for p in mine:
    try:
      shapes = jax.eval_shape(p.init, params)
    except Exception as e:  # pylint: disable=broad-except  (the trainer's init says why)
      logging.warning('memory check: probe %s: its state cannot be traced (%s: %s); not '
                      'counted', getattr(p, 'name', p), type(e).__name__,
                      (str(e).splitlines() or [''])[0][:120])
      continue
    total += sum(int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(shapes))
  return total


def estimate(config, n_runs: int = 1, probe_names=None, extra: int = 0) -> dict[str, int]:
  """Bytes by part: ``state`` (parameters, optimiser, activations) and ``probes`` per run
  times ``n_runs``, ``device_data`` (shared when the runs share one data seed, else per run;
  with each run's orders), ``trajectory`` (its vectors of every run) and ``host_data``
  (generating the tables). ``probe_names``: see ``_probes``; ``extra``: more probe bytes
  per run (``undeclared_bytes``)."""
  t = runs.task(config)
  n_train, n_test = runs.sizes(config)
  tokens = 2 * t.n_ops if models.is_sequence(config.model) else t.n_ops
  width = 6 * config.embed_dim + config.mlp_dim
  example = (tokens * width * config.layers + 2 * t.order) * 3
  acts = _largest_batch(config) * example
  evals = min(config.eval_batch_size, n_train + n_test) * (tokens * width + t.order)
  if config.model == 'reference':  # its evaluation's per-token tables (models.Transformer)
    evals += t.order * t.n_ops * config.embed_dim * (7 + config.num_heads)
  n_params = param_count(config)
  per_run = F32 * (n_params * _state_copies(config) + acts + evals)
  sizes = _registry().Sizes(params=n_params, example_bytes=F32 * example,
                            batch_size=_largest_batch(config), n_train=n_train)
  probe_bytes = extra + sum(e.memory(o, sizes) for e, o in _probes(config, probe_names))
  traj = (trajectory.memory(config.trajectory.projection, n_params, n_runs)
          if trajectory.enabled(config) else 0)
  shared = config.get('data_seed', -1) >= 0 or config.get('lockstep', False) or n_runs == 1
  tables = F32 * (n_train + n_test) * (t.n_ops + 1) * (1 if shared else n_runs)
  rows = sum(2 if s == 'alternating' else 1 for s in set(runs.strategies(config)))
  orders = F32 * n_train * n_runs * max(2, rows + _file_rows(config))  # prepared orders
  per_train, per_test = HOST_BYTES.get(
      runs.generator(config), HOST_BYTES['reference'])
  return {'state': per_run * n_runs, 'probes': probe_bytes * n_runs,
          'device_data': tables + orders, 'trajectory': traj,
          'host_data': per_train * n_train + per_test * n_test}


def host_available() -> int:
  """Available host memory (``MemAvailable``; else free pages)."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')


def device_limit() -> tuple[int | None, int]:
  """(bytes one accelerator may use, device count); (None, count) on the CPU."""
  import jax  # pylint: disable=g-import-not-at-top
  local = jax.local_devices()[0]  # another process's devices have no memory stats here
  stats = (local.memory_stats() or {}) if local.platform != 'cpu' else {}
  limit = stats.get('bytes_limit')
  return (int(limit) if limit else None), len(jax.devices())


def need(config, n_runs: int, limit: int | None, n_devices: int,
         probe_names=None, extra: int = 0) -> tuple[int, int]:
  """(needed, available) bytes of the tighter of device and host memory."""
  e = estimate(config, n_runs, probe_names, extra)
  host = host_available()
  if limit is None:  # the CPU: one memory for everything
    return sum(e.values()), host
  here = -(-n_runs // n_devices)  # runs on one device
  per_device = (here * (e['state'] + e['probes'] + e['trajectory']) // max(n_runs, 1)
                + e['device_data'])
  if e['host_data'] > host and e['host_data'] / host >= per_device / limit:
    return e['host_data'], host
  return per_device, limit


def _with(config, field: str, value):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    parent = c
    *path, leaf = field.split('.')
    for k in path:
      parent = parent[k]
    parent[leaf] = value
  return c


def _resets(config, probe_names):
  """(field, small value): ``SMALL``'s, then each option of the enabled probes that declare
  their memory, at its default."""
  out = list(SMALL.items())
  for entry, opts in _probes(config, probe_names):
    if opts is None:  # a probe without options: nothing to reset
      continue
    key = _registry().options_key(entry)
    out += [(f'probes.{key}.{f.name}', f.default) for f in dataclasses.fields(opts)
            if f.default is not dataclasses.MISSING and getattr(opts, f.name) != f.default]
  return out


def culprit(config, n_runs: int, limit, n_devices, probe_names=None, extra: int = 0) -> str:
  """The field whose reset to ``SMALL`` (or a probe's option's to its default) shrinks the
  estimate most (the number of runs, named by its longest tuple field, counts as one;
  dropping the probes that declare no memory, ``extra``, counts as ``probes.names``)."""
  base = need(config, n_runs, limit, n_devices, probe_names, extra)[0]
  best, name = base, ''
  for field, small in _resets(config, probe_names):
    try:
      n = need(_with(config, field, small), n_runs, limit, n_devices, probe_names, extra)[0]
    except (KeyError, AttributeError, ValueError, TypeError, runs.ConfigError):
      continue
    if n < best:
      best, name = n, field
  if extra and need(config, n_runs, limit, n_devices, probe_names)[0] < best:
    best, name = need(config, n_runs, limit, n_devices, probe_names)[0], 'probes.names'
  if n_runs > 1 and need(config, 1, limit, n_devices, probe_names, extra)[0] < best:
    name = max(('seeds', 'lrs', 'weight_decays'), key=lambda k: len(config[k]))
    name = name if len(config[name]) > 1 else 'strategy'
  return name or 'embed_dim'


def check(config, n_runs: int = 1, probes=None) -> None:
  """``ConfigError`` (one line: the field, the estimate, the memory) when ``config``'s
  batch of ``n_runs`` runs, with the built ``probes`` (None: the config's, by name), cannot
  fit; nothing is allocated."""
  from ordered_jax.workdir import gib  # pylint: disable=g-import-not-at-top
  limit, n_devices = device_limit()
  probe_names = None if probes is None else [p.name for p in probes]
  extra = 0 if probes is None else undeclared_bytes(config, probes)
  needed, available = need(config, n_runs, limit, n_devices, probe_names, extra)
  if needed <= HEADROOM * available:
    return
  where = 'the host has' if limit is None or available != limit else 'the device has'
  what = f'{n_runs} runs need' if n_runs > 1 else 'needs'
  raise runs.ConfigError(culprit(config, n_runs, limit, n_devices, probe_names, extra),
                         f'{what} about {gib(needed)} of memory, {where} {gib(available)} '
                         'available (docs/configs.md: sizes)')
