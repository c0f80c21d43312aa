"""The tasks of the grokking literature: train/test example tables, as pure numpy.

``make_mod_add`` is the original (a + b) mod p task with two generators:

* ``'reference'`` reproduces the PyTorch reference's pairs exactly (stdlib ``random``
  seeded with ``seed``; train = a Python set filled in draw order and listed in set
  iteration order; test = the continued stream, train pairs skipped, duplicates kept).
  It is vectorised by replaying CPython's Mersenne Twister words in numpy.
* ``'fast'``: numpy ``default_rng(seed)``; train and test are disjoint, neither has a
  duplicate pair, and the train rows come in random order (the fast "fixed-random").

Both return int32 tables with columns (a, b, (a + b) % p).

``parse_task`` / ``make_task`` generalise it to a ``Task``: a binary (or ternary) operation
on a finite set of ``order`` elements; each example is an operand tuple and its label. The
specs (``TASK_NAMES``; p is the config's modulus, used only by the Z_p tasks):

* ``add``, ``sub``, ``mul``: (a + b), (a - b), (a * b) mod p over all p*p pairs.
* ``div``: a * b^(p-2) mod p (a / b by Fermat), b in 1..p-1; p must be prime.
* ``add3``: (a + b + c) mod p, three operands.
* ``product:AxBxC``: the abelian group Z_A x Z_B x Z_C (any number of factors >= 2, order
  <= ``MAX_ORDER``), elements flattened in mixed radix (first factor most significant).
* ``sym:N`` (1 <= N <= 6): the symmetric group S_N, permutations of range(N) in
  lexicographic (``itertools.permutations``) order; label = sigma o tau, sigma[tau[i]].
* ``dihedral:N`` (N >= 3, 2N <= ``MAX_ORDER``): D_N, element k + N*f = r^k s^f.
* ``poly:<expr>``: a polynomial in x, y over Z_p, e.g. ``poly:x^2+x*y+y^2``; parsed with
  ``ast`` against a whitelist (never evaluated as Python).

Sampling never enumerates the tuple space (p = 9973 with three operands has ~1e12 tuples):
each tuple is an int64 code in [0, n_codes), decoded in mixed radix, and ``'fast'`` draws
codes without replacement. ``'reference'`` replays the reference's (a, b) draws for the
2-operand Z_p tasks whose every pair is valid (add, sub, mul, poly). ``critical_train_size``
sizes the training set at Tian's critical ratio c (ln M / M) 2.7482 of all tuples.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import math
import random
import re
from typing import Callable, Iterator

import numpy as np

from ordered_jax import extensions, groups, teacher

GENERATORS = ('reference', 'fast')


def _check(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ValueError(f'{field} {message}')


def _validate(p: int, train_size: int, test_size: int, seed: int, generator: str) -> None:
  _check(generator in GENERATORS, 'generator',
         f'must be one of {", ".join(GENERATORS)}, got {generator!r}')
  _check(isinstance(p, (int, np.integer)) and 1 <= p < 2**31, 'p',
         f'must be an int in [1, 2**31), got {p!r}')
  _check(isinstance(seed, (int, np.integer)) and seed >= 0, 'seed',
         f'must be an int >= 0, got {seed!r}')
  for field, value in (('train_size', train_size), ('test_size', test_size)):
    _check(isinstance(value, (int, np.integer)) and value >= 0, field,
           f'must be an int >= 0, got {value!r}')
  pairs = p * p
  _check(train_size <= pairs, 'train_size', f'must be <= p*p = {pairs}, got {train_size}')
  if generator == 'fast':
    _check(train_size + test_size <= pairs, 'train_size + test_size',
           f'must be <= p*p = {pairs}, got {train_size + test_size}')
  else:
    _check(test_size == 0 or train_size < pairs, 'test_size',
           f'must be 0 when train_size == p*p = {pairs} (no pair left), got {test_size}')


def _with_sum(a_N: np.ndarray, b_N: np.ndarray, p: int) -> np.ndarray:
  """Stacks (a, b, (a + b) % p) into an int32 [N, 3] table."""
  a_N = a_N.astype(np.int64)
  b_N = b_N.astype(np.int64)
  return np.stack([a_N, b_N, (a_N + b_N) % p], axis=1).astype(np.int32).reshape(-1, 3)


# -- reference generator -------------------------------------------------------------------


def python_mt19937(seed: int) -> np.random.MT19937:
  """A numpy MT19937 in the exact state of ``random.Random(seed)``.

  Its ``random_raw`` words are the words behind CPython's ``getrandbits(32)``, so the
  stdlib stream can be replayed in bulk.
  """
  state = random.Random(seed).getstate()[1]
  bitgen = np.random.MT19937()
  bitgen.state = {'bit_generator': 'MT19937',
                  'state': {'key': np.array(state[:624], dtype=np.uint32), 'pos': state[624]}}
  return bitgen


def _pair_codes(seed: int, p: int, chunk_words: int) -> Iterator[np.ndarray]:
  """Yields chunks of a * p + b for successive (randint(0, p-1), randint(0, p-1)) draws.

  CPython's ``randint(0, p-1)`` is ``_randbelow(p)``: with k = p.bit_length() it takes
  r = getrandbits(k) = word >> (32 - k) and redraws while r >= p. Accepted values pair up
  in stream order as a0, b0, a1, b1, ...
  """
  bitgen = python_mt19937(seed)
  shift = 32 - p.bit_length()
  carry = np.empty(0, np.int64)
  while True:
    r = (bitgen.random_raw(chunk_words) >> np.uint64(shift)).astype(np.int64)
    values = np.concatenate([carry, r[r < p]])
    even = values.size - values.size % 2
    carry = values[even:]
    yield values[0:even:2] * p + values[1:even:2]
    chunk_words = max(chunk_words, 1 << 16)


def _expected_draws(n_unique: int, pairs: int) -> float:
  """Expected draws with replacement from ``pairs`` items to see ``n_unique`` distinct ones."""
  return pairs * math.log((pairs + 0.5) / (pairs - n_unique + 0.5))


def _reference(p: int, train_size: int, test_size: int, seed: int):
  train_codes, test_codes = _reference_codes(p, train_size, test_size, seed)
  return (_with_sum(train_codes // p, train_codes % p, p),
          _with_sum(test_codes // p, test_codes % p, p))


def _reference_codes(p: int, train_size: int, test_size: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The reference's (train, test) pairs as int64 codes a * p + b, in the reference's order."""
  pairs = p * p
  words_per_draw = 2 * (1 << p.bit_length()) / p
  train_draws = _expected_draws(train_size, pairs)
  test_draws = test_size * pairs / max(pairs - train_size, 1)
  # (capped: a test set drawn from few pairs left can need many draws; the loops go on)
  chunk = min(int(words_per_draw * 1.02 * (train_draws + test_draws)) + 1024, 1 << 23)
  stream = _pair_codes(seed, p, chunk)

  # Train: the draw index at which the set reaches train_size elements.
  codes = next(stream)
  while True:
    uniq, first = np.unique(codes, return_index=True)
    if uniq.size >= train_size:
      break
    codes = np.concatenate([codes, next(stream)])
  first_sorted = np.sort(first)[:train_size]
  n_train_draws = int(first_sorted[-1]) + 1 if train_size else 0
  train_codes = codes[first_sorted]  # unique pairs in first-occurrence (insertion) order

  # The set's iteration order, exactly as CPython gives it for this insertion order.
  train_set = set(zip((train_codes // p).tolist(), (train_codes % p).tolist()))
  train_ab = np.array(list(train_set), dtype=np.int64).reshape(-1, 2)

  # Test: the continued stream, train pairs skipped (duplicates among test kept).
  train_sorted = np.sort(train_codes)
  rest = codes[n_train_draws:]
  kept, n_kept = [], 0
  while True:
    pos = np.minimum(np.searchsorted(train_sorted, rest), max(train_sorted.size - 1, 0))
    fresh = rest if train_sorted.size == 0 else rest[train_sorted[pos] != rest]
    kept.append(fresh)
    n_kept += fresh.size
    if n_kept >= test_size:
      break
    rest = next(stream)
  test_codes = np.concatenate(kept)[:test_size]
  return train_ab[:, 0] * p + train_ab[:, 1], test_codes


# -- fast generator -------------------------------------------------------------------------


def _fast(p: int, train_size: int, test_size: int, seed: int):
  rng = np.random.default_rng(seed)
  codes = rng.choice(p * p, size=train_size + test_size, replace=False, shuffle=True)
  train, test = codes[:train_size], codes[train_size:]
  return _with_sum(train // p, train % p, p), _with_sum(test // p, test % p, p)


def make_mod_add(p: int, train_size: int, test_size: int, seed: int,
                 generator: str = 'reference') -> tuple[np.ndarray, np.ndarray]:
  """Returns (train_Nx3, test_Mx3) int32 arrays with columns (a, b, (a+b) % p).

  ``generator='reference'`` gives the reference's exact pairs and train order;
  ``'fast'`` gives disjoint, duplicate-free splits from ``np.random.default_rng(seed)``.
  """
  _validate(p, train_size, test_size, seed, generator)
  p, train_size, test_size, seed = int(p), int(train_size), int(test_size), int(seed)
  if generator == 'reference':
    return _reference(p, train_size, test_size, seed)
  return _fast(p, train_size, test_size, seed)


# -- tasks: operand tuples, codes and labels -------------------------------------------------

TASK_NAMES = ('add', 'sub', 'mul', 'div', 'add3', 'product', 'sym', 'dihedral', 'poly',
              'dicyclic', 'semidirect', 'alt', 'sl2', 'gl2', 'direct', 'collection', 'teacher')
TABLE_GROUPS = ('dicyclic', 'semidirect', 'alt', 'sl2', 'gl2', 'direct')  # ordered_jax.groups
REFERENCE_TASKS = ('add', 'sub', 'mul', 'poly')  # 2-operand Z_p tasks: every pair is valid
TASK_GENERATORS = ('fast', 'reference', 'auto')
AUTO = 'auto'  # the reference's draws where they exist (REFERENCE_TASKS, a test set), else fast
MAX_ORDER = 2**15         # product:... and dihedral:N; vocabulary = classes = order
MAX_SYM = 6               # sym:6 has 720 elements: a 720 x 720 Cayley table
MAX_COMPLEMENT = 2**26    # test_size = 0 ('every tuple not in train') enumerates all codes
POLY_MAX_EXPONENT = 64
POLY_MAX_CHARS = 1000
POLY_MAX_DEPTH = 200
# Largest irreducible-representation degree of S_N (hook-length formula; tests recompute it).
_SYM_MAX_IRREP = {1: 1, 2: 1, 3: 2, 4: 3, 5: 6, 6: 16}

_ALLOWED = (f"must be one of add, sub, mul, div (p prime), add3, product:AxB[xC..] (factors "
            f">= 2, order <= {MAX_ORDER}), sym:N (1 <= N <= {MAX_SYM}), dihedral:N (N >= 3, "
            f"2N <= {MAX_ORDER}), poly:<expr in x, y> (e.g. poly:x^2+x*y+y^2), the groups "
            f"dicyclic:N, semidirect:N,M,R, alt:N, sl2:Q, gl2:Q, direct:G*H (docs/tasks.md) "
            f", collection:dk=D (a sweep over the built-in groups of largest irrep degree D) "
            f"and teacher:diagonal, teacher:power_law, teacher:random (linear regression, docs/tasks.md)")
_POLY_ALLOWED = (f'poly:<expr> is a polynomial over Z_p in x and y with +, -, *, ^ (exponent '
                 f'an integer constant in [0, {POLY_MAX_EXPONENT}]), parentheses and '
                 f'non-negative integer constants')


@dataclasses.dataclass(frozen=True)
class Task:
  """A finite operation: ``n_ops`` operands, each in [0, ``order``), and a label in
  [0, ``order``). Examples are addressed by int64 codes in [0, ``n_codes``): operand k is
  ``offsets[k]`` plus digit k of the code in mixed radix ``radices`` (first most
  significant), so a space of ~1e12 tuples is sampled without being enumerated.

  ``c`` is Tian's constant in the critical ratio c (ln M / M) 2.7482: 1 for abelian groups
  (and, by convention, for the non-group Z_p tasks mul, div, poly), d_k / 2 for the
  non-abelian groups (d_k the largest irreducible-representation degree).
  """
  name: str        # the spec, e.g. 'product:2x3x4' (surrounding whitespace removed)
  order: int       # set size M = vocabulary of each operand = number of classes
  n_ops: int       # operands per example
  n_codes: int     # valid operand tuples = prod(radices)
  c: float         # Tian's critical-ratio constant
  radices: tuple[int, ...]   # operand k takes radices[k] values ...
  offsets: tuple[int, ...]   # ... starting at offsets[k] (div: b in 1..p-1)
  labeller: Callable[[np.ndarray], np.ndarray] = dataclasses.field(repr=False, compare=False)

  @property
  def kind(self) -> str:
    """The spec's name part: one of ``TASK_NAMES``."""
    return self.name.partition(':')[0]

  def decode(self, codes_N: np.ndarray) -> np.ndarray:
    """int64 codes in [0, n_codes) -> int64 operands [N, n_ops]."""
    codes_N = np.asarray(codes_N).astype(np.int64, copy=False).reshape(-1)
    if codes_N.size and (codes_N.min() < 0 or codes_N.max() >= self.n_codes):
      raise ValueError(f'codes: must lie in [0, {self.n_codes}) for task {self.name!r}')
    ops_NxK = np.empty((codes_N.size, self.n_ops), np.int64)
    rest_N = codes_N
    for k in reversed(range(self.n_ops)):
      rest_N, digit_N = np.divmod(rest_N, self.radices[k])
      ops_NxK[:, k] = digit_N + self.offsets[k]
    return ops_NxK

  def encode(self, ops_NxK: np.ndarray) -> np.ndarray:
    """int64 operands [N, n_ops] -> int64 codes in [0, n_codes); the inverse of ``decode``."""
    digits_NxK = self._operands(ops_NxK) - np.asarray(self.offsets, np.int64)
    if digits_NxK.size and (np.any(digits_NxK < 0) or
                            np.any(digits_NxK >= np.asarray(self.radices, np.int64))):
      raise ValueError(f'operands: out of range for task {self.name!r}')
    codes_N = np.zeros(digits_NxK.shape[0], np.int64)
    for k in range(self.n_ops):
      codes_N = codes_N * self.radices[k] + digits_NxK[:, k]
    return codes_N

  def label(self, ops_NxK: np.ndarray) -> np.ndarray:
    """Operands [N, n_ops] -> int64 labels [N] in [0, order)."""
    return self.labeller(self._operands(ops_NxK))

  def rows(self, codes_N: np.ndarray) -> np.ndarray:
    """int32 [N, n_ops + 1]: the decoded operands, then the label."""
    ops_NxK = self.decode(codes_N)
    return np.concatenate([ops_NxK, self.label(ops_NxK)[:, None]], axis=1).astype(np.int32)

  def _operands(self, ops_NxK: np.ndarray) -> np.ndarray:
    ops_NxK = np.asarray(ops_NxK).astype(np.int64, copy=False)
    if ops_NxK.ndim != 2 or ops_NxK.shape[1] != self.n_ops:
      raise ValueError(f'operands: must have shape [N, {self.n_ops}] for task {self.name!r}, '
                       f'got {ops_NxK.shape}')
    return ops_NxK


def _powmod(base_N: np.ndarray, exponent: int, p: int) -> np.ndarray:
  """base_N ** exponent mod p by repeated squaring: every product is of two residues < 2**31,
  so it fits int64."""
  result_N = np.ones_like(base_N) % p
  base_N = base_N % p
  while exponent:
    if exponent & 1:
      result_N = result_N * base_N % p
    base_N = base_N * base_N % p
    exponent >>= 1
  return result_N


# Labellers: module-level functions bound with functools.partial, so a Task pickles.

def _label_add(p: int, ops_NxK: np.ndarray) -> np.ndarray:
  return ops_NxK.sum(axis=1) % p


def _label_sub(p: int, ops_NxK: np.ndarray) -> np.ndarray:
  return (ops_NxK[:, 0] - ops_NxK[:, 1]) % p


def _label_mul(p: int, ops_NxK: np.ndarray) -> np.ndarray:
  return ops_NxK[:, 0] * ops_NxK[:, 1] % p


def _label_div(p: int, ops_NxK: np.ndarray) -> np.ndarray:
  return ops_NxK[:, 0] * _powmod(ops_NxK[:, 1], p - 2, p) % p


def _label_product(factors: tuple[int, ...], ops_NxK: np.ndarray) -> np.ndarray:
  """Componentwise sum in Z_A x Z_B x ..., elements in mixed radix (first most significant)."""
  a_N, b_N = ops_NxK[:, 0], ops_NxK[:, 1]
  out_N, place = np.zeros_like(a_N), 1
  for f in reversed(factors):
    (a_N, da_N), (b_N, db_N) = np.divmod(a_N, f), np.divmod(b_N, f)
    out_N = out_N + (da_N + db_N) % f * place
    place *= f
  return out_N


def _label_table(table_MxM: np.ndarray, ops_NxK: np.ndarray) -> np.ndarray:
  return table_MxM[ops_NxK[:, 0], ops_NxK[:, 1]]


def _label_dihedral(n: int, ops_NxK: np.ndarray) -> np.ndarray:
  """(r^k1 s^f1)(r^k2 s^f2) = r^(k1 + (-1)^f1 k2 mod n) s^(f1 + f2 mod 2); index k + n f."""
  f1_N, k1_N = np.divmod(ops_NxK[:, 0], n)
  f2_N, k2_N = np.divmod(ops_NxK[:, 1], n)
  return (k1_N + (1 - 2 * f1_N) * k2_N) % n + n * ((f1_N + f2_N) % 2)


def _label_poly(tree: tuple, p: int, ops_NxK: np.ndarray) -> np.ndarray:
  return _eval_poly(tree, p, ops_NxK[:, 0] % p, ops_NxK[:, 1] % p)


def _eval_poly(node: tuple, p: int, x_N: np.ndarray, y_N: np.ndarray) -> np.ndarray:
  """Evaluates a ``_parse_poly`` tree over int64 residues, reducing mod p after each step."""
  op = node[0]
  if op == 'x':
    return x_N
  if op == 'y':
    return y_N
  if op == 'const':
    return np.full(x_N.shape, node[1], np.int64)
  if op == 'neg':
    return -_eval_poly(node[1], p, x_N, y_N) % p
  if op == 'pow':
    return _powmod(_eval_poly(node[1], p, x_N, y_N), node[2], p)
  left_N = _eval_poly(node[1], p, x_N, y_N)
  right_N = _eval_poly(node[2], p, x_N, y_N)
  if op == 'add':
    return (left_N + right_N) % p
  if op == 'sub':
    return (left_N - right_N) % p
  return left_N * right_N % p  # 'mul'


_POLY_BINOPS = {ast.Add: 'add', ast.Sub: 'sub', ast.Mult: 'mul'}
_OP_SYMBOLS = {ast.Div: '/', ast.FloorDiv: '//', ast.Mod: '%', ast.MatMult: '@',
               ast.LShift: '<<', ast.RShift: '>>', ast.BitOr: '|', ast.BitAnd: '&',
               ast.BitXor: '^', ast.Invert: '~', ast.Not: 'not'}


def _parse_poly(text: str, p: int, spec: str) -> tuple:
  """Parses a polynomial in x, y into a tree of tuples, walking Python's ``ast`` against a
  whitelist (it is never compiled or evaluated): ('x',), ('y',), ('const', c mod p),
  ('neg', t), ('add' | 'sub' | 'mul', t, u), ('pow', t, e) with 0 <= e <= 64."""

  def fail(what: str):
    raise ValueError(f'task: {_POLY_ALLOWED}; {what} is not allowed; got {spec!r}')

  def source(node: ast.AST) -> str:
    return repr(ast.get_source_segment(expr, node) or type(node).__name__)

  def walk(node: ast.AST, depth: int) -> tuple:
    if depth > POLY_MAX_DEPTH:
      fail(f'nesting deeper than {POLY_MAX_DEPTH} operations')
    if isinstance(node, ast.BinOp):
      if isinstance(node.op, ast.Pow):
        e = node.right
        if not (isinstance(e, ast.Constant) and type(e.value) is int
                and 0 <= e.value <= POLY_MAX_EXPONENT):
          fail(f'the exponent {source(e)} (only integer constants in '
               f'[0, {POLY_MAX_EXPONENT}])')
        return ('pow', walk(node.left, depth + 1), e.value)
      name = _POLY_BINOPS.get(type(node.op))
      if name is None:
        fail(f"the operator {_OP_SYMBOLS.get(type(node.op), type(node.op).__name__)!r}")
      return (name, walk(node.left, depth + 1), walk(node.right, depth + 1))
    if isinstance(node, ast.UnaryOp):
      if isinstance(node.op, ast.USub):
        return ('neg', walk(node.operand, depth + 1))
      if isinstance(node.op, ast.UAdd):
        return walk(node.operand, depth + 1)
      fail(f"the operator {_OP_SYMBOLS.get(type(node.op), type(node.op).__name__)!r}")
    if isinstance(node, ast.Name):
      if node.id in ('x', 'y'):
        return (node.id,)
      fail(f'the name {node.id!r} (only x and y)')
    if isinstance(node, ast.Constant):
      if type(node.value) is int:  # a literal is never negative; bool is excluded
        return ('const', node.value % p)
      fail(f'the constant {source(node)} (only non-negative integers)')
    fail(f'{source(node)} (Python {type(node).__name__})')

  if not text.strip():
    fail('an empty expression')
  if len(text) > POLY_MAX_CHARS:
    fail(f'an expression longer than {POLY_MAX_CHARS} characters')
  expr = text.replace('^', '**').strip()
  try:
    body = ast.parse(expr, mode='eval').body
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    body = None
  if body is None:
    fail('text that does not parse as an expression')
  return walk(body, 0)


def _sym_table(n: int) -> np.ndarray:
  """The Cayley table of S_n: [i, j] = index of perm_i o perm_j, (perm_i o perm_j)[k] =
  perm_i[perm_j[k]], permutations in lexicographic order (that of itertools.permutations)."""
  perms_MxN = np.array(list(itertools.permutations(range(n))), np.int64).reshape(-1, n)
  m = perms_MxN.shape[0]
  comp_MxMxN = perms_MxN[np.arange(m)[:, None, None], perms_MxN[None, :, :]]
  place_N = n ** np.arange(n - 1, -1, -1, dtype=np.int64)
  keys_M = perms_MxN @ place_N  # increasing: lexicographic order = base-n order
  return np.searchsorted(keys_M, comp_MxMxN @ place_N).astype(np.int64)


def _is_prime(p: int) -> bool:
  return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def _z_p_task(name: str, kind: str, arg: str, p, spec: str) -> Task:
  """The tasks over Z_p (``arg``: poly's expression); p must be an int >= 2 small enough
  that codes and products of residues fit int64."""
  n_ops = 3 if kind == 'add3' else 2
  limit = 2**21 if n_ops == 3 else 2**31  # p**n_ops codes fit int64; products of residues too
  if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 2 <= p < limit:
    raise ValueError(f'task: {kind} needs the modulus p to be an int in [2, {limit}) '
                     f'(p = {p!r}); got {spec!r}')
  p = int(p)
  if kind == 'div':
    if not _is_prime(p):
      raise ValueError(f'task: div needs a prime modulus p (b^(p-2) is b^-1 only then), '
                       f'p = {p} is not prime; got {spec!r}')
    return Task(name, p, 2, p * (p - 1), 1.0, (p, p - 1), (0, 1),
                functools.partial(_label_div, p))
  if kind == 'poly':
    labeller = functools.partial(_label_poly, _parse_poly(arg, p, spec), p)
  else:
    labeller = functools.partial({'add': _label_add, 'add3': _label_add, 'sub': _label_sub,
                                  'mul': _label_mul}[kind], p)
  return Task(name, p, n_ops, p**n_ops, 1.0, (p,) * n_ops, (0,) * n_ops, labeller)


def _parse_int(text: str, spec: str, what: str) -> int:
  if not re.fullmatch(r'[0-9]{1,9}', text.strip()):
    raise ValueError(f'task: {what}; got {spec!r}')
  return int(text)


def teacher_task(name: str, dim: int) -> Task:
  """A ``teacher:K`` regression (``ordered_jax.teacher``) in the Task shape: order = n_ops =
  ``dim`` (the input and output sizes), an unbounded sample space, no labeller (its rows
  come from ``teacher.make``)."""
  return Task(name, dim, dim, 2**62, 1.0, (), (), None)


# -- the registry of task kinds -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskKind:
  """One kind of task: ``parse(arg, name=, spec=, p=, dim=) -> Task`` builds it from its
  spec's argument (``arg`` after the ':', '' if none; ``name`` the normalised spec; ``p``
  the config's modulus, ``dim`` a teacher's size), raising ``ValueError('task: ...; got
  <spec>')`` on a bad one. ``arg``: whether the spec takes ':ARG' (True), must not (False)
  or may (None). ``section``: the name of the kind's own config section, which ``parse``
  then also gets, as ``options=`` (a plain dict; {} where the config lacks it)."""

  name: str
  parse: Callable[..., Task]
  description: str
  arg: bool | None = True
  validate: Callable | None = None  # validate(config, strategies): its own config section
  section: str | None = None        # config.<section> reaches parse as options=
  zp: bool = False  # two operands and the label in Z_p (vocab p): the Z_p probes apply


KINDS: dict[str, TaskKind] = {}


def register_kind(name: str, parse: Callable[..., Task], description: str,
                  arg: bool | None = True, validate: Callable | None = None,
                  section: str | None = None, zp: bool = False) -> TaskKind:
  """Declare a task kind: ``--config.task=<name>[:ARG]`` then builds it, ``--list`` shows
  its description (docs/extending.md: a new task is one file in
  ``ordered_jax/task_kinds/``). ``validate(config, strategies)`` checks the task's own
  config section and what it cannot combine with, raising ``runs.ConfigError`` (through
  ``runs.check`` / ``number`` / ``one_of``), when the config's task is of this kind;
  ``section``: that section's name, handed to ``parse`` as ``options=``; ``zp``: its
  examples are two operands in Z_p = {0..p-1} and a label in Z_p, so the probes that read
  the Fourier structure over Z_p run on it (as on add, sub, mul, div, poly)."""
  if name in KINDS:
    raise ValueError(f'task kind {name!r} is registered twice')
  if not re.fullmatch(r'[a-z][a-z0-9_]*', name):
    raise ValueError(f'task kind {name!r}: lower-case letters, digits and _ only')
  KINDS[name] = kind = TaskKind(name, parse, description, arg, validate, section, zp)
  return kind


def unregister_kind(name: str) -> None:
  """Remove a task kind (tests)."""
  KINDS.pop(name, None)


def parse_int(text: str, spec: str, what: str) -> int:
  """A whole number of at most nine digits in a task's argument; else ``ValueError``
  ('task: <what>; got <spec>')."""
  return _parse_int(text, spec, what)


def parse_task(spec: str, p: int, dim: int = 8, sections=None) -> Task:
  """The task a spec names (a kind of ``KINDS``, with its argument); ``p`` is the modulus
  of the Z_p tasks (add, sub, mul, div, add3, poly) and is ignored by the others; ``dim``
  is a teacher's size; ``sections`` (the config, or a mapping) holds a kind's own section
  (``TaskKind.section``). Raises ``ValueError`` with one line, ``task: <what is allowed>; got
  '<spec>'``."""
  if not isinstance(spec, str):
    raise ValueError(f'task: {_allowed()}; got {spec!r}')
  kind, colon, arg = spec.strip().partition(':')
  kind, arg = kind.strip(), arg.strip()
  name = f'{kind}:{arg}' if colon else kind
  k = KINDS.get(kind)
  if k is not None and k.arg is True and not colon:
    raise ValueError(f'task: {kind} needs an argument, {kind}:<arg> ({k.description}); got '
                     f'{spec!r}')
  if k is not None and k.arg is False and colon:
    raise ValueError(f'task: {kind} takes no argument ({k.description}); got {spec!r}')
  if k is None:
    raise ValueError(f'task: {_allowed()}; got {spec!r}')
  if k.section is None:
    return k.parse(arg, name=name, spec=spec, p=p, dim=dim)
  section = (sections or {}).get(k.section) or {}
  if not hasattr(section, 'items'):
    raise ValueError(f'task: {kind} reads its options from config.{k.section}, which must be '
                     f'a group of fields; got {section!r}')
  options = section.to_dict() if hasattr(section, 'to_dict') else dict(section)
  return k.parse(arg, name=name, spec=spec, p=p, dim=dim, options=options)


def _allowed() -> str:
  extra = [k for k in KINDS if k not in _BUILT_IN_KINDS]
  return _ALLOWED + (f', or {", ".join(extra)}' if extra else '')


def _z_p_kind(kind: str):
  return lambda arg, *, name, spec, p, dim: _z_p_task(name, kind, arg, p, spec)


def _product(arg, *, name, spec, p, dim):
  what = (f'product:AxB[xC..] needs one or more integer factors >= 2 with order '
          f'(their product) <= {MAX_ORDER}')
  factors = tuple(_parse_int(f, spec, what) for f in arg.split('x'))
  order = math.prod(factors)
  if min(factors) < 2 or order > MAX_ORDER:
    raise ValueError(f'task: {what}; got {spec!r}')
  return Task(name, order, 2, order * order, 1.0, (order, order), (0, 0),
              functools.partial(_label_product, factors))


def _sym(arg, *, name, spec, p, dim):
  what = f'sym:N needs an integer 1 <= N <= {MAX_SYM}'
  n = _parse_int(arg, spec, what)
  if not 1 <= n <= MAX_SYM:
    raise ValueError(f'task: {what}; got {spec!r}')
  order = math.factorial(n)
  c = 1.0 if n <= 2 else _SYM_MAX_IRREP[n] / 2  # S_1, S_2 are abelian
  return Task(name, order, 2, order * order, c, (order, order), (0, 0),
              functools.partial(_label_table, _sym_table(n)))


def _dihedral(arg, *, name, spec, p, dim):
  what = f'dihedral:N needs an integer N >= 3 with order 2N <= {MAX_ORDER}'
  n = _parse_int(arg, spec, what)
  if not 3 <= n <= MAX_ORDER // 2:
    raise ValueError(f'task: {what}; got {spec!r}')
  order = 2 * n  # largest irrep degree 2: c = 2 / 2
  return Task(name, order, 2, order * order, 1.0, (order, order), (0, 0),
              functools.partial(_label_dihedral, n))


def _table_group(arg, *, name, spec, p, dim):
  try:
    table_MxM = groups.table(name)
    abelian = groups.is_abelian(name)
    c = 1.0 if abelian else max(groups.irrep_degrees(name)) / 2
  except groups.GroupError as e:
    raise ValueError(f'task: {e}; got {spec!r}') from None
  order = len(table_MxM)
  return Task(name, order, 2, order * order, c, (order, order), (0, 0),
              functools.partial(_label_table, table_MxM))


def _teacher(arg, *, name, spec, p, dim):
  if arg not in teacher.TEACHERS:
    raise ValueError(f'task: teacher:K needs K one of {", ".join(teacher.TEACHERS)}; '
                     f'got {spec!r}')
  return teacher_task(name, dim)


def _collection(arg, *, name, spec, p, dim):
  raise ValueError(f'task: {spec!r} names a set of groups: it runs as a sweep, one run per '
                   'group (main.py expands it; see docs/tasks.md)')


def _validate_teacher(config, names) -> None:
  """The teacher task's fields (config.teacher) and what it cannot combine with (one line
  each); ``names``: the batch's strategies."""
  from ordered_jax import orderings, runs  # pylint: disable=g-import-not-at-top  (they import tasks)
  for field, kw in (('teacher.dim', dict(integer=True, lo=1, hi=4096)),
                    ('teacher.scale', dict(lo=0)), ('teacher.noise_std', dict(lo=0))):
    runs.number(config, field, **kw)
  if 'alpha' in config.teacher:
    runs.number(config, 'teacher.alpha', lo=0)
  rotate = config.teacher.get('rotate', False)
  runs.check(isinstance(rotate, bool), 'teacher.rotate', f'must be true or false; got {rotate!r}')
  online = config.teacher.get('online', False)
  runs.check(isinstance(online, bool), 'teacher.online', f'must be true or false; got {online!r}')
  if online and (config.task.strip() == 'teacher:random' or rotate):
    runs.check(len({r.data_seed for r in runs.expand(config)}) == 1, 'teacher.online',
               'with a random teacher needs one data_seed for the batch (W* is compiled in)')
  runs.check(config.model == 'dln', 'model', f'task {config.task!r} needs model=dln (float '
             f'inputs); got {config.model!r}')
  reads_tokens = [n for n, o in orderings.REGISTRY.items() if o.reads_tokens]
  bad = [n for n in names if str(n).split(':')[0] in reads_tokens]
  runs.check(not bad, 'strategy', f'task {config.task!r} has no operands or labels to order '
             f'by ({", ".join(reads_tokens)} read them); got {", ".join(bad)}')
  runs.check(config.test_size >= 1, 'test_size', f'must be >= 1 for task {config.task!r} (its '
             'test set is drawn, not the rest of a finite set)')
  runs.check(config.data_generator in ('auto', 'fast'), 'data_generator',
             f"must be auto or fast for task {config.task!r}; got {config.data_generator!r}")
  runs.check(not config.train_fraction and config.train_size != runs.CRITICAL, 'train_size',
             f'must be an integer (no train_fraction, no critical) for task {config.task!r}')


for _kind, _text in (('add', "(a + b) mod p, the paper's task"), ('sub', '(a - b) mod p'),
                     ('mul', '(a * b) mod p'), ('div', "a / b mod p (b != 0), Power et al.'s"),
                     ('add3', '(a + b + c) mod p, three operands')):
  register_kind(_kind, _z_p_kind(_kind), _text, arg=False, zp=_kind != 'add3')
register_kind('product', _product,
              'product:2x3x4 -- the direct product of cyclic groups Z_2 x Z_3 x Z_4')
register_kind('sym', _sym, 'sym:N -- composition in the symmetric group S_N (N <= 6)')
register_kind('dihedral', _dihedral, 'dihedral:N -- composition in the dihedral group of '
              'order 2N')
register_kind('poly', _z_p_kind('poly'), 'poly:x^2+x*y+y^2 -- a polynomial in x, y mod p '
              '(parsed, never evaluated)', zp=True)
for _kind, _text in (
    ('dicyclic', 'dicyclic:N -- the dicyclic group of order 4N (dicyclic:2 = quaternions Q_8)'),
    ('semidirect', 'semidirect:N,M,R -- Z_N x| Z_M, the generator of Z_M acting as x -> R x'),
    ('alt', 'alt:N -- composition in the alternating group A_N (3 <= N <= 6)'),
    ('sl2', 'sl2:Q -- SL(2, Q), 2 x 2 matrices of determinant 1 mod a prime Q'),
    ('gl2', 'gl2:Q -- GL(2, Q), invertible 2 x 2 matrices mod a prime Q'),
    ('direct', 'direct:G*H -- the direct product of any of these groups')):
  register_kind(_kind, _table_group, _text)
register_kind('collection', _collection, 'collection:dk=D -- a sweep: every built-in group of '
              'largest irrep degree D', arg=None)
register_kind('teacher', _teacher, 'teacher:diagonal|power_law|random -- regression y = W* x '
              '(+ noise) for model=dln, MSE (docs/tasks.md)', validate=_validate_teacher)
_BUILT_IN_KINDS = tuple(KINDS)
assert _BUILT_IN_KINDS == TASK_NAMES, (_BUILT_IN_KINDS, TASK_NAMES)


def collection(spec: str) -> tuple[str, ...]:
  """The task names of ``collection:dk=D``: the built-in non-abelian groups whose largest
  irreducible degree is D (Tian's ``group_collection_max_dk``). ValueError, one line."""
  kind, _, arg = spec.strip().partition(':')
  key, _, value = arg.partition('=')
  if kind.strip() != 'collection' or key.strip() != 'dk' or not value.strip().isdigit():
    raise ValueError(f'task: collection:dk=D with D a whole number; got {spec!r}')
  names = groups.collection(int(value))
  if not names:
    have = sorted({max(groups.irrep_degrees(g)) for g in groups.COLLECTION})
    raise ValueError(f'task: no built-in group has largest irrep degree {value.strip()} '
                     f'(the collection has {have}); got {spec!r}')
  return names


# -- task generators and training-set sizes --------------------------------------------------


def _fail(field: str, message: str):
  raise ValueError(f'{field}: {message}')


def pick_generator(task: Task, test_size: int, generator: str = AUTO) -> str:
  """The generator ``'auto'`` stands for: ``'reference'`` (the paper's exact pairs) for the
  2-operand Z_p tasks with a test set to draw (``test_size`` >= 1), else ``'fast'``; any
  other name is returned as it is."""
  if generator != AUTO:
    return generator
  return 'reference' if task.kind in REFERENCE_TASKS and test_size >= 1 else 'fast'


def make_task(task: Task, train_size: int, test_size: int, seed: int,
              generator: str = 'fast') -> tuple[np.ndarray, np.ndarray]:
  """Returns (train, test) int32 tables [N, n_ops + 1]: operands, then label.

  ``'fast'``: ``train_size + test_size`` distinct codes from ``default_rng(seed)`` (never
  enumerating the tuple space), train first; disjoint and duplicate-free. ``test_size = 0``
  means every tuple not in train (allowed up to ``MAX_COMPLEMENT`` tuples); it gives the same
  sets as passing ``n_codes - train_size``.
  ``'reference'``: the reference's (a, b) draws (``make_mod_add``'s), labelled by the task;
  for the 2-operand Z_p tasks whose every pair is valid (``REFERENCE_TASKS``). Its test pairs
  are drawn with replacement, so ``test_size`` must be >= 1.
  ``'auto'``: ``pick_generator``'s choice.
  """
  if generator not in TASK_GENERATORS:
    _fail('data_generator', f'must be one of {", ".join(TASK_GENERATORS)}; got {generator!r}')
  if generator == AUTO and not isinstance(test_size, bool) and isinstance(test_size, int):
    generator = pick_generator(task, test_size)
  for field, value in (('train_size', train_size), ('test_size', test_size), ('seed', seed)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      _fail(field, f'must be an int >= 0; got {value!r}')
  train_size, test_size, seed = int(train_size), int(test_size), int(seed)
  n = task.n_codes
  if generator == 'reference':
    if task.kind not in REFERENCE_TASKS:
      _fail('data_generator', f"'reference' reproduces the reference's (a, b) draws and "
            f"applies to tasks {', '.join(REFERENCE_TASKS)}; use 'fast' for task {task.name!r}")
    if test_size == 0:
      _fail('test_size', "must be >= 1 with data_generator 'reference' (it draws test pairs "
            "with replacement; 0 = every tuple not in train needs 'fast')")
  elif test_size == 0:
    if n > MAX_COMPLEMENT:
      _fail('test_size', f'0 (every tuple not in train) enumerates all {n} tuples of task '
            f'{task.name!r}; allowed up to {MAX_COMPLEMENT}: give a test_size')
    if train_size > n:
      _fail('train_size', f'must be <= the {n} tuples of task {task.name!r}; got {train_size}')
    test_size = n - train_size
  if generator == 'reference' and train_size >= n:  # test pairs come from the pairs left
    _fail('train_size', f'must be < the {n} pairs of task {task.name!r} (the reference draws '
          f'its test pairs, with replacement, from the pairs left); got {train_size}')
  if generator != 'reference' and train_size + test_size > n:
    _fail('train_size + test_size', f'must be <= the {n} tuples of task {task.name!r}; '
          f'got {train_size} + {test_size}')
  if generator == 'reference':
    train_N, test_N = _reference_codes(task.order, train_size, test_size, seed)
  else:
    codes = np.random.default_rng(seed).choice(n, size=train_size + test_size, replace=False,
                                               shuffle=True)
    train_N, test_N = codes[:train_size], codes[train_size:]
  return task.rows(train_N), task.rows(test_N)


def critical_train_size(task: Task, multiplier: float = 2.7482, delta: float = 0.0) -> int:
  """Training examples at Tian's critical ratio (Li2): the fraction
  clip(c (ln M / M) (multiplier - delta), 0, 1) of all ``n_codes`` tuples, rounded, >= 1.
  ``delta`` > 0 moves the split below the boundary (memorisation), < 0 above (grokking)."""
  m = task.order
  fraction = min(max(task.c * math.log(m) / m * (multiplier - delta), 0.0), 1.0)
  return max(1, round(fraction * task.n_codes))


def fraction_train_size(task: Task, fraction: float) -> int:
  """round(fraction * n_codes) training examples, fraction in (0, 1]."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating,
                                                             np.integer)) \
      or not 0 < fraction <= 1:
    _fail('train_fraction', f'must be a number in (0, 1]; got {fraction!r}')
  return round(float(fraction) * task.n_codes)


# Task kinds beyond the built-ins: every module of ordered_jax/task_kinds registers its own
# (imported last, so they can use everything above).
extensions.import_all('ordered_jax.task_kinds')  # tasks beyond the built-ins
