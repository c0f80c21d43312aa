"""The sweep spec: ``config.sweep.grid`` and ``config.sweep.zip`` as lists of runs.

``grid`` and ``zip`` mirror every field of the config (``mirror``: the same nested keys,
each a string defaulting to ''), so ``--config.sweep.grid.seed=0..8`` works on a locked
config and a misspelt key fails when the flags are parsed. Pure Python (no JAX).

Values (``parse_values``), cast to the type of the field's current value:

* ``a,b,c``: a list; ``7``: one value; ``start..stop`` / ``start..stop..step``: a range
  with ``stop`` exclusive, step 1 unless given, negative steps count down
  (``10..0..-5`` = 10, 5). Items of a comma list may themselves be ranges (``0..3,10``).
* int fields take whole numbers only (``1.5`` is an error); float fields take any number,
  and float ranges (``0.1..1.0..0.3`` = 0.1, 0.4, 0.7) are computed in exact decimal
  arithmetic (start + k * step on the decimal text), so the end rule needs no float
  tolerance: a value equal to stop is excluded and the values are the floats one would
  type (0.7, not 0.7000000000000001); bool fields take true / false; str fields take the
  comma-separated items as they are (stripped; no ranges, so paths with '..' are safe;
  a string containing a comma cannot be swept); fields typed ``object`` or holding None
  (``train_size``) take ints, else floats, else strings. Tuple fields cannot be swept.
* Empty ranges (``5..5``, ``0..10..-1``), a zero step and unparsable numbers raise
  ``SweepError``, one line: ``config.sweep.grid.<key>: <what is allowed>; got '<text>'``.

Points (``points``): the cartesian product of the non-empty ``grid`` keys (keys in the
order ``ConfigDict`` lists them, alphabetical with nested keys in place; the last key
varies fastest); the non-empty ``zip`` keys covary (equal lengths) and are crossed with
the grid, zip outermost. No swept key: one point, ``{}`` (the config itself).

``--rerun`` filters (``parse_rerun``): ``key=values`` parts; ``;`` joins the parts of one
filter, which all must match (AND); ``|`` separates alternative filters (OR). E.g.
``seed=1,2;weight_decay=0.1|seed=5`` picks seed 1 or 2 at weight decay 0.1, and seed 5.
"""

from __future__ import annotations

import copy
import decimal
import hashlib
import itertools
import json
import math
from typing import Any

import ml_collections

SWEEP_SKIP = ('sweep',)   # fields never mirrored (the sweep does not sweep itself)
MAX_VALUES = 100_000      # values one key may expand to (guards against '0..1e9' typos)
MAX_POINTS = 10_000       # points one sweep may hold (planning takes a few ms per point)
_NUMBERS = 'a list a,b,c, one value or a range start..stop[..step]'


class SweepError(ValueError):
  """A bad sweep value; ``str(e)`` is one line: ``config.<field>: <allowed>; got '<text>'``."""

  def __init__(self, field: str, message: str | None = None, text: Any = None):
    if message is None:  # one argument: the whole line (how callers re-raise a ValueError)
      super().__init__(str(field))
      self.field = str(field).split(':', 1)[0].removeprefix('config.')
      return
    where = field if field.startswith('--') else f'config.{field}'
    got = '' if text is None else f"; got '{text}'"
    super().__init__(f'{where}: {message}{got}'.replace('\n', ' '))
    self.field = field


def _is_group(v) -> bool:
  return isinstance(v, ml_collections.ConfigDict)


def mirror(config) -> ml_collections.ConfigDict:
  """A ConfigDict with ``config``'s nested keys, every leaf '' (``SWEEP_SKIP`` left out):
  the shape of ``sweep.grid`` / ``sweep.zip``, so flags name real fields or fail."""
  out = ml_collections.ConfigDict()
  for k in config.keys():
    if k in SWEEP_SKIP:
      continue
    v = config[k]
    out[k] = mirror(v) if _is_group(v) else ''
  return out


def remirror(config) -> ml_collections.ConfigDict:
  """``config`` with ``sweep.grid`` and ``sweep.zip`` mirrored afresh, the values already
  set kept: the last line of a config file that adds its own sections (a probe's options,
  a model's or a task's section) to ``configs/default.py``'s, so they can be swept."""
  if 'sweep' not in config or not _is_group(config.sweep):
    return config  # no sweep settings: nothing to mirror
  with config.unlocked():
    for group in ('grid', 'zip'):
      old = config.sweep.get(group)
      new = mirror(config)
      for key, text in leaves(old):
        if str(text).strip():
          try:
            node, name = _parent(new, key)
          except KeyError:
            raise SweepError(f'sweep.{group}.{key}', 'not a field of the config (grid and '
                             'zip mirror its fields)', text) from None
          node[name] = text
      config.sweep[group] = new
  return config


def leaves(spec) -> list[tuple[str, Any]]:
  """(dotted key, text) of every leaf of a ``sweep.grid`` or ``sweep.zip`` spec."""
  return _leaves(spec, skip=()) if _is_group(spec) else []


def _leaves(config, prefix='', skip=SWEEP_SKIP) -> list[tuple[str, Any]]:
  """(dotted key, value) of every leaf, in ``ConfigDict`` order."""
  out = []
  for k in config.keys():
    if not prefix and k in skip:
      continue
    v = config[k]
    out += _leaves(v, f'{prefix}{k}.', ()) if _is_group(v) else [(f'{prefix}{k}', v)]
  return out


# -- values ------------------------------------------------------------------------------

def _kind(config, key: str):
  """The type a field's values are cast to: its declared type (``object`` for free-typed
  fields such as ``train_size``), via ``ConfigDict.get_type``."""
  parent, name = _parent(config, key)
  return parent.get_type(name)


def _int(s: str, field: str, text: str) -> int:
  try:
    return int(s)
  except ValueError:
    raise SweepError(field, f'an int field takes whole numbers ({_NUMBERS})',
                     text) from None


def _decimal(s: str, field: str, text: str) -> decimal.Decimal:
  try:
    d = decimal.Decimal(s.strip())
  except decimal.InvalidOperation:
    d = None
  if d is None or not d.is_finite():
    raise SweepError(field, f'a float field takes finite numbers ({_NUMBERS})',
                     text)
  return d


def _range(item: str, field: str, text: str, integer: bool) -> list:
  parts = item.split('..')
  if len(parts) not in (2, 3):
    raise SweepError(field, 'a range is start..stop or start..stop..step', text)
  if integer:
    start, stop, step = [_int(p, field, text) for p in parts] + ([1] if len(parts) == 2 else [])
  else:
    one = decimal.Decimal(1)
    start, stop, step = [_decimal(p, field, text) for p in parts] + (
        [one] if len(parts) == 2 else [])
  if step == 0:
    raise SweepError(field, 'the step of a range cannot be 0', text)
  n = len(range(start, stop, step)) if integer else max(0, int(
      ((stop - start) / step).to_integral_value(decimal.ROUND_CEILING)))
  if n <= 0:
    raise SweepError(field, 'the range is empty (stop is exclusive; a negative step counts '
                     'down from start)', text)
  if n > MAX_VALUES:
    raise SweepError(field, f'a range may hold at most {MAX_VALUES} values', text)
  if integer:
    return list(range(start, stop, step))
  with decimal.localcontext() as ctx:
    ctx.prec = 50
    return [float(start + k * step) for k in range(n)]


def _auto(item: str) -> Any:
  """A free-typed field's value: an int, else a float, else the string."""
  for cast in (int, float):
    try:
      return cast(item)
    except ValueError:
      pass
  return item


def parse_values(text: str, field: str, like) -> list:
  """The values of one sweep key. ``field``: the dotted name for errors (e.g.
  'sweep.grid.seed'); ``like``: the field's current value, or its type (``object`` or
  ``type(None)`` cast automatically: int, else float, else str). See the module doc."""
  text = str(text).strip()
  kind = like if isinstance(like, type) else type(like)
  if issubclass(kind, (tuple, list)):
    raise SweepError(field, 'tuple fields cannot be swept (sweep the scalar field instead, '
                     'e.g. seed rather than seeds)', text)
  if issubclass(kind, (ml_collections.ConfigDict, dict)):
    raise SweepError(field, 'is a group of fields; sweep its leaves, e.g. '
                     f'{field}.<name>', text)
  if not text:
    raise SweepError(field, 'needs at least one value', text)
  items = [s.strip() for s in text.split(',')]
  if issubclass(kind, str):
    return (_expand_collections(items, field, text) if field.split('.')[-1] == 'task'
            else items)
  out = []
  for item in items:
    if issubclass(kind, bool):
      if item.lower() not in ('true', 'false'):
        raise SweepError(field, 'a bool field takes true or false (a list: true,false)', text)
      out.append(item.lower() == 'true')
    elif issubclass(kind, int):
      out += _range(item, field, text, True) if '..' in item else [_int(item, field, text)]
    elif issubclass(kind, float):
      out += (_range(item, field, text, False) if '..' in item
              else [float(_decimal(item, field, text))])
    elif kind in (object, type(None)):
      if '..' in item and all(isinstance(_auto(p), (int, float)) for p in item.split('..')):
        integer = all(isinstance(_auto(p), int) for p in item.split('..'))
        out += _range(item, field, text, integer)
      else:
        out.append(_auto(item))
    else:
      raise SweepError(field, f'fields of type {kind.__name__} cannot be swept', text)
  if len(out) > MAX_VALUES:
    raise SweepError(field, f'a key may take at most {MAX_VALUES} values', text)
  return out


def _expand_collections(items: list[str], field: str, text: str) -> list[str]:
  """Task values: ``collection:dk=D`` stands for every built-in group of largest irrep
  degree D (``tasks.collection``)."""
  from ordered_jax import tasks  # pylint: disable=g-import-not-at-top  (numpy only)
  out = []
  for item in items:
    if item.startswith('collection:'):
      try:
        out += tasks.collection(item)
      except ValueError as e:
        raise SweepError(field, str(e).split(': ', 1)[1].rsplit('; got ', 1)[0], text) from None
    else:
      out.append(item)
  return out


# -- points ------------------------------------------------------------------------------

def _parent(config, key: str):
  """The ConfigDict holding dotted ``key`` and the key's last name; KeyError if none."""
  *path, name = key.split('.')
  node = config
  for p in path:
    if p not in node or not _is_group(node[p]):
      raise KeyError(key)
    node = node[p]
  if name not in node:
    raise KeyError(key)
  return node, name


def _swept(config, group: str) -> list[tuple[str, str, list]]:
  """(key, text, values) of the non-empty keys of ``config.sweep.<group>``, in config order."""
  spec = config.sweep.get(group) if 'sweep' in config else None
  if spec is None:
    return []
  order = {k: i for i, (k, _) in enumerate(_leaves(config))}
  found = []
  for key, text in _leaves(spec, skip=()):
    if not str(text).strip():
      continue
    field = f'sweep.{group}.{key}'
    if key.split('.')[0] in SWEEP_SKIP:
      raise SweepError(field, 'the sweep settings cannot be swept', text)
    try:
      kind = _kind(config, key)
    except KeyError:
      raise SweepError(field, 'not a field of the config (grid and zip mirror its fields)',
                       text) from None
    found.append((key, str(text), parse_values(text, field, kind)))
  task = str(config.get('task', '')).strip()
  if (group == 'grid' and task.startswith('collection:')
      and not any(key == 'task' for key, _, _ in found)):  # config.task itself: a sweep
    found.append(('task', task, parse_values(task, 'task', str)))
  return sorted(found, key=lambda f: order[f[0]])


def points(config) -> list[dict[str, Any]]:
  """The sweep's runs as override dicts ``{dotted key: value}`` (keys in config order):
  zip rows (outermost) x the grid's cartesian product (last key fastest); ``[{}]`` when
  nothing is swept."""
  grid, zipped = _swept(config, 'grid'), _swept(config, 'zip')
  in_grid = {k for k, _, _ in grid}
  for key, text, _ in zipped:
    if key in in_grid:
      raise SweepError(f'sweep.zip.{key}', 'a field is swept by grid or by zip, not both', text)
  if zipped:
    k0, _, v0 = zipped[0]
    for key, text, values in zipped[1:]:
      if len(values) != len(v0):
        raise SweepError(f'sweep.zip.{key}', f'zip keys covary and need equal lengths: {key} '
                         f'has {len(values)} values, {k0} has {len(v0)}', text)
  total = math.prod(len(v) for _, _, v in grid) * (len(zipped[0][2]) if zipped else 1)
  if total > MAX_POINTS:
    sizes = ' x '.join(f'{len(v)} {k}' for _, k, v in
                       ([(None, 'zip rows', zipped[0][2])] if zipped else []) +
                       [(None, k, v) for k, _, v in grid])
    raise SweepError('sweep.grid' if grid else 'sweep.zip',
                     f'{total} points ({sizes}) exceed the {MAX_POINTS} one sweep may hold; '
                     'split it into several sweeps (same --workdir keeps one table)')
  for key, text, values in grid:
    twice = _repeated([(v,) for v in values])
    if twice:
      raise SweepError(f'sweep.grid.{key}', f'lists {twice[0]!r} twice (each run once: a '
                       'finished run is run again with --rerun)', text)
  order = {k: i for i, (k, _) in enumerate(_leaves(config))}
  rows = [dict(zip([k for k, _, _ in zipped], vals))
          for vals in zip(*[v for _, _, v in zipped])] if zipped else [{}]
  twice = _repeated([tuple(r.values()) for r in rows])
  if twice:
    k0, text, _ = zipped[0]
    row = twice if len(zipped) > 1 else twice[0]
    raise SweepError(f'sweep.zip.{k0}', f'the row {row!r} ({", ".join(k for k, _, _ in zipped)})'
                     ' is listed twice (each run once)', text)
  out = []
  for row in rows:
    for vals in itertools.product(*[v for _, _, v in grid]):
      p = {**row, **dict(zip([k for k, _, _ in grid], vals))}
      out.append({k: p[k] for k in sorted(p, key=order.__getitem__)})
  return out


def apply(config, overrides: dict) -> ml_collections.ConfigDict:
  """A locked deep copy of ``config`` with the dotted ``overrides`` set and the sweep spec
  (grid, zip, rerun) cleared to '': one run's config. Field references survive the copy
  (``probes.every`` still follows ``probe_every``); ``config`` is not touched."""
  c = copy.deepcopy(config)
  c.unlock()
  for key, value in overrides.items():
    field = f'sweep point {key}'
    try:
      parent, name = _parent(c, key)
    except KeyError:
      raise SweepError(field, 'not a field of the config', value) from None
    try:
      parent[name] = value
    except (TypeError, ValueError) as e:
      raise SweepError(field, f'cannot set it: {e}', value) from None
  if 'sweep' in c:
    for group in ('grid', 'zip'):
      spec = c.sweep.get(group)
      if _is_group(spec):
        for key, v in _leaves(spec, skip=()):
          if isinstance(v, str):
            node, name = _parent(spec, key)
            node[name] = ''
    if isinstance(c.sweep.get('rerun'), str):
      c.sweep.rerun = ''
  c.lock()
  return c


def _repeated(rows: list[tuple]) -> tuple | None:
  """The first row listed twice (values compared as run ids compare them), or None."""
  seen = set()
  for row in rows:
    key = json.dumps(_canonical(list(row)))
    if key in seen:
      return row
    seen.add(key)
  return None


# -- run ids -----------------------------------------------------------------------------

def _canonical(v):
  if _is_group(v):
    v = v.to_dict()
  if isinstance(v, dict):
    return {str(k): _canonical(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_canonical(x) for x in v]
  if v is None or isinstance(v, (bool, int, float, str)):
    return v
  if hasattr(v, 'item'):  # numpy scalars
    return _canonical(v.item())
  raise TypeError(f'run_id: cannot encode a {type(v).__name__} value ({v!r:.60})')


def run_id(resolved: dict) -> str:
  """A stable 12-hex-digit id of a resolved run config: sha256 of its canonical JSON (keys
  sorted, no spaces, tuples as lists, floats by ``repr``). Types count: 1 and 1.0 give
  different ids (typed config fields keep each field's type, so a run's id is stable)."""
  text = json.dumps(_canonical(resolved), sort_keys=True, separators=(',', ':'),
                    ensure_ascii=True, allow_nan=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- rerun filters -----------------------------------------------------------------------

def parse_rerun(text: str, config) -> list[dict[str, list]]:
  """``--rerun`` text as filters: ``|`` separates filters (any may match), ``;`` the
  ``key=values`` parts of one filter (all must match); values use the sweep syntax and
  the field's type. '' -> []."""
  filters = []
  if str(text) and not str(text).strip():
    raise SweepError('--rerun', "takes key=values parts, e.g. seed=1,2", text)
  for alt in str(text).split('|'):
    if not alt.strip():
      if str(text).strip():
        raise SweepError('--rerun', "an empty filter between '|'", text)
      continue
    f = {}
    for part in alt.split(';'):
      if not part.strip():
        continue
      key, eq, values = part.partition('=')
      key = key.strip()
      if not eq or not key:
        raise SweepError('--rerun', "takes key=values parts joined by ';' (and filters "
                         "joined by '|'), e.g. seed=1,2;weight_decay=0.1", text)
      if key.split('.')[0] in SWEEP_SKIP:
        raise SweepError(f'--rerun {key}', 'not a field a run varies in', text)
      try:
        kind = _kind(config, key)
      except KeyError:
        raise SweepError(f'--rerun {key}', 'not a field of the config', text) from None
      if key in f:
        raise SweepError(f'--rerun {key}', 'a key appears twice in one filter', text)
      f[key] = parse_values(values, f'--rerun {key}', kind)
    if not f:
      raise SweepError('--rerun', "a filter without a key=values part, e.g. seed=1,2", text)
    filters.append(f)
  return filters


def matches(point: dict, filters: list[dict[str, list]]) -> bool:
  """Whether ``point`` ({key: value}) matches any filter: every key of that filter is in
  the point with one of the listed values (a key the point lacks does not match)."""
  return any(all(k in point and point[k] in vals for k, vals in f.items()) for f in filters)


def describe(pts: list[dict]) -> str:
  """One line: the number of points and each varied key's distinct values."""
  if pts == [{}] or not pts:
    return f'{len(pts)} point(s), nothing swept'
  keys = list(dict.fromkeys(k for p in pts for k in p))
  parts = []
  for k in keys:
    vals = list(dict.fromkeys(repr(p.get(k)) for p in pts))
    shown = ', '.join(vals[:5]) + (', ...' if len(vals) > 5 else '')
    parts.append(f'{k} x{len(vals)} [{shown}]')
  return f'{len(pts)} points varying ' + '; '.join(parts)
