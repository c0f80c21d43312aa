"""Running a sweep: expand ``config.sweep`` into runs, pack them into vmapped batches, train
each batch (``experiment.run``), keep one Parquet table of results (docs/sweeps.md).

* Every run gets a stable id from its resolved config (``sweep.run_id``); its folder is
  ``<workdir>/runs/<id>/``, so the same run in two sweeps, or twice in one, is one run.
* Runs are packed when their configs differ only in what a batch may vary per run
  (strategy, seeds, learning rate, weight decay); everything else (shapes, static
  hyperparameters) starts another batch. Each batch holds at most
  ``sweep.max_runs_per_batch`` runs (0 = from a device-memory estimate, logged).
* Running the same command again continues: finished runs are skipped, interrupted
  batches resume from their checkpoints, ``--rerun key=values`` starts chosen runs anew.
* ``<workdir>/results.parquet``: one row per run, appended as batches finish
  (``results.ResultsWriter``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import shutil
from typing import Any, Callable

import jax
from absl import logging

from ordered_jax import experiment, models, results, runs, sharding, sinks, sweep

RUNS_DIR = 'runs'
SWEEP_FILE = 'sweep.json'
# What one batch may vary between its runs (train.RunSpec and the per-run seeds).
BATCHABLE = ('strategy', 'seed', 'seeds', 'lr', 'lrs', 'weight_decay', 'weight_decays')
# Output-only fields: not part of a run's identity.
NOT_IDENTITY = experiment.RESUME_SAFE + ('sweep', 'environment', 'run_name')


@dataclasses.dataclass
class Item:
  """One run of the sweep: its id, the point's config, the batch's ``Run`` and the values
  that identify it in the results table."""

  id: str
  config: Any
  run: runs.Run
  keys: dict


def is_sweep(config) -> bool:
  """Whether ``config.sweep`` names any grid or zip key."""
  return 'sweep' in config and sweep.points(config) != [{}]


def _identity(config, r: runs.Run) -> dict:
  cfg = experiment.run_config(config, r, env={})
  return {k: v for k, v in cfg.items() if k not in NOT_IDENTITY}


def plan(config) -> list[Item]:
  """Every run of the sweep, validated (one-line ``ConfigError`` before anything runs)."""
  items, seen = [], set()
  for overrides in sweep.points(config):
    c = sweep.apply(config, overrides)
    try:
      runs.validate(c)
    except runs.ConfigError as e:
      where = ', '.join(f'{k}={v}' for k, v in overrides.items())
      raise runs.ConfigError(e.field, f'{str(e).split(": ", 1)[1]} (sweep point {where})') from None
    c = runs.resolve(c)
    for r in runs.expand(c):
      rid = sweep.run_id(_identity(c, r))
      if rid in seen:
        continue
      seen.add(rid)
      keys = {**{k: v for k, v in overrides.items()}, 'strategy': r.strategy, 'seed': r.seed,
              'lr': r.lr, 'weight_decay': r.weight_decay}
      items.append(Item(rid, c, dataclasses.replace(r, name=rid), keys))
  return items


def _batch_key(config) -> str:
  d = {k: v for k, v in config.to_dict().items() if k not in BATCHABLE + ('sweep',)}
  return json.dumps(d, sort_keys=True, default=str)


def run_bytes(config) -> int:
  """A rough upper estimate of one run's device memory in a batch (bytes): parameters,
  gradients and optimiser state, the activations of one training batch (forward and
  backward) and of one evaluation chunk."""
  cfg = experiment.model_config(config)
  n = models.param_count(models.Model(cfg).abstract_params())
  copies = 4 + (1 if config.grokfast.kind == 'ema' else 0) + (
      config.grokfast.window if config.grokfast.kind == 'ma' else 0)
  tokens = 2 * cfg.n_ops if config.model == 'power' else cfg.n_ops
  width = 6 * config.embed_dim + config.mlp_dim
  acts = config.batch_size * (tokens * width * config.layers + 2 * cfg.vocab) * 3
  evals = min(config.eval_batch_size, sum(runs.sizes(config))) * (tokens * width + cfg.vocab)
  return 4 * (n * copies + acts + evals)


def device_bytes() -> int:
  """Memory of one device: the accelerator's limit, or the host's available memory."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')


def max_runs(config) -> int:
  """``sweep.max_runs_per_batch``, or (0) as many as half of the devices' memory holds by
  ``run_bytes`` (at most 256), rounded down to a multiple of the device count."""
  if config.sweep.max_runs_per_batch:
    return config.sweep.max_runs_per_batch
  d = len(jax.devices())
  fit = max(1, min(256 * d, int(0.5 * device_bytes() * d / max(run_bytes(config), 1))))
  return max(d, fit - fit % d) if fit >= d else fit


def batches(items: list[Item]) -> list[list[Item]]:
  """Items grouped by batch key (first appearance order), chunked by ``max_runs``. With
  ``sweep.single_batch`` every run must fit one batch (else a ``ConfigError`` naming the
  first field that separates them)."""
  groups: dict[str, list[Item]] = collections.OrderedDict()
  for it in items:
    groups.setdefault(_batch_key(it.config), []).append(it)
  if items and items[0].config.sweep.get('single_batch', False):
    if len(groups) > 1:
      a, b = (json.loads(k) for k in list(groups)[:2])
      k = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
      raise runs.ConfigError('sweep.single_batch', f'the runs differ in {k} ({a.get(k)!r} vs '
                             f'{b.get(k)!r}), which one batch cannot vary (only strategy, '
                             'seed, lr and weight_decay); sweep it in separate batches')
    size = max_runs(items[0].config)
    if len(items) > size:
      raise runs.ConfigError('sweep.single_batch', f'{len(items)} runs exceed '
                             f'max_runs_per_batch ({size})')
  out = []
  for group in groups.values():
    size = max_runs(group[0].config)
    logging.info('sweep: %d run(s) of one shape, up to %d per batch', len(group), size)
    out += [group[i:i + size] for i in range(0, len(group), size)]
  return out


def _done(run_dir: str) -> bool:
  return os.path.exists(os.path.join(run_dir, 'summary.json'))


def _has_checkpoint(run_dir: str) -> bool:
  ckpt = os.path.join(run_dir, 'checkpoints')
  return os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))


def result_row(item: Item, run_dir: str) -> dict:
  """The results-table row of a finished run: its keys, final metrics and curves."""
  with open(os.path.join(run_dir, 'summary.json')) as f:
    s = json.load(f)
  rows = sinks.read_jsonl(os.path.join(run_dir, f'{item.id}.jsonl'))
  evals = [r for r in rows if 'training_metrics/validation_accuracy' in r]
  curve = lambda rs, k: [r.get(f'training_metrics/{k}') for r in rs]
  return {
      'run_id': item.id, **item.keys,
      'final_validation_accuracy': s['final_eval']['validation_accuracy'],
      'final_training_accuracy': s['final_eval']['training_accuracy'],
      'memorization_epoch': s['grokking']['memorization_epoch'],
      'generalization_epoch': s['grokking']['generalization_epoch'],
      'epochs_trained': s['training']['epochs_trained'],
      'stop_reason': s['training']['stop_reason'],
      'duration_seconds': s['timing']['duration_seconds'],
      'epoch': [r['epoch'] for r in evals],
      'loss': curve(evals, 'loss'),
      'training_accuracy': curve(evals, 'training_accuracy'),
      'validation_accuracy': curve(evals, 'validation_accuracy'),
  }


def _check_sweep_dir(config, workdir: str, overwrite: bool) -> None:
  """The workdir holds this sweep (same base config) or nothing; --overwrite clears it."""
  path = os.path.join(workdir, SWEEP_FILE)
  base = {k: v for k, v in config.to_dict().items() if k != 'sweep'}
  base = json.loads(json.dumps(base, default=str))
  if overwrite:
    for name in (RUNS_DIR, results.TABLE, results.PARTS):
      p = os.path.join(workdir, name)
      if os.path.isdir(p):
        shutil.rmtree(p)
      elif os.path.exists(p):
        os.remove(p)
  elif os.path.exists(path):
    with open(path) as f:
      old = json.load(f)['base']
    diff = [k for k in sorted(set(old) | set(base)) if old.get(k) != base.get(k)]
    if diff:
      raise experiment.WorkdirError(
          f'{workdir} holds a sweep whose config.{diff[0]} differs ({old.get(diff[0])!r} -> '
          f'{base.get(diff[0])!r}); use another --workdir, or --overwrite to replace it')
  os.makedirs(workdir, exist_ok=True)
  sinks.write_json(path, {'base': base})


def run(config, workdir: str, *, probes: Callable[[Any], list] = lambda c: [],
        rerun: str = '', overwrite: bool = False, quiet: bool = False) -> str:
  """Run (or continue) the sweep of ``config`` in ``workdir``; returns the table's path.

  ``probes(config)`` builds each batch's probes; ``rerun`` ('key=values;...') restarts the
  finished or interrupted runs it matches."""
  items = plan(config)
  filters = sweep.parse_rerun(rerun, config) if rerun else []
  packed = batches(items)
  for b in packed:  # probes are validated before anything runs, too
    probes(b[0].config)
  primary = sharding.is_primary()  # with several processes, process 0 keeps the books
  if primary:
    runs.check_workdir(workdir)
    _check_sweep_dir(config, workdir, overwrite)
  sharding.barrier('sweep folder')
  runs_dir = os.path.join(workdir, RUNS_DIR)
  for it in items if primary else []:
    if filters and sweep.matches(it.keys, filters):
      d = os.path.join(runs_dir, it.id)
      if os.path.isdir(d):
        logging.info('sweep: --rerun restarts run %s', it.id)
        shutil.rmtree(d)
  sharding.barrier('reruns cleared')
  writer = results.ResultsWriter(workdir)
  logging.info('sweep: %d runs in %d batches under %s', len(items), len(packed), runs_dir)
  for k, b in enumerate(packed):
    todo = [it for it in b if not _done(os.path.join(runs_dir, it.id))]
    resume = [it for it in todo if _has_checkpoint(os.path.join(runs_dir, it.id))]
    fresh = [it for it in todo if it not in resume]
    for part, is_resume in ((resume, True), (fresh, False)):
      if not part:
        continue
      logging.info('sweep: batch %d/%d, %s %d run(s)', k + 1, len(packed),
                   'resuming' if is_resume else 'starting', len(part))
      experiment.run(part[0].config, runs_dir, resume=is_resume, overwrite=not is_resume,
                     quiet=quiet, probes=probes(part[0].config), batch=[it.run for it in part])
    if primary and (todo or not _in_table(workdir, b)):
      writer.add([result_row(it, os.path.join(runs_dir, it.id)) for it in b])
  path = writer.consolidate() if primary else os.path.join(workdir, results.TABLE)
  sharding.barrier('sweep finished')
  return path


def _in_table(workdir: str, b: list[Item]) -> bool:
  path = os.path.join(workdir, results.TABLE)
  if not os.path.exists(path):
    return False
  ids = set(results.load(path).column('run_id').to_pylist())
  return all(it.id in ids for it in b)
