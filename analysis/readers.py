"""Run folders -> ``Run`` records: our JSONL and the reference's, old and new key names.

A workdir holds one folder per run: ours (``<run>/<run>.jsonl``, ``summary.json``,
``experiment_config.json``), or the reference's ``output/mod_arithmetic/`` and the
paper's ExperimentOneData repository, which use the same layout with the strategy as the
folder name. A workdir may also be a single run folder, or a sweep's (``sweep.json``,
``runs/<id>/``), whose runs are labelled by the values that set them apart
(``strategy=random,weight_decay=0.3``; their ids where that is not unique). Several
workdirs are read side by side; their runs are then labelled ``<workdir>/<run>``.

Rows are read as the reference's analysis loader reads them: the run's metrics file
(``<run>.jsonl``, else the first ``*.jsonl`` in sorted order, else the first ``*.csv``),
``hook_point`` dropped, list values replaced by their mean (NaN entries ignored), rows of
one epoch merged with the last non-null value of each key winning, sorted by epoch. Dict
values (``fourier/freq_powers``) are kept for area plots. Paper-era names become the
current ones: ``train_acc`` -> ``training_metrics/training_accuracy``, ``val_acc`` ->
``training_metrics/validation_accuracy``, ``lr`` -> ``training_metrics/learning_rate``.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import glob
import json
import math
import os
from typing import Any, Iterable

import numpy as np

TRAIN_ACC = 'training_metrics/training_accuracy'
TEST_ACC = 'training_metrics/validation_accuracy'
LOSS = 'training_metrics/loss'
LR = 'training_metrics/learning_rate'
# Reference names (paper-era and bare) -> ours.
ALIASES = {
    'train_acc': TRAIN_ACC, 'training_accuracy': TRAIN_ACC,
    'val_acc': TEST_ACC, 'validation_accuracy': TEST_ACC,
    'lr': LR, 'learning_rate': LR,
    'loss': LOSS, 'perplexity': 'training_metrics/perplexity',
}
EVAL_ALIASES = {'train_acc': 'training_accuracy', 'val_acc': 'validation_accuracy'}
DEFAULT_TARGET_ACC = 99.5  # configs/default.py and the reference's target_acc
SKIP_DIRS = ('analysis', 'checkpoints', 'final_params', 'tensorboard')
RUN_NAMES = ('run_name', 'run_id')  # config keys that name a run rather than set it


class InputError(ValueError):
  """Missing or malformed input; ``str(e)`` is one line naming the problem."""


def canonical(key: str) -> str:
  """The current name of a metric key (paper-era and bare names renamed)."""
  if key in ALIASES:
    return ALIASES[key]
  if key.startswith('training_metrics/') and key[len('training_metrics/'):] in ALIASES:
    return ALIASES[key[len('training_metrics/'):]]
  return key


def _is_null(v: Any) -> bool:
  return v is None or (isinstance(v, float) and math.isnan(v))


def _cell(v: Any) -> Any:
  """A row value as the reference's loader keeps it: lists by their mean, dicts as is."""
  if isinstance(v, list):
    nums = [float(x) for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
    finite = [x for x in nums if not math.isnan(x)]
    return float(np.mean(finite)) if finite else None
  if isinstance(v, bool):
    return float(v)
  return v


def _epoch(row: dict) -> int | None:
  """A row's epoch (``epoch``, else the reference's ``step``) if it is a whole number."""
  e = row.get('epoch', row.get('step'))
  if isinstance(e, bool) or not isinstance(e, (int, float)):
    return None
  if isinstance(e, float) and not (math.isfinite(e) and e.is_integer()):
    return None
  return int(e)


def merge_rows(raw: Iterable[dict], where: str = 'a metrics file') -> list[dict]:
  """Rows merged per epoch (last non-null wins), keys renamed, lists averaged, sorted."""
  by_epoch: dict[int, dict] = {}
  for row in raw:
    epoch = _epoch(row)
    if epoch is None:
      raise InputError(f'{where}: a row has no whole-number epoch: {str(row)[:80]}')
    merged = by_epoch.setdefault(epoch, {'epoch': epoch})
    for k, v in row.items():
      if k in ('epoch', 'step', 'hook_point'):
        continue
      v = _cell(v)
      if not _is_null(v):
        merged[canonical(k)] = v
  return [by_epoch[e] for e in sorted(by_epoch)]


def read_jsonl(path: str) -> list[dict]:
  """Raw rows of a JSONL file. A torn last line (a kill mid-write) is ignored; any other
  unreadable line (not UTF-8, not a JSON object, no whole-number epoch) is an
  ``InputError`` naming it."""
  with open(path, 'rb') as f:
    lines = f.read().splitlines()
  rows = []
  for i, raw in enumerate(lines):
    if not raw.strip():
      continue
    try:
      row = json.loads(raw.decode('utf-8'))
    except RecursionError:
      raise InputError(f'{path}:{i + 1}: nested too deeply to be a metrics row') from None
    except (UnicodeDecodeError, json.JSONDecodeError):
      if i == len(lines) - 1:
        break
      raise InputError(f'{path}:{i + 1}: not a JSON object') from None
    if not isinstance(row, dict):
      raise InputError(f'{path}:{i + 1}: not a JSON object')
    if _epoch(row) is None:
      raise InputError(f'{path}:{i + 1}: the row has no whole-number epoch')
    rows.append(row)
  return rows


def _csv_value(text: str) -> Any:
  """A CSV cell of our or the reference's sink: number, ``a;b`` list or ``k:v;k:v`` dict."""
  if text == '':
    return None
  parts = text.split(';')
  try:
    if ':' in text:
      return {k: float(v) for k, v in (p.split(':', 1) for p in parts if p)}
    if len(parts) > 1:
      return [float(p) for p in parts if p]
    return float(text)
  except ValueError:
    return text


def read_csv(path: str) -> list[dict]:
  """Raw rows of a metrics CSV (columns ``epoch``, optional ``hook_point``, metric keys)."""
  try:
    with open(path, newline='', encoding='utf-8') as f:
      reader = csv.DictReader(f)
      if not reader.fieldnames or 'epoch' not in reader.fieldnames:
        raise InputError(f'{path}: no "epoch" column')
      rows = []
      for r in reader:
        epoch = _epoch({'epoch': _csv_value(r['epoch'] or '')})
        if epoch is None:
          raise InputError(f'{path}:{reader.line_num}: bad epoch {r["epoch"]!r}')
        rows.append({'epoch': epoch, **{k: _csv_value(v) for k, v in r.items()
                                        if k not in ('epoch', None) and v is not None}})
  except UnicodeDecodeError as e:
    raise InputError(f'{path}: not UTF-8 text (byte {e.start})') from None
  except csv.Error as e:
    raise InputError(f'{path}: not a CSV file ({e})') from None
  return rows


def metrics_file(run_dir: str) -> str | None:
  """The file the reference's loader would read: ``<run>.jsonl``, the first ``*.jsonl``,
  else the first ``*.csv`` (sorted), or None."""
  own = os.path.join(run_dir, os.path.basename(os.path.normpath(run_dir)) + '.jsonl')
  if os.path.isfile(own):
    return own
  for pattern in ('*.jsonl', '*.csv'):
    found = sorted(glob.glob(os.path.join(run_dir, pattern)))
    if found:
      return found[0]
  return None


def read_raw(path: str) -> list[dict]:
  return read_csv(path) if path.endswith('.csv') else read_jsonl(path)


def read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      obj = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f'{path}: not valid JSON ({e})') from None
  except RecursionError:
    raise InputError(f'{path}: nested too deeply to read') from None
  if not isinstance(obj, dict):
    raise InputError(f'{path}: expected a JSON object')
  return obj


SUMMARY_PARTS = ('training', 'grokking', 'timing', 'init_eval', 'final_eval', 'deltas')


def normalise_summary(summary: dict, path: str = 'summary.json') -> dict:
  """``summary.json`` with the reference's paper-era eval names renamed (val_acc, ...);
  ``InputError`` if one of its parts (``training``, ``final_eval``, ...) is there but not a
  JSON object."""
  for part in SUMMARY_PARTS:
    if part in summary and not isinstance(summary[part], dict):
      raise InputError(f'{path}: {part}: expected a JSON object, got '
                       f'{type(summary[part]).__name__}')
  out = dict(summary)
  for part in ('init_eval', 'final_eval', 'deltas'):
    if isinstance(out.get(part), dict):
      out[part] = {EVAL_ALIASES.get(k, k): v for k, v in out[part].items()}
  return out


@dataclasses.dataclass
class Run:
  """One run folder: its metric rows (merged per epoch), config and summary."""

  name: str      # label, unique among the runs being analysed
  path: str      # the run folder
  rows: list[dict]
  config: dict   # experiment_config.json ({} if absent)
  summary: dict  # summary.json with current eval names ({} if absent)

  @property
  def strategy(self) -> str:
    return str(self.config.get('strategy') or self.summary.get('strategy')
               or os.path.basename(os.path.normpath(self.path)))

  @property
  def origin(self) -> str:
    """'ours' (JAX environment) or 'reference' (PyTorch)."""
    env = self.config.get('environment')
    ours = isinstance(env, dict) and 'jax_version' in env
    return 'ours' if ours or 'grokking' in self.summary else 'reference'

  @property
  def target_acc(self) -> float:
    """The run's generalisation threshold: its config's target_acc, else 99.5."""
    for v in (self.config.get('target_acc'),
              self.summary.get('grokking', {}).get('generalization_threshold')):
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return DEFAULT_TARGET_ACC

  def keys(self) -> list[str]:
    """Every metric key of the run, in first-seen order."""
    seen = {}
    for r in self.rows:
      for k in r:
        if k != 'epoch':
          seen[k] = None
    return list(seen)

  def series(self, key: str, epoch_range=None) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) float arrays of the rows holding a number for ``key``."""
    pts = [(r['epoch'], r[key]) for r in self.rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    pts = [p for p in pts if in_range(p[0], epoch_range)]
    if not pts:
      return np.zeros(0), np.zeros(0)
    e, v = np.asarray(pts, dtype=float).T
    return e, v

  def dict_series(self, key: str, epoch_range=None) -> tuple[np.ndarray, list[dict]]:
    """(epochs, dicts) of the rows holding a dict for ``key`` (e.g. fourier/freq_powers)."""
    pts = [(r['epoch'], r[key]) for r in self.rows if isinstance(r.get(key), dict)
           and in_range(r['epoch'], epoch_range)]
    return np.asarray([p[0] for p in pts], float), [p[1] for p in pts]


def in_range(epoch: float, epoch_range) -> bool:
  return epoch_range is None or epoch_range[0] <= epoch <= epoch_range[1]


def is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, 'summary.json')) or metrics_file(path) is not None


def read_run(path: str, name: str | None = None) -> Run:
  """One run folder (ours or the reference's)."""
  mfile = metrics_file(path)
  rows = merge_rows(read_raw(mfile), mfile) if mfile else []
  summary = os.path.join(path, 'summary.json')
  return Run(name=name or os.path.basename(os.path.normpath(path)), path=path, rows=rows,
             config=read_json(os.path.join(path, 'experiment_config.json')),
             summary=normalise_summary(read_json(summary), summary))


def is_sweep_dir(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, 'sweep.json'))
          and os.path.isdir(os.path.join(path, 'runs')))


def _flat(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def sweep_labels(dirs: list[str]) -> dict[str, str]:
  """{run folder: label} for a sweep's runs: the config values that differ between them,
  ``key=value`` joined by ',' in config order (each run's id where the labels would not
  be unique, or say nothing)."""
  configs = [_flat(read_json(os.path.join(d, 'experiment_config.json'))) for d in dirs]
  keys = [k for k in dict.fromkeys(k for c in configs for k in c) if k not in RUN_NAMES]
  varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str)
                                     for c in configs}) > 1]
  labels = [','.join(f'{k}={c.get(k)}' for k in varying) for c in configs]
  ids = [os.path.basename(os.path.normpath(d)) for d in dirs]
  if len(set(labels)) < len(labels) or not all(labels) or any(len(l) > 120 for l in labels):
    labels = ids
  return dict(zip(dirs, labels))


def run_dirs(workdir: str) -> list[str]:
  """The run folders of a workdir (the workdir itself if it is one; a sweep's
  ``runs/*``)."""
  if not os.path.isdir(workdir):
    raise InputError(f'--workdir {workdir}: no such directory')
  if is_run_dir(workdir):
    return [workdir]
  if is_sweep_dir(workdir):
    workdir = os.path.join(workdir, 'runs')
  dirs = [os.path.join(workdir, d) for d in sorted(os.listdir(workdir))
          if d not in SKIP_DIRS and os.path.isdir(os.path.join(workdir, d))]
  dirs = [d for d in dirs if is_run_dir(d)]
  if not dirs:
    raise InputError(f'--workdir {workdir}: no run folders (<run>/<run>.jsonl, a *.csv or '
                     'summary.json)')
  return dirs


def load(workdirs: list[str], strategies: list[str] | None = None) -> list[Run]:
  """Every run under ``workdirs`` (labelled ``<workdir>/<run>`` when there are several),
  optionally only those whose strategy or label is in ``strategies``."""
  if not workdirs:
    raise InputError('give at least one --workdir')
  found = []
  for wd in workdirs:
    prefix = os.path.basename(os.path.normpath(wd)) if len(workdirs) > 1 else ''
    dirs = run_dirs(wd)
    names = sweep_labels(dirs) if is_sweep_dir(wd) else {}
    for d in dirs:
      base = names.get(d) or os.path.basename(os.path.normpath(d))
      label = f'{prefix}/{base}' if prefix and os.path.normpath(d) != os.path.normpath(wd) \
          else (prefix or base)
      found.append((label, d))
  counts: dict[str, int] = {}
  runs = []
  for label, d in found:
    counts[label] = counts.get(label, 0) + 1
    runs.append(read_run(d, label if counts[label] == 1 else f'{label}#{counts[label]}'))
  if strategies:
    keep = [r for r in runs if r.strategy in strategies or r.name in strategies]
    if not keep:
      raise InputError(f'--strategies {" ".join(strategies)}: no such run; have '
                       f'{", ".join(r.name for r in runs)}')
    runs = keep
  return runs


def expand_metrics(runs: list[Run], patterns: list[str]) -> list[str]:
  """Metric keys matching ``patterns`` (exact names, paper-era names or shell globs) in
  any run, in the patterns' order; an ``InputError`` for a pattern nothing matches."""
  have = {}
  for r in runs:
    for k in r.keys():
      have[k] = None
  out = []
  for pat in patterns:
    pat = canonical(pat)
    hits = [k for k in have if fnmatch.fnmatchcase(k, pat)] if any(
        c in pat for c in '*?[') else ([pat] if pat in have else [])
    if not hits:
      close = [k for k in have if pat.split('/')[-1] in k][:4] or list(have)[:4]
      raise InputError(f'no run has metric {pat!r} (e.g. {", ".join(close) or "no metrics"})')
    out += [h for h in hits if h not in out]
  return out
