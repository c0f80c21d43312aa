"""``python main.py --list``: what can be run (configs, tasks, models, orderings,
optimisers, schedules), as Rich tables. The names come from the library's own tuples and
registries; this module adds a line of description to each (the orderings carry their
own; a test checks none is missing)."""

from __future__ import annotations

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TASKS = {
    'add': '(a + b) mod p, the paper\'s task',
    'sub': '(a - b) mod p',
    'mul': '(a * b) mod p',
    'div': 'a / b mod p (b != 0), Power et al.\'s',
    'add3': '(a + b + c) mod p, three operands',
    'product': 'product:2x3x4 -- the direct product of cyclic groups Z_2 x Z_3 x Z_4',
    'sym': 'sym:N -- composition in the symmetric group S_N (N <= 6)',
    'dihedral': 'dihedral:N -- composition in the dihedral group of order 2N',
    'poly': 'poly:x^2+x*y+y^2 -- a polynomial in x, y mod p (parsed, never evaluated)',
    'dicyclic': 'dicyclic:N -- the dicyclic group of order 4N (dicyclic:2 = quaternions Q_8)',
    'semidirect': 'semidirect:N,M,R -- Z_N x| Z_M, the generator of Z_M acting as x -> R x',
    'alt': 'alt:N -- composition in the alternating group A_N (3 <= N <= 6)',
    'sl2': 'sl2:Q -- SL(2, Q), 2 x 2 matrices of determinant 1 mod a prime Q',
    'gl2': 'gl2:Q -- GL(2, Q), invertible 2 x 2 matrices mod a prime Q',
    'direct': 'direct:G*H -- the direct product of any of these groups',
    'collection': 'collection:dk=D -- a sweep: every built-in group of largest irrep degree D',
    'teacher': 'teacher:diagonal|power_law|random -- regression y = W* x (+ noise) for model=dln, MSE (docs/tasks.md)',
}
MODELS = {
    'reference': 'the paper\'s GrokkingTransformer (encoder, mean-pooled, then a decoder to the classes)',
    'power': 'Power et al.\'s decoder-only transformer (causal, GELU, final LayerNorm)',
    'mlp': 'Tian\'s two-layer network (sqr, relu, silu or relusqr)',
    'gpt2': 'GPT-2 style decoder (pre-LN, tanh GELU, learned positions, tied or untied head)',
    'gpt2_resv': 'gpt2 with a value residual: ResFormer (mixed with layer 0\'s values) or SVFormer',
    'dln': 'deep linear network (Training-Dynamics): dln.depth bias-free layers, N(0, width^-gamma) init',
}
OPTIMIZERS = {
    'adamw': 'AdamW, decoupled weight decay (the paper\'s)',
    'adam': 'PyTorch Adam, coupled L2 weight decay',
    'sgd': 'PyTorch SGD with heavy-ball momentum, coupled L2',
    'muon': 'optax Muon on 2-D parameters, Adam on the rest',
}
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
      ('Tasks', 'task', pick(tasks.TASK_NAMES, TASKS)),
      ('Models', 'model', pick(models.MODEL_KINDS, MODELS)),
      ('Orderings', 'strategy (a name, a comma list or all)',
       {n: cls.description for n, cls in orderings.REGISTRY.items()}),
      ('Optimizers', 'optimizer', pick(optim.OPTIMIZERS, OPTIMIZERS)),
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
  console = Console(width=None if sys.stdout.isatty() else 150)  # logs and pipes: wide
  if what == 'all':
    for t in tables():
      console.print(t)
    console.print('Probes: python main.py --probes_list; one probe\'s keys: '
                  '--probes_describe=NAME. Analysis tools: python -m analysis --help.')
    return
  from probes import catalog  # pylint: disable=g-import-not-at-top
  console.print(catalog.list_table() if what == 'probes' else catalog.describe_table(name))
