"""``varbinding:PATH``: the variable-binding task of the Power et al. re-implementation's fork
(ndtippens/grok-tests, ``VarBindingDataset``), read from a file in its format.

Each line of the file is one example, comma-separated assignments ``var=value`` or
``var=var``; the model reads every token but the last and predicts the last value (the
fork's ``fetch_example``). In the fork's file (``data/dataset/varbinding_10000.csv``: 10,000
lines of 18 assignments over the variables a-e and the digits 0-9) the last assignment
always names a variable's current value, so the label is what executing the program gives:
that is how it is defined here, and a line whose stated answer differs from its execution
is refused, naming the line.

Tokens: the variables (sorted), then the literal values (sorted); the vocabulary, and the
classes, are both (the framework's one vocabulary; the labels are literals). The ``=`` and
``,`` carry no information and are dropped: an example of L assignments is 2(L - 1) + 1
operands ``[v_1, r_1, ..., v_{L-1}, r_{L-1}, q]``. Examples are addressed by their line
number (``Task`` codes), so the orderings, ``train_fraction`` (the fork's ``frac_train``
0.5) and ``test_size=0`` work as for any task; every line must have the same length.
"""

import dataclasses
import functools
import os
import re

import numpy as np

from ordered_jax import tasks

MAX_LINES = 1_000_000    # examples (codes) in one file
MAX_LENGTH = 512         # assignments per line
MAX_BYTES = 32 << 20     # file size, checked before reading: parsing takes ~40x in memory
_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
_LITERAL = re.compile(r'[0-9]+')


@dataclasses.dataclass(frozen=True)
class VarBindingTask(tasks.Task):
  """A Task whose codes are line numbers of a file: ``decode`` looks the tokens up."""

  tokens_NxK: np.ndarray = dataclasses.field(default=None, repr=False, compare=False)
  n_vars: int = 0

  def decode(self, codes_N: np.ndarray) -> np.ndarray:
    codes_N = np.asarray(codes_N).astype(np.int64, copy=False).reshape(-1)
    if codes_N.size and (codes_N.min() < 0 or codes_N.max() >= self.n_codes):
      raise ValueError(f'codes: must lie in [0, {self.n_codes}) for task {self.name!r}')
    return self.tokens_NxK[codes_N].astype(np.int64)

  def encode(self, ops_NxK: np.ndarray) -> np.ndarray:
    ops_NxK = self._operands(ops_NxK)
    try:
      index = self._line_index
      return np.array([index[row.tobytes()] for row in ops_NxK.astype(np.int32)], np.int64)
    except KeyError:
      raise ValueError(f'operands: not a line of task {self.name!r}') from None

  @functools.cached_property
  def _line_index(self) -> dict:
    """Line number of each row of tokens; kept on this task, whose tokens are its file's."""
    return {row.tobytes(): i for i, row in enumerate(self.tokens_NxK)}


def execute(ops_NxK: np.ndarray, n_vars: int) -> np.ndarray:
  """The value of the queried variable after running each program [N] (-1 if unset):
  ops [v_1, r_1, ..., v_m, r_m, q], tokens < n_vars are variables, the rest literals."""
  ops_NxK = np.asarray(ops_NxK, np.int64)
  n = ops_NxK.shape[0]
  rows_N = np.arange(n)
  env_NxV = np.full((n, n_vars), -1, np.int64)
  for j in range(0, ops_NxK.shape[1] - 1, 2):
    var_N, rhs_N = ops_NxK[:, j], ops_NxK[:, j + 1]
    is_var_N = rhs_N < n_vars
    env_NxV[rows_N, var_N] = np.where(is_var_N, env_NxV[rows_N, np.where(is_var_N, rhs_N, 0)],
                                      rhs_N)
  return env_NxV[rows_N, ops_NxK[:, -1]]


def _fail(spec: str, message: str):
  raise ValueError(f'task: varbinding:PATH {message}; got {spec!r}')


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: tuple, spec: str) -> tuple[np.ndarray, int, int]:
  """(tokens [N, K] int32, variables, vocabulary) of the file; ``stamp`` (size, mtime)
  invalidates the cache when the file changes."""
  del stamp
  try:
    with open(path, encoding='utf-8') as f:
      lines = [(i, s.strip()) for i, s in enumerate(f, start=1) if s.strip()]
  except (OSError, UnicodeDecodeError) as e:
    _fail(spec, f'cannot read the file ({e.__class__.__name__}: {e})')
  if not lines:
    _fail(spec, 'needs a file with at least one line')
  if len(lines) > MAX_LINES:
    _fail(spec, f'allows at most {MAX_LINES} lines; the file has {len(lines)}')
  parsed, length = [], None
  for number, line in lines:
    pairs = [a.split('=') for a in line.split(',')]
    if any(len(p) != 2 or not _NAME.fullmatch(p[0].strip()) or not
           (_NAME.fullmatch(p[1].strip()) or _LITERAL.fullmatch(p[1].strip())) for p in pairs):
      _fail(spec, f'line {number}: needs comma-separated var=value or var=var assignments')
    pairs = [(a.strip(), b.strip()) for a, b in pairs]
    if length is None:
      length = len(pairs)
    if len(pairs) != length or not 2 <= length <= MAX_LENGTH:
      _fail(spec, f'line {number}: every line needs the same number (2..{MAX_LENGTH}) of '
            f'assignments; it has {len(pairs)}, line {lines[0][0]} has {length}')
    if not _LITERAL.fullmatch(pairs[-1][1]):
      _fail(spec, f'line {number}: the last assignment must state a value')
    parsed.append(pairs)
  names = sorted({a for pairs in parsed for a, _ in pairs} |
                 {b for pairs in parsed for _, b in pairs if _NAME.fullmatch(b)})
  literals = sorted({b for pairs in parsed for _, b in pairs if _LITERAL.fullmatch(b)},
                    key=lambda s: (len(s), s))
  token = {s: i for i, s in enumerate(names + literals)}
  n_vars = len(names)
  tokens = np.array([[t for a, b in pairs[:-1] for t in (token[a], token[b])]
                     + [token[pairs[-1][0]]] for pairs in parsed], np.int32)
  stated = np.array([token[pairs[-1][1]] for pairs in parsed])
  got = execute(tokens, n_vars)
  bad = np.flatnonzero(got != stated)
  if bad.size:
    number, pairs = lines[bad[0]][0], parsed[bad[0]]
    held = 'is unset' if got[bad[0]] < 0 else f'holds {(names + literals)[got[bad[0]]]}'
    _fail(spec, f'line {number}: the last assignment says {pairs[-1][0]}={pairs[-1][1]} '
          f'but {pairs[-1][0]} {held} ({bad.size} such lines)')
  return tokens, n_vars, len(token)


def _labeller(n_vars: int):
  return lambda ops_NxK: execute(ops_NxK, n_vars)


def _parse(arg, *, name, spec, p, dim):
  del p, dim
  if not arg:
    _fail(spec, 'needs the path of a file in the fork\'s format')
  path = os.path.abspath(os.path.expanduser(arg))
  try:
    st = os.stat(path)
  except OSError as e:
    _fail(spec, f'cannot read the file ({e.__class__.__name__}: {e.strerror})')
  if st.st_size > MAX_BYTES:
    _fail(spec, f'allows files up to {MAX_BYTES} bytes; the file has {st.st_size}')
  tokens, n_vars, order = _load(path, (st.st_size, st.st_mtime_ns), spec)
  n, k = tokens.shape
  return VarBindingTask(name, order, k, n, 1.0, (order,) * k, (0,) * k, _labeller(n_vars),
                        tokens_NxK=tokens, n_vars=n_vars)


def _validate(config, strategies) -> None:
  del strategies
  from ordered_jax import runs  # pylint: disable=g-import-not-at-top  (runs imports tasks)
  runs.check(config.train_size != 'critical', 'train_size',
             "'critical' is Tian's group law; task varbinding has no group order")
  runs.check(config.data_generator != 'reference', 'data_generator',
             "'reference' reproduces the reference's (a, b) pairs; use fast or auto")


tasks.register_kind('varbinding', _parse, 'the fork\'s variable binding, read from a file in '
                    'its format (var=value,...; predict the last value)', validate=_validate)
