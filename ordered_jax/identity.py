"""A run's identity: the config values that make it this run, stable as the code grows.

A run is identified by the values of its resolved config (``experiment.run_config``, less
the output-only fields) read against a frozen schema, ``identity_v1.json``: the run config
of ``configs/default.py`` when schema 1 was frozen. ``identity(cfg)`` is

* every field of the schema, with ``cfg``'s value, or, where ``cfg`` lacks the field (a
  run saved before it existed), the schema's value (``ABSENT`` names the one field whose
  behaviour before it existed was not its default);
* plus every field the schema lacks (added since) whose value differs from its default in
  ``configs/default.py``, leaf by leaf inside groups.

So adding a field with a default (the behaviour of the code before it) changes no id and
no ``--resume`` check: nothing to register. The sweep's run id is a hash of this dict
(``sweep.run_id``); for a config that uses no field added since schema 1 it is the hash
of its full run config, i.e. the ids sweeps wrote before identities were sparse.

Values compare by their canonical JSON (types count: 1 and 1.0 differ; tuples equal
lists). Changing the schema itself (a default's *meaning*) needs a new schema file, and
renames runs: don't.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'identity_v1.json')
# Fields of schema 1 whose behaviour before they existed was not their schema value:
# probe curvature ran at every probe epoch (0) until every_n_steps was added (1000).
ABSENT = {('probes', 'curvature', 'every_n_steps'): 0}
_MISSING = object()


@functools.cache
def schema() -> dict:
  """Schema 1: the frozen reference values (a nested dict)."""
  with open(SCHEMA_FILE) as f:
    return json.load(f)['fields']


def _json(v) -> Any:
  return json.loads(json.dumps(v, default=list))


@functools.cache
def _code_defaults_cached() -> str:
  from configs import default  # pylint: disable=g-import-not-at-top  (defaults live there)
  d = default.get_config().to_dict()
  d.pop('sweep', None)
  return json.dumps(_json(d))


def code_defaults() -> dict:
  """The current defaults (``configs/default.py``) as JSON values."""
  return json.loads(_code_defaults_cached())


def _same(a, b) -> bool:
  dump = lambda v: json.dumps(_json(v), sort_keys=True)
  return dump(a) == dump(b)


def _new_fields(value, default):
  """What of a field the schema lacks is not its default (_MISSING: nothing)."""
  if isinstance(value, dict) and isinstance(default, dict):
    out = {}
    for k, v in value.items():
      d = _new_fields(v, default.get(k, _MISSING))
      if d is not _MISSING:
        out[k] = d
    return out or _MISSING
  return _MISSING if default is not _MISSING and _same(value, default) else value


def _merge(base: dict, cfg: dict, defaults: dict, path: tuple) -> dict:
  out = {}
  for k, b in base.items():
    here = path + (k,)
    if k not in cfg:
      out[k] = ABSENT.get(here, b)
    elif isinstance(b, dict) and isinstance(cfg[k], dict):
      out[k] = _merge(b, cfg[k], defaults.get(k, {}) if isinstance(defaults, dict) else {},
                      here)
    else:
      out[k] = cfg[k]
  for k, v in cfg.items():
    if k not in base:
      d = _new_fields(v, defaults.get(k, _MISSING) if isinstance(defaults, dict) else _MISSING)
      if d is not _MISSING:
        out[k] = d
  return out


def identity(cfg: dict, defaults: dict | None = None) -> dict:
  """The identity of a run config (output-only fields already removed): see the module
  docstring. ``defaults``: the current defaults (``code_defaults()``)."""
  return _merge(schema(), _json(cfg), code_defaults() if defaults is None else defaults, ())


def first_difference(a: dict, b: dict) -> str | None:
  """The first top-level field (sorted) whose identities differ, or None."""
  ia, ib = identity(a), identity(b)
  for k in sorted(set(ia) | set(ib)):
    if (k in ia) != (k in ib) or not _same(ia[k], ib[k]):
      return k
  return None


def value(cfg: dict, field: str):
  """``cfg``'s value of a top-level field as its identity reads it (absent: the default)."""
  return identity(cfg).get(field, code_defaults().get(field))
