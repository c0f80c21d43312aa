"""``python main.py --list``: what can be run (configs, tasks, models, orderings,
optimisers, schedules), as Rich tables. The names come from the library's own tuples and
registries; this module adds a line of description to each (the orderings, task kinds,
models and optimisers carry their own; a test checks none is missing)."""

from __future__ import annotations

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEDULES = {
    'cosine': 'cosine from lr to min_lr over epochs, stepped per epoch (the paper\'s)',
    'cosine_step': 'the same, stepped per optimiser step',
    'constant': 'lr throughout',
    'step': 'lr x gamma^floor(epoch / every)',
    'exponential': 'lr x gamma^epoch',
}


def configs() -> dict[str, str]:
  """{configs/<name>.py: first line of its docstring}."""
  out = {}
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
    if os.path.basename(path).startswith('_'):
      continue
    with open(path) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ''
    out[os.path.relpath(path, ROOT)] = doc.strip().splitlines()[0] if doc.strip() else ''
  return out


def sections() -> list[tuple[str, str, dict[str, str]]]:
  """(title, the config field, {name: description}) of every table ``--list`` prints."""
  from ordered_jax import models, optim, orderings, tasks  # pylint: disable=g-import-not-at-top
  pick = lambda names, text: {n: text.get(n, '') for n in names}  # noqa: E731
  return [
      ('Configs', '--config', configs()),
      ('Tasks', 'task', {n: k.description for n, k in tasks.KINDS.items()}),
      ('Models', 'model', {n: k.description for n, k in models.REGISTRY.items()}),
      ('Orderings', 'strategy (a name, a comma list or all)',
       {n: cls.description for n, cls in orderings.REGISTRY.items()}),
      ('Optimizers', 'optimizer', {n: k.description for n, k in optim.REGISTRY.items()}),
      ('Schedules', 'schedule', pick(optim.SCHEDULES, SCHEDULES)),
  ]


def tables():
  """The Rich tables of ``sections()``."""
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  out = []
  for title, field, rows in sections():
    t = Table(title=f'{title} ({field})', title_justify='left')
    t.add_column('name', no_wrap=True)
    t.add_column('what', overflow='fold')
    for name, text in rows.items():
      t.add_row(name, text)
    out.append(t)
  return out


def show(what: str, name: str = '') -> None:
  """Print ``--list`` (what='all'), ``--probes_list`` ('probes') or ``--probes_describe``
  ('probe', name); ``ValueError`` (one line) for an unknown probe."""
  import sys  # pylint: disable=g-import-not-at-top
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  # markup off: catalog text such as "[p, d]" is shown as written, not read as Rich tags
  console = Console(width=None if sys.stdout.isatty() else 150, markup=False)
  if what == 'all':
    for t in tables():
      console.print(t)
    console.print('Probes: python main.py --probes_list; one probe\'s keys: '
                  '--probes_describe=NAME. Analysis tools: python -m analysis --help.')
    return
  from probes import catalog  # pylint: disable=g-import-not-at-top
  if what == 'probes':
    console.print(catalog.list_table())
    return
  console.print(catalog.describe_table(name))
  options = catalog.options_table(name)
  if options is not None:
    console.print(options)
