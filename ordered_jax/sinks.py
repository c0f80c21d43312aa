"""Metric sinks for one run: JSONL (always), TensorBoard via tensorboardX, CSV.

Every sink takes ``write(epoch, metrics)`` with the reference's key names
(``training_metrics/loss``, ...). On resume, ``truncate_after`` moves the rows of epochs
that the restored checkpoint has not reached yet to ``<file>.removed`` (appended) and says
so, so a resumed run's files equal an uninterrupted run's and nothing is lost; it never
removes a row of an earlier epoch, and keeps a line it cannot read (with a warning) unless
it comes after the cut. TensorBoard does the same through ``purge_step``. A CSV or
TensorBoard sink switched on at a resume is first filled from the JSONL rows it missed.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from typing import Any, Mapping

from absl import logging

REMOVED = '.removed'  # suffix of the file that keeps the rows a resume cut


def _jsonable(v: Any):
  if isinstance(v, float) and not math.isfinite(v):
    return v  # json writes NaN/Infinity, as the reference's files do
  if hasattr(v, 'item') and getattr(v, 'ndim', 1) == 0:
    return v.item()
  if hasattr(v, 'tolist'):
    return v.tolist()
  return v


def _atomic_write(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class JsonlSink:
  """``<run>.jsonl``: one object per evaluated epoch, appended and flushed per epoch."""

  def __init__(self, path: str, *, start_epoch: int = 0):
    self.path = path
    truncate_after(path, start_epoch)
    self._f = open(path, 'a')

  def write(self, epoch: int, metrics: Mapping[str, Any]) -> None:
    row = {'epoch': int(epoch), **{k: _jsonable(v) for k, v in metrics.items()}}
    self._f.write(json.dumps(row) + '\n')
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def _parse_row(line: str) -> dict | None:
  """A JSONL line as a dict, or None if it is not one (torn, damaged, absurdly nested)."""
  try:
    row = json.loads(line)
  except (ValueError, RecursionError):
    return None
  return row if isinstance(row, dict) else None


def read_jsonl(path: str) -> list[dict]:
  """Rows of a JSONL file; a torn last line (a kill mid-write) is ignored, any other
  unreadable line is skipped with a warning."""
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path, errors='replace') as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines):
    row = _parse_row(line)
    if row is not None:
      rows.append(row)
    elif line.strip() and i < len(lines) - 1:
      logging.warning('%s:%d: not a JSON object; line skipped', path, i + 1)
  return rows


def _epoch_of(line: str, is_csv: bool) -> int | None:
  """The epoch of a metrics line, or None if the line cannot be read."""
  if is_csv:
    try:
      return int(next(csv.reader([line]))[0])
    except (ValueError, IndexError, StopIteration, csv.Error):
      return None
  row = _parse_row(line)
  e = row.get('epoch') if row is not None else None
  return e if isinstance(e, int) and not isinstance(e, bool) else None


def truncate_after(path: str, start_epoch: int) -> None:
  """Keep only the lines of epochs < ``start_epoch`` (atomically; no-op for a missing
  file). What goes is appended to ``<path>.removed`` and logged: every line of a later
  epoch, and a line that cannot be read when it comes after the first such line (a torn
  or damaged tail). An unreadable line before that is kept, with a warning."""
  if not os.path.exists(path):
    return
  is_csv = path.endswith('.csv')
  with open(path, newline='' if is_csv else None, errors='surrogateescape') as f:
    lines = f.read().splitlines(keepends=True)
  head = lines[:1] if is_csv else []
  body = lines[len(head):]
  epochs = [_epoch_of(line, is_csv) for line in body]
  cut = next((i for i, e in enumerate(epochs) if e is not None and e >= start_epoch),
             len(body))
  # A torn last line (a kill mid-write) belongs to an epoch after the checkpoint.
  if cut == len(body) and body and epochs[-1] is None and not body[-1].endswith('\n'):
    cut = len(body) - 1
  kept, removed, unreadable = [], [], []
  for i, (line, e) in enumerate(zip(body, epochs)):
    if e is None and line.strip() and i < cut:
      unreadable.append(len(head) + i + 1)
    (removed if (e is not None and e >= start_epoch) or (e is None and i >= cut)
     else kept).append(line)
  for n in unreadable:
    logging.warning('%s:%d: cannot be read (not a metrics row); kept as it is (it comes '
                    'before the checkpoint of epoch %d)', path, n, start_epoch - 1)
  if not removed:
    return
  with open(path + REMOVED, 'a', newline='' if is_csv else None,
            errors='surrogateescape') as f:
    if is_csv and head:
      f.write(head[0] if head[0].endswith('\n') else head[0] + '\n')
    f.writelines(line if line.endswith('\n') else line + '\n' for line in removed)
  got = [e for e in epochs if e is not None and e >= start_epoch]
  span = f'epochs {min(got)}..{max(got)}' if got else 'no complete row'
  logging.info('%s: resuming after epoch %d, moved %d line(s) (%s) to %s', path,
               start_epoch - 1, len(removed), span, path + REMOVED)
  text = ''.join(head + kept) if (kept or not is_csv) else ''
  with open(path + '.tmp', 'w', newline='' if is_csv else None,
            errors='surrogateescape') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + '.tmp', path)


class CsvSink:
  """``<run>.csv``: columns ``epoch`` then metric keys in first-seen order.

  A row with a new key rewrites the file once with the widened header (rare: keys are
  fixed per configuration); list and dict values are written as ``a;b`` and ``k:v;...``.
  """

  def __init__(self, path: str, *, start_epoch: int = 0):
    self.path = path
    truncate_after(path, start_epoch)
    self.keys: list[str] = []
    self.rows: list[dict] = []
    if os.path.exists(path) and os.path.getsize(path):
      with open(path, newline='') as f:
        reader = csv.DictReader(f)
        self.keys = [k for k in reader.fieldnames if k != 'epoch']
        self.rows = list(reader)

  @staticmethod
  def _cell(v: Any) -> str:
    v = _jsonable(v)
    if isinstance(v, dict):
      return ';'.join(f'{k}:{x}' for k, x in v.items())
    if isinstance(v, list):
      return ';'.join(str(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)

  def write(self, epoch: int, metrics: Mapping[str, Any]) -> None:
    row = {'epoch': str(int(epoch)), **{k: self._cell(v) for k, v in metrics.items()}}
    new = [k for k in metrics if k not in self.keys]
    self.keys += new
    self.rows.append(row)
    fields = ['epoch'] + self.keys
    if new:
      with open(self.path + '.tmp', 'w', newline='') as f:
        w = csv.DictWriter(f, fields, restval='')
        w.writeheader()
        w.writerows(self.rows)
      os.replace(self.path + '.tmp', self.path)
    else:
      with open(self.path, 'a', newline='') as f:
        csv.DictWriter(f, fields, restval='').writerow(row)

  def close(self) -> None:
    pass


# The metrics the HParams tab shows per run (their last logged values).
HPARAM_METRICS = ('training_metrics/validation_accuracy', 'training_metrics/training_accuracy',
                  'training_metrics/loss')


def hparam_values(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """A run config flattened to ``a.b.c`` keys with TensorBoard's hparam types (numbers,
  strings, bools; lists and None as text); the environment left out."""
  out = {}
  for k, v in config.items():
    if k == 'environment' and not prefix:
      continue
    if isinstance(v, Mapping):
      out.update(hparam_values(v, f'{prefix}{k}.'))
    elif isinstance(v, (bool, int, float, str)):
      out[prefix + k] = v
    else:
      out[prefix + k] = json.dumps(v, default=str)
  return out


class TensorBoardSink:
  """tensorboardX event files in the run folder; scalars only, step = epoch."""

  def __init__(self, logdir: str, *, start_epoch: int = 0):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    # purge_step hides the events of epochs >= start_epoch that an earlier session wrote
    # (all of them when a run starts again from epoch 0 in the same folder).
    self._w = SummaryWriter(logdir, purge_step=start_epoch, flush_secs=30)

  def write(self, epoch: int, metrics: Mapping[str, Any]) -> None:
    for k, v in metrics.items():
      v = _jsonable(v)
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._w.add_scalar(k, v, epoch)

  def describe(self, config: Mapping[str, Any]) -> None:
    """The run's config for TensorBoard: its values as hparams (the HParams tab compares
    the runs of a sweep, with ``HPARAM_METRICS``' last values) and as JSON text."""
    from tensorboardX.summary import hparams  # pylint: disable=g-import-not-at-top
    values = hparam_values(config)
    for summary in hparams(values, {k: 0.0 for k in HPARAM_METRICS}):
      self._w.file_writer.add_summary(summary)
    text = json.dumps({k: v for k, v in config.items() if k != 'environment'}, indent=1,
                      default=str)
    self._w.add_text('config', '```\n' + text + '\n```', 0)

  def close(self) -> None:
    self._w.flush()
    self._w.close()


class MultiSink:
  """Fans ``write`` out to several sinks."""

  def __init__(self, sinks):
    self.sinks = list(sinks)

  def write(self, epoch: int, metrics: Mapping[str, Any]) -> None:
    for s in self.sinks:
      s.write(epoch, metrics)

  def close(self) -> None:
    for s in self.sinks:
      s.close()


def _csv_epochs(path: str) -> list[int]:
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return [e for e in (_epoch_of(line, True) for line in f.read().splitlines()[1:])
            if e is not None]


def for_run(run_dir: str, name: str, *, tensorboard: bool, csv_file: bool,
            start_epoch: int = 0, config: Mapping[str, Any] | None = None) -> MultiSink:
  """The sinks a run's configuration asks for. On a resume (``start_epoch`` > 0), a CSV
  that lacks rows the JSONL has (``csv`` switched on now) is rebuilt from the JSONL (the
  old one kept as ``.removed``), and TensorBoard switched on now (no event file yet)
  first gets the JSONL's rows, so every file covers the whole run."""
  jsonl = JsonlSink(os.path.join(run_dir, f'{name}.jsonl'), start_epoch=start_epoch)
  sinks: list[Any] = [jsonl]
  earlier = read_jsonl(jsonl.path) if start_epoch else []
  if csv_file:
    path = os.path.join(run_dir, f'{name}.csv')
    truncate_after(path, start_epoch)
    if earlier and _csv_epochs(path) != [r['epoch'] for r in earlier]:
      if os.path.exists(path):
        with open(path) as old, open(path + REMOVED, 'a') as keep:
          keep.write(old.read())
        os.remove(path)
      logging.info('%s: csv was off for epochs the JSONL has; filling it from %s', path,
                   jsonl.path)
      sink = CsvSink(path)
      for r in earlier:
        sink.write(r['epoch'], {k: v for k, v in r.items() if k != 'epoch'})
    sinks.append(CsvSink(path, start_epoch=start_epoch))
  if tensorboard:
    fresh = not glob.glob(os.path.join(run_dir, 'events.out.tfevents*'))
    sink = TensorBoardSink(run_dir, start_epoch=start_epoch)
    if config is not None and (fresh or not start_epoch):
      sink.describe(config)
    if fresh and earlier:
      logging.info('%s: tensorboard was off for epochs the JSONL has; replaying them',
                   run_dir)
      for r in earlier:
        sink.write(r['epoch'], {k: v for k, v in r.items() if k != 'epoch'})
    sinks.append(sink)
  return MultiSink(sinks)


def write_json(path: str, obj: Any) -> None:
  """Pretty JSON, written atomically."""
  _atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + '\n')
