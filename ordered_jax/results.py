"""One Parquet table per sweep: a row per run (pyarrow only).

Columns: ``run_id`` (the run's stable id, ``sweep.run_id``), the varied keys as scalar
columns under dotted names (``grokfast.kind``), final metrics as scalars,
``memorization_epoch`` / ``generalization_epoch`` (nullable ints) and curves as list
columns (``epoch``, ``training_accuracy``, ``validation_accuracy``, ``loss``, ...).
Types are inferred from the rows; None is allowed anywhere.

Writing is crash-safe: ``ResultsWriter.add`` writes each finished batch as
``<sweep>/_parts/part_NNNNNN.parquet`` (tmp file + ``os.replace``), ``consolidate`` folds
the parts into ``<sweep>/results.parquet`` (atomic; de-duplicated on ``run_id``, the
newest part winning; sorted by ``run_id``) and only then deletes them. ``load`` never
writes: it reads the table plus any leftover parts, so an interrupted sweep's rows are
there and a running sweep is not disturbed. Parts and inputs with different columns
concatenate (missing columns null; null, int -> float promoted).

Reading elsewhere is one call: ``pandas.read_parquet('<sweep>/results.parquet')`` or
``polars.read_parquet('<sweep>/results.parquet')`` (or ``results.load('<sweep>')``, which
also picks up parts not yet consolidated).
"""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.parquet as pq

TABLE = 'results.parquet'
PARTS = '_parts'
KEY = 'run_id'
_PART = re.compile(r'^part_(\d+)\.parquet$')


class ResultsError(ValueError):
  """An unreadable or incompatible results table (one-line message)."""


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def table_from_rows(rows: list[dict]) -> pa.Table:
  """Rows -> a table: columns in first-seen order (``run_id`` first), types inferred per
  column over every row (so a row lacking a key, or holding None, is a null)."""
  names = list(dict.fromkeys([KEY] + [k for r in rows for k in r]))
  for r in rows:
    if not isinstance(r.get(KEY), str) or not r[KEY]:
      raise ResultsError(f'every row needs a non-empty string {KEY!r}; got {r.get(KEY)!r}')
  columns = {}
  for name in names:
    try:
      columns[name] = pa.array([r.get(name) for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
      raise ResultsError(f'column {name!r}: values of incompatible types ({_one_line(e)})'
                         ) from None
  return pa.table(columns)


def _write(table: pa.Table, path: str) -> str:
  """Write ``table`` to ``path`` atomically (a tmp file beside it, then ``os.replace``)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
  try:
    pq.write_table(table, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _parts(parts_dir: str) -> list[str]:
  """The part files under ``parts_dir``, oldest first."""
  if not os.path.isdir(parts_dir):
    return []
  found = [(int(m.group(1)), n) for n in os.listdir(parts_dir) if (m := _PART.match(n))]
  return [os.path.join(parts_dir, n) for _, n in sorted(found)]


def _read(path: str, what: str = '') -> pa.Table:
  try:
    t = pq.read_table(path)
  except (OSError, pa.ArrowException) as e:
    raise ResultsError(f'{what or path}: cannot read a Parquet table ({_one_line(e)})'
                       ) from None
  if KEY not in t.column_names:
    raise ResultsError(f'{what or path}: no {KEY!r} column (not a results table)')
  return t


def _concat(tables: list[pa.Table], names: list[str]) -> pa.Table:
  """Tables with unified columns (missing ones null, types promoted); a clash (one column,
  incompatible types) is a one-line ``ResultsError`` naming both sources."""
  try:
    t = pa.concat_tables(tables, promote_options='permissive')
  except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
    seen = {}
    for table, name in zip(tables, names):
      for f in table.schema:
        if f.name not in seen:
          seen[f.name] = (f, name)
          continue
        try:
          merged = pa.unify_schemas([pa.schema([seen[f.name][0]]), pa.schema([f])],
                                    promote_options='permissive')
          seen[f.name] = (merged.field(0), seen[f.name][1])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
          raise ResultsError(f'column {f.name!r} is {seen[f.name][0].type} in '
                             f'{seen[f.name][1]} but {f.type} in {name}') from None
    raise ResultsError(f'cannot combine the tables: {_one_line(e)}') from None
  return t.select([KEY] + [n for n in t.column_names if n != KEY])


def _dedup(table: pa.Table, keep: str = 'last') -> pa.Table:
  """One row per ``run_id`` (the last or first occurrence), sorted by ``run_id``."""
  ids = table.column(KEY).to_pylist()
  pick = {}
  for i, rid in enumerate(ids):
    if keep == 'last' or rid not in pick:
      pick[rid] = i
  return table.take(pa.array([pick[r] for r in sorted(pick)], type=pa.int64()))


def _empty() -> pa.Table:
  return pa.table({KEY: pa.array([], type=pa.string())})


def _sources(path: str) -> tuple[str, list[str]]:
  """(table file or '', part files) of a sweep dir or of a table file (whose sibling
  ``_parts/`` belongs to it when it is named ``results.parquet``)."""
  if os.path.isdir(path):
    table = os.path.join(path, TABLE)
    return (table if os.path.isfile(table) else ''), _parts(os.path.join(path, PARTS))
  if os.path.isfile(path):
    parts = (_parts(os.path.join(os.path.dirname(path), PARTS))
             if os.path.basename(path) == TABLE else [])
    return path, parts
  raise ResultsError(f'{path}: no such file or directory')


def _combined(table: str, parts: list[str]) -> pa.Table:
  files = ([table] if table else []) + parts
  if not files:
    return _empty()
  return _dedup(_concat([_read(f) for f in files], files))


class ResultsWriter:
  """Appends finished runs' rows to a sweep's table: ``add`` per batch, ``consolidate``
  at the end (or any time; it is idempotent and crash-safe)."""

  def __init__(self, sweep_dir: str):
    self.sweep_dir = sweep_dir
    self.table = os.path.join(sweep_dir, TABLE)
    self.parts_dir = os.path.join(sweep_dir, PARTS)

  def add(self, rows: list[dict]) -> str:
    """Write ``rows`` as the next part file (atomically); returns its path ('' if none)."""
    if not rows:
      return ''
    table = table_from_rows(rows)
    existing = _parts(self.parts_dir)
    last = int(_PART.match(os.path.basename(existing[-1])).group(1)) if existing else 0
    return _write(table, os.path.join(self.parts_dir, f'part_{last + 1:06d}.parquet'))

  def consolidate(self) -> str:
    """Fold the parts into ``results.parquet`` (de-duplicated on ``run_id``, newest part
    winning, sorted); the parts are deleted only after the table is written. Returns the
    table's path."""
    table, parts = _sources(self.sweep_dir) if os.path.isdir(self.sweep_dir) else ('', [])
    if table and not parts:
      return self.table
    _write(_combined(table, parts), self.table)
    for p in parts:
      os.remove(p)
    try:
      os.rmdir(self.parts_dir)
    except OSError:
      pass
    return self.table


def load(path: str) -> pa.Table:
  """The results of a sweep dir or a ``.parquet`` file, with any parts not yet
  consolidated (an interrupted sweep) folded in, in memory: nothing is written."""
  return _combined(*_sources(path))


def merge(inputs: list[str], output: str, keep: str = 'last') -> str:
  """Combine the tables of several sweeps (dirs or files) into ``output`` (a dir, which
  gets ``results.parquet``, or a ``.parquet`` path). Columns are unified (missing ones
  null); a run in several inputs is kept from the last (``keep='last'``) or the first
  input. Unreadable inputs and type clashes raise a one-line ``ValueError``."""
  if keep not in ('last', 'first'):
    raise ResultsError(f"keep must be 'last' or 'first'; got {keep!r}")
  if not inputs:
    raise ResultsError('merge needs at least one input')
  tables = []
  for p in inputs:
    table, parts = _sources(p)
    if not table and not parts:
      raise ResultsError(f'{p}: no {TABLE} or {PARTS}/ here (not a sweep)')
    tables.append(_combined(table, parts))
  t = _dedup(_concat(tables, list(inputs)), keep)
  path = output if output.endswith('.parquet') else os.path.join(output, TABLE)
  return _write(t, path)
