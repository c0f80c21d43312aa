"""Running a sweep: expand ``config.sweep`` into runs, pack them into vmapped batches, train
each batch (``experiment.run``), keep one Parquet table of results (docs/sweeps.md).

* Every run gets a stable id from its resolved config (``sweep.run_id`` of its
  ``identity.identity``: fields added later count only when not at their default); its folder is
  ``<workdir>/runs/<id>/``, so the same run in two sweeps, or twice in one, is one run.
* Runs are packed when their configs differ only in what a batch may vary per run
  (strategy, seeds, learning rate, weight decay); everything else (shapes, static
  hyperparameters) starts another batch. Each batch holds at most
  ``sweep.max_runs_per_batch`` runs (0 = from a device-memory estimate, logged).
* Running the same command again continues: finished runs are skipped, interrupted
  batches resume from their checkpoints, ``--rerun key=values`` starts chosen runs anew.
  A batch resumes as the batch it was (its unfinished runs together, from their latest
  common checkpoint); if its runs have no checkpoint in common (killed between their
  first saves), it starts again as one batch, so the table equals an uninterrupted one.
* One sweep at a time per workdir: the primary process holds ``<workdir>/.sweep.lock``
  for the whole sweep (``workdir.lock``).
* ``<workdir>/results.parquet``: one row per run, appended as batches finish
  (``results.ResultsWriter``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import shutil
from typing import Any, Callable

import jax
from absl import logging

from ordered_jax import (budget, checkpoint, experiment, identity, results, runs,
                         sharding, sinks, sweep)
from ordered_jax import workdir as workdir_lib

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
  """The run's identity (``ordered_jax.identity``: its values read against a frozen
  schema, so a field added with a default renames no run)."""
  cfg = experiment.run_config(config, r, env={})
  return identity.identity({k: v for k, v in cfg.items() if k not in NOT_IDENTITY})


def plan(config) -> list[Item]:
  """Every run of the sweep, validated (one-line ``ConfigError`` before anything runs)."""
  items, seen = [], {}  # run id -> the point that made it
  for overrides in sweep.points(config):
    c = sweep.apply(config, overrides)
    try:
      runs.validate(c)
      if 'probes' in c:  # a bad swept option names its point before the estimate reads it
        from probes import registry  # pylint: disable=g-import-not-at-top
        registry.check_options(c)
    except runs.ConfigError as e:
      raise _at_point(e, overrides) from None
    c = runs.resolve(c)
    for r in runs.expand(c):
      rid = sweep.run_id(_identity(c, r))
      if rid in seen:
        _check_not_collapsed(config, seen[rid], overrides)
        continue
      seen[rid] = overrides
      keys = {**{k: v for k, v in overrides.items()}, 'strategy': r.strategy, 'seed': r.seed,
              'lr': r.lr, 'weight_decay': r.weight_decay}
      items.append(Item(rid, c, dataclasses.replace(r, name=rid), keys))
  return items


def _at_point(e: runs.ConfigError, keys: dict) -> runs.ConfigError:
  """``e`` with the sweep point it came from appended."""
  where = ', '.join(f'{k}={v}' for k, v in keys.items())
  return runs.ConfigError(e.field, f'{str(e).split(": ", 1)[1]} (sweep point {where})')


def _check_not_collapsed(config, first: dict, again: dict) -> None:
  """Two points that are one run must not differ in a swept output setting (one that is
  not part of a run's identity, as checkpoint_every): only the first would run, silently
  dropping the others' values. A sweep may vary one together with what a run computes
  (the landscape's step-matched checkpoints)."""
  for key in first.keys() & again.keys():
    if key.split('.')[0] in NOT_IDENTITY and first[key] != again[key]:
      zipped = dict(sweep.leaves(config.sweep.get('zip')))
      group = 'zip' if str(zipped.get(key, '')).strip() else 'grid'
      raise sweep.SweepError(f'sweep.{group}.{key}', 'an output setting, not part of what a '
                             f'run computes: the runs with {key}={first[key]!r} and '
                             f'{again[key]!r} are one run; set it with --config.{key}')


def _batch_key(config) -> str:
  d = {k: v for k, v in config.to_dict().items() if k not in BATCHABLE + ('sweep',)}
  return json.dumps(d, sort_keys=True, default=str)


def run_bytes(config) -> int:
  """One run's share of a batch's memory (bytes; ``budget.estimate``): parameters,
  gradients, optimiser state and activations, what its probes hold and its trajectory's
  vectors; the data, shared by the batch, is not in it."""
  e = budget.estimate(config, 2)
  return (e['state'] + e['probes'] + e['trajectory']) // 2


def device_bytes() -> int:
  """Memory of one device: the accelerator's limit, or the host's available memory."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return budget.host_available()


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
  return workdir_lib.is_complete(run_dir)


def _started(run_dir: str) -> bool:
  return os.path.isdir(run_dir) and bool(os.listdir(run_dir))


def _parts(b: list[Item], runs_dir: str) -> list[tuple[list[Item], bool]]:
  """How to continue batch ``b``: [(runs, resume?)]. Its unfinished runs that started
  resume together when they share a checkpoint step (runs never started, e.g. after
  ``--rerun``, start as another batch); otherwise every unfinished run starts again as
  one batch."""
  todo = [it for it in b if not _done(os.path.join(runs_dir, it.id))]
  started = [it for it in todo if _started(os.path.join(runs_dir, it.id))]
  common = None
  for it in started:
    steps = set(checkpoint.steps(os.path.join(runs_dir, it.id)))
    common = steps if common is None else common & steps
  if started and common:
    return [(started, True), ([it for it in todo if it not in started], False)]
  if started:
    logging.warning('sweep: %d unfinished run(s) of a batch have no checkpoint in common '
                    '(interrupted before their first); the batch starts again', len(started))
  return [(todo, False)]


def result_row(item: Item, run_dir: str) -> dict:
  """The results-table row of a finished run: its keys, final metrics and curves. A
  ``summary.json`` that cannot be read is a ``WorkdirError`` naming it."""
  path = os.path.join(run_dir, 'summary.json')
  try:
    with open(path) as f:
      s = json.load(f)
    final = {
        'final_validation_accuracy': s['final_eval']['validation_accuracy'],
        'final_training_accuracy': s['final_eval']['training_accuracy'],
        'memorization_epoch': s['grokking']['memorization_epoch'],
        'generalization_epoch': s['grokking']['generalization_epoch'],
        'epochs_trained': s['training']['epochs_trained'],
        'stop_reason': s['training']['stop_reason'],
        'duration_seconds': s['timing']['duration_seconds']}
  except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError):
    rerun = ';'.join(f'{k}={v}' for k, v in item.keys.items())
    raise experiment.WorkdirError(
        f'{path} cannot be read (not the summary a finished run writes); restore it, or '
        f"train that run again with --rerun='{rerun}'") from None
  rows = sinks.read_jsonl(os.path.join(run_dir, f'{item.id}.jsonl'))
  evals = [r for r in rows if 'training_metrics/validation_accuracy' in r]
  curve = lambda rs, k: [r.get(f'training_metrics/{k}') for r in rs]
  return {
      'run_id': item.id, **item.keys, **final,
      'epoch': [r.get('epoch') for r in evals],
      'loss': curve(evals, 'loss'),
      'training_accuracy': curve(evals, 'training_accuracy'),
      'validation_accuracy': curve(evals, 'validation_accuracy'),
  }


def _check_sweep_dir(config, workdir: str, overwrite: bool) -> None:
  """The workdir holds this sweep (same base config) or nothing; --overwrite clears it.
  A damaged ``sweep.json`` or results table stops here, before anything trains."""
  path = os.path.join(workdir, SWEEP_FILE)
  # The fields a --resume may change (stop_after, checkpoint cadence, sinks) may change
  # between two invocations of one sweep too: a capped sweep continues with a larger cap.
  skip = ('sweep',) + experiment.RESUME_SAFE
  base = {k: v for k, v in config.to_dict().items() if k not in skip}
  base = json.loads(json.dumps(base, default=str))
  if overwrite:
    for name in (RUNS_DIR, results.TABLE, results.PARTS):
      p = os.path.join(workdir, name)
      if os.path.isdir(p):
        shutil.rmtree(p)
      elif os.path.exists(p):
        os.remove(p)
  elif os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)['base']
      if not isinstance(old, dict):
        raise TypeError
      old = {k: v for k, v in old.items() if k not in skip}  # older files kept them
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
      raise experiment.WorkdirError(
          f'{path} cannot be read (not the JSON a sweep writes); restore it, or pass '
          '--overwrite to replace the sweep') from None
    k = identity.first_difference(old, base)  # a field added since reads as its default
    if k is not None:
      raise experiment.WorkdirError(
          f'{workdir} holds a sweep whose config.{k} differs ({identity.value(old, k)!r} -> '
          f'{identity.value(base, k)!r}); use another --workdir, or --overwrite to replace it')
  if not overwrite:
    try:
      results.load(workdir)
    except results.ResultsError as e:
      raise experiment.WorkdirError(f'{e}; move it away, or pass --overwrite to replace the '
                                    'sweep') from None
  os.makedirs(workdir, exist_ok=True)
  sinks.write_json(path, {'base': base})


def run(config, workdir: str, *, probes: Callable[[Any], list] = lambda c: [],
        rerun: str = '', overwrite: bool = False, quiet: bool | str = False,
        print_every: int = 0) -> str:
  """Run (or continue) the sweep of ``config`` in ``workdir``; returns the table's path.

  ``probes(config)`` builds each batch's probes; ``rerun`` ('key=values;...') restarts the
  finished or interrupted runs it matches."""
  items = plan(config)
  filters = sweep.parse_rerun(rerun, config) if rerun else []
  if filters and not any(sweep.matches(it.keys, filters) for it in items):
    raise sweep.SweepError('--rerun', f'matches none of the {len(items)} runs of this sweep',
                           rerun)
  packed = batches(items)
  for b in packed:  # probes are validated, and each batch's memory estimated, up front
    try:
      built = probes(b[0].config)
    except runs.ConfigError as e:
      raise _at_point(e, b[0].keys) from None
    budget.check(b[0].config, len(b), built)
  primary = sharding.is_primary()  # with several processes, process 0 keeps the books
  if primary:
    runs.check_workdir(workdir)
  with workdir_lib.lock(workdir, ['sweep']) if primary else contextlib.nullcontext():
    return _run(config, workdir, items, packed, filters, probes=probes, overwrite=overwrite,
                quiet=quiet, print_every=print_every)


def _run(config, workdir, items, packed, filters, *, probes, overwrite, quiet,
         print_every=0) -> str:
  """``run`` once planned, under the sweep's lock."""
  primary = sharding.is_primary()
  if primary:
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
    for part, is_resume in _parts(b, runs_dir):
      if not part:
        continue
      logging.info('sweep: batch %d/%d, %s %d run(s)', k + 1, len(packed),
                   'resuming' if is_resume else 'starting', len(part))
      experiment.run(part[0].config, runs_dir, resume=is_resume, overwrite=not is_resume,
                     quiet=quiet, probes=probes(part[0].config), batch=[it.run for it in part],
                     print_every=print_every)
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
