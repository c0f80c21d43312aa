"""Config key paths: every dotted field of a config, and the one-line message for an
unknown ``--config.<path>`` (``config.probes.nmes: unknown key; did you mean
probes.names?``). No JAX import: ``main.py`` uses it while parsing flags."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys


def paths(config, prefix: str = '') -> list[str]:
  """Every dotted key of a ConfigDict (or dict), groups and leaves, depth first."""
  out = []
  for k in config.keys():
    path = f'{prefix}{k}'
    out.append(path)
    v = config[k]
    if hasattr(v, 'keys') and callable(v.keys):
      out += paths(v, path + '.')
  return out


def suggest(path: str, known: list[str]) -> str | None:
  """The known path closest to ``path``: a sibling with a similar name, else a similar
  whole path (not one of its ancestors), else a key with a similar name at another depth;
  None if nothing is close."""
  parent, _, leaf = path.rpartition('.')
  siblings = {k.rpartition('.')[2]: k for k in known if k.rpartition('.')[0] == parent}
  close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.7)
  if close:
    return siblings[close[0]]
  others = [k for k in known if not path.startswith(k + '.')]
  close = difflib.get_close_matches(path, others, n=1, cutoff=0.8)
  if close:
    return close[0]
  leaves = {}
  for k in known:
    leaves.setdefault(k.rpartition('.')[2], k)
  close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
  return leaves[close[0]] if close else None


def unknown_key_message(argv: list[str], missing: str, config) -> str:
  """One line for ``--config.<...>.<missing>...`` that the config lacks: the full path of
  the unknown key and the nearest known one."""
  arg = next((a for a in argv
              if re.match(rf'--config\.(\w+\.)*{re.escape(missing)}(\W|$)', a)), None)
  if arg is None:
    path = missing
  else:
    parts = arg.split('=', 1)[0][len('--config.'):].split('.')
    path = '.'.join(parts[:parts.index(missing) + 1])
  known = paths(config) if config is not None else []
  near = suggest(path, known)
  hint = f'did you mean {near}?' if near else 'see configs/default.py for the fields'
  return f'config.{path}: unknown key; {hint}'


def missing_key(error: BaseException) -> str:
  """The key an ml_collections lookup error names (its message may carry a suggestion
  on further lines, and be wrapped in an AttributeError)."""
  inner = error.args[0] if error.args and isinstance(error.args[0], BaseException) else error
  text = str(inner.args[0]) if inner.args else str(inner)
  first = text.splitlines()[0] if text else ''
  m = re.search(r"'([^']+)'", first)
  return m.group(1) if m else first.strip('"\' ')


def load_config_file(path: str):
  """``get_config()`` of a config file (None if that fails): for suggestions only."""
  try:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
      sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location('_config_for_keys', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None
