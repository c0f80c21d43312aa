"""Metric sinks for one run: JSONL (always), TensorBoard via tensorboardX, CSV.

Every sink takes ``write(epoch, metrics)`` with the reference's key names
(``training_metrics/loss``, ...). On resume, ``truncate_after`` drops rows of epochs that
the restored checkpoint has not reached yet, so a resumed run's files equal an
uninterrupted run's; TensorBoard does the same through ``purge_step``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping


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


def read_jsonl(path: str) -> list[dict]:
  """Rows of a JSONL file; a torn last line (a kill mid-write) is ignored."""
  rows = []
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return rows


def truncate_after(path: str, start_epoch: int) -> None:
  """Keep only rows with ``epoch < start_epoch`` (atomically); no-op for a missing file."""
  if not os.path.exists(path):
    return
  if path.endswith('.csv'):
    with open(path, newline='') as f:
      rows = list(csv.reader(f))
    if not rows:
      return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < start_epoch]
    _atomic_write(path, ''.join(','.join(r) + '\n' for r in kept) if len(kept) > 1 else '')
    return
  kept = [r for r in read_jsonl(path) if r.get('epoch', 0) < start_epoch]
  _atomic_write(path, ''.join(json.dumps(r) + '\n' for r in kept))


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


class TensorBoardSink:
  """tensorboardX event files in the run folder; scalars only, step = epoch."""

  def __init__(self, logdir: str, *, start_epoch: int = 0):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._w = SummaryWriter(logdir, purge_step=start_epoch if start_epoch else None,
                            flush_secs=30)

  def write(self, epoch: int, metrics: Mapping[str, Any]) -> None:
    for k, v in metrics.items():
      v = _jsonable(v)
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._w.add_scalar(k, v, epoch)

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


def for_run(run_dir: str, name: str, *, tensorboard: bool, csv_file: bool,
            start_epoch: int = 0) -> MultiSink:
  """The sinks a run's configuration asks for."""
  sinks: list[Any] = [JsonlSink(os.path.join(run_dir, f'{name}.jsonl'), start_epoch=start_epoch)]
  if csv_file:
    sinks.append(CsvSink(os.path.join(run_dir, f'{name}.csv'), start_epoch=start_epoch))
  if tensorboard:
    sinks.append(TensorBoardSink(run_dir, start_epoch=start_epoch))
  return MultiSink(sinks)


def write_json(path: str, obj: Any) -> None:
  """Pretty JSON, written atomically."""
  _atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + '\n')
