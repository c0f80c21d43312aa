"""Finite groups as Cayley tables, their checks, irreducible-representation degrees, and
the built-in collection (Tian's ``group_collection_max_dk``).

A group of order M is an int64 table ``[M, M]`` with ``table[i, j]`` = the index of
``g_i g_j``; element 0 is the identity for every constructor here. Constructors
(``table(spec)``, each spec also a task name, see ``tasks.parse_task``):

  dicyclic:N            Dic_N = <a, x | a^2N, x^2 = a^N, x a x^-1 = a^-1>, order 4N (N >= 2;
                        dicyclic:2 is the quaternion group Q_8); a^k x^e has index k + 2N e
  semidirect:N,M,R      Z_N x|_R Z_M, (a, b)(c, d) = (a + R^b c mod N, b + d mod M), index
                        a + N b; needs gcd(R, N) = 1 and R^M = 1 mod N
  alt:N                 the alternating group A_N (3 <= N <= 6), even permutations in
                        lexicographic order, composed as sym:N's (p o q)[k] = p[q[k]]
  sl2:Q, gl2:Q          SL(2, F_Q) and GL(2, F_Q), Q prime, 2 x 2 matrices (a, b; c, d): the
                        identity, then the others in lexicographic order of (a, b, c, d);
                        the matrix product mod Q
  direct:G*H[*K..]      the direct product of any of these (and cyclic:N, sym:N,
                        dihedral:N), (g, h) at index g |H| + h

Irreducible-representation degrees (``irrep_degrees``) are computed numerically, the way
the issue proposes: a random Hermitian element z of the group algebra's centre (real
weights on class sums, symmetric under inversion, plus i times antisymmetric ones) acts on
the regular representation as a scalar on each isotypic component, whose dimension is
d_k^2; the eigenvalues of that M x M Hermitian matrix fall into as many clusters as the
group has conjugacy classes, and the cluster sizes are the d_k^2. The result is checked
(perfect squares, sum = M, count = number of classes) and, for a direct product, composed
from the factors (the degrees of G x H are the products d_i d_j).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

MAX_TABLE_ORDER = 1024      # one factor's table (irreps are computed on M x M matrices)
MAX_DIRECT_ORDER = 2**11    # a direct product's order (its table: 32 MiB)
FULL_ASSOCIATIVITY = 200    # check every triple up to this order, a sample above
SAMPLED_TRIPLES = 200_000


class GroupError(ValueError):
  """A spec that names no group here, or a table that is not a group (one line)."""


# -- constructors ----------------------------------------------------------------------------

def cyclic(n: int) -> np.ndarray:
  i = np.arange(n, dtype=np.int64)
  return (i[:, None] + i[None, :]) % n


def dihedral(n: int) -> np.ndarray:
  """r^k s^f at index k + n f; (r^k1 s^f1)(r^k2 s^f2) = r^(k1 + (-1)^f1 k2) s^(f1 + f2)."""
  f, k = np.divmod(np.arange(2 * n, dtype=np.int64), n)
  return ((k[:, None] + (1 - 2 * f[:, None]) * k[None, :]) % n
          + n * ((f[:, None] + f[None, :]) % 2))


def dicyclic(n: int) -> np.ndarray:
  """a^k x^e at index k + 2n e: x a^l = a^-l x and x^2 = a^n."""
  e, k = np.divmod(np.arange(4 * n, dtype=np.int64), 2 * n)
  e1, k1, e2, k2 = e[:, None], k[:, None], e[None, :], k[None, :]
  power = k1 + (1 - 2 * e1) * k2 + n * (e1 * e2)
  return power % (2 * n) + 2 * n * ((e1 + e2) % 2)


def semidirect(n: int, m: int, r: int) -> np.ndarray:
  """(a, b) at index a + n b; (a, b)(c, d) = (a + r^b c mod n, b + d mod m)."""
  b, a = np.divmod(np.arange(n * m, dtype=np.int64), n)
  r_b = np.array([pow(r, int(x), n) for x in range(m)], np.int64)[b]
  return ((a[:, None] + r_b[:, None] * a[None, :]) % n
          + n * ((b[:, None] + b[None, :]) % m))


def _permutation_table(perms_MxN: np.ndarray) -> np.ndarray:
  """The table of a set of permutations closed under composition (sorted rows)."""
  m, n = perms_MxN.shape
  comp_MxMxN = perms_MxN[np.arange(m)[:, None, None], perms_MxN[None, :, :]]  # p_i o p_j
  place = n ** np.arange(n - 1, -1, -1, dtype=np.int64)
  return np.searchsorted(perms_MxN @ place, comp_MxMxN @ place).astype(np.int64)


def symmetric(n: int) -> np.ndarray:
  return _permutation_table(np.array(list(itertools.permutations(range(n))), np.int64)
                            .reshape(-1, n))


def _parity(perm) -> int:
  return sum(1 for i in range(len(perm)) for j in range(i + 1, len(perm))
             if perm[i] > perm[j]) % 2


def alternating(n: int) -> np.ndarray:
  perms = [p for p in itertools.permutations(range(n)) if _parity(p) == 0]
  return _permutation_table(np.array(perms, np.int64).reshape(-1, n))


def matrix_group(q: int, special: bool) -> np.ndarray:
  """GL(2, q) (or SL with ``special``): invertible (a, b; c, d) mod q, lexicographic."""
  entries = np.array(list(itertools.product(range(q), repeat=4)), np.int64)
  det = (entries[:, 0] * entries[:, 3] - entries[:, 1] * entries[:, 2]) % q
  mats = entries[det == 1] if special else entries[det != 0]
  a, b, c, d = (mats[:, i] for i in range(4))
  prod = np.stack([a[:, None] * a[None] + b[:, None] * c[None],
                   a[:, None] * b[None] + b[:, None] * d[None],
                   c[:, None] * a[None] + d[:, None] * c[None],
                   c[:, None] * b[None] + d[:, None] * d[None]], axis=-1) % q
  place = q ** np.arange(3, -1, -1, dtype=np.int64)
  return _identity_first(np.searchsorted(mats @ place, prod @ place).astype(np.int64))


def _identity_first(t: np.ndarray) -> np.ndarray:
  """Relabels so that the neutral element is 0, the others keeping their order."""
  e = int(np.flatnonzero(np.all(t == np.arange(len(t)), axis=1))[0])
  order = np.concatenate([[e], np.delete(np.arange(len(t)), e)])
  pos = np.argsort(order)
  return pos[t[order[:, None], order[None, :]]]


def direct(*tables: np.ndarray) -> np.ndarray:
  """(g, h) at index g |H| + h, componentwise products; any number of factors."""
  out = tables[0]
  for t in tables[1:]:
    m = len(t)
    out = (out[:, None, :, None] * m + t[None, :, None, :]).reshape(len(out) * m, -1)
  return out


# -- specs -----------------------------------------------------------------------------------

KINDS = ('cyclic', 'dihedral', 'dicyclic', 'semidirect', 'alt', 'sym', 'sl2', 'gl2', 'direct')
ALLOWED = ('cyclic:N, dihedral:N (N >= 3), dicyclic:N (N >= 2; dicyclic:2 = Q_8), '
           'semidirect:N,M,R (gcd(R, N) = 1, R^M = 1 mod N), alt:N (3 <= N <= 6), sym:N '
           '(1 <= N <= 6), sl2:Q, gl2:Q (Q prime), direct:G*H[*..] of these, each factor of '
           f'order <= {MAX_TABLE_ORDER} and the product <= {MAX_DIRECT_ORDER}')


def _ints(arg: str, count: int, spec: str) -> tuple[int, ...]:
  parts = [s.strip() for s in arg.split(',')]
  if len(parts) != count or not all(s.isdigit() and len(s) <= 6 for s in parts):
    raise GroupError(f'group {spec!r}: needs {count} whole number(s); allowed: {ALLOWED}')
  return tuple(int(s) for s in parts)


def _is_prime(q: int) -> bool:
  return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def order_of(spec: str) -> int:
  """The order a spec names, computed without building the table (validates the spec)."""
  kind, _, arg = spec.strip().partition(':')
  kind = kind.strip()
  if kind == 'direct':
    factors = [s for s in arg.split('*')]
    if len(factors) < 2:
      raise GroupError(f'group {spec!r}: direct needs two or more factors G*H; allowed: '
                       f'{ALLOWED}')
    order = math.prod(order_of(f) for f in factors)
    if order > MAX_DIRECT_ORDER:
      raise GroupError(f'group {spec!r}: order {order} > {MAX_DIRECT_ORDER}')
    return order
  def bad(what):
    return GroupError(f'group {spec!r}: {what}; allowed: {ALLOWED}')
  if kind in ('cyclic', 'dihedral', 'dicyclic', 'alt', 'sym', 'sl2', 'gl2'):
    (n,) = _ints(arg, 1, spec)
    if kind == 'cyclic':
      order = n if n >= 1 else 0
    elif kind == 'dihedral':
      order = 2 * n if n >= 3 else 0
    elif kind == 'dicyclic':
      order = 4 * n if n >= 2 else 0
    elif kind in ('alt', 'sym'):
      lo = 3 if kind == 'alt' else 1
      if not lo <= n <= 6:
        raise bad(f'{kind}:N needs {lo} <= N <= 6')
      order = math.factorial(n) // (2 if kind == 'alt' else 1)
    else:
      if not _is_prime(n) or n > 7:
        raise bad(f'{kind}:Q needs a prime Q <= 7')
      gl = (n * n - 1) * (n * n - n)
      order = gl // (n - 1) if kind == 'sl2' else gl
  elif kind == 'semidirect':
    n, m, r = _ints(arg, 3, spec)
    if n < 2 or m < 2 or math.gcd(r, n) != 1 or pow(r, m, n) != 1 % n:
      raise bad('semidirect:N,M,R needs N, M >= 2, gcd(R, N) = 1 and R^M = 1 mod N')
    order = n * m
  else:
    raise bad(f'unknown kind {kind!r}')
  if not 1 <= order <= MAX_TABLE_ORDER:
    raise bad(f'order {order} outside [1, {MAX_TABLE_ORDER}] (or a size below the minimum)')
  return order


@functools.lru_cache(maxsize=64)
def _table(spec: str) -> np.ndarray:
  order_of(spec)
  kind, _, arg = spec.strip().partition(':')
  kind = kind.strip()
  if kind == 'direct':
    return direct(*[_table(f.strip()) for f in arg.split('*')])
  if kind == 'semidirect':
    return semidirect(*_ints(arg, 3, spec))
  (n,) = _ints(arg, 1, spec)
  build = {'cyclic': cyclic, 'dihedral': dihedral, 'dicyclic': dicyclic, 'alt': alternating,
           'sym': symmetric, 'sl2': lambda q: matrix_group(q, True),
           'gl2': lambda q: matrix_group(q, False)}[kind]
  t = build(n)
  check(t, spec)
  t.setflags(write=False)
  return t


def table(spec: str) -> np.ndarray:
  """The checked, read-only Cayley table a spec names (see the module docstring)."""
  return _table(spec.strip())


# -- checks and representation theory --------------------------------------------------------

def check(t: np.ndarray, name: str = 'table', seed: int = 0) -> None:
  """Raises GroupError unless ``t`` is a group's table with identity 0: a Latin square
  (closure, cancellation), element 0 neutral, every element invertible, associative (every
  triple up to FULL_ASSOCIATIVITY elements, SAMPLED_TRIPLES random ones above)."""
  m = t.shape[0]
  if t.ndim != 2 or t.shape != (m, m) or t.min() < 0 or t.max() >= m:
    raise GroupError(f'{name}: not an M x M table of elements in [0, M)')
  ar = np.arange(m)
  if not (np.array_equal(t[0], ar) and np.array_equal(t[:, 0], ar)):
    raise GroupError(f'{name}: element 0 is not the identity')
  if not (np.all(np.sort(t, axis=1) == ar) and np.all(np.sort(t, axis=0) == ar[:, None])):
    raise GroupError(f'{name}: not a Latin square (some product repeats in a row or column)')
  if not np.all((t == 0).sum(axis=1) == 1):
    raise GroupError(f'{name}: some element has no inverse')
  if m <= FULL_ASSOCIATIVITY:
    a, b, c = ar[:, None, None], ar[None, :, None], ar[None, None, :]
  else:
    a, b, c = np.random.default_rng(seed).integers(0, m, (3, SAMPLED_TRIPLES))
  if not np.array_equal(t[t[a, b], c], t[a, t[b, c]]):
    raise GroupError(f'{name}: not associative')


def inverses(t: np.ndarray) -> np.ndarray:
  return np.argmax(t == 0, axis=1)


def conjugacy_classes(t: np.ndarray) -> list[np.ndarray]:
  """The classes {x g x^-1}, each a sorted index array, in order of their least element."""
  inv = inverses(t)
  conj_XxG = t[t, inv[:, None]]  # [x, g] -> (x g) x^-1
  seen, out = np.zeros(len(t), bool), []
  for g in range(len(t)):
    if not seen[g]:
      cls = np.unique(conj_XxG[:, g])
      seen[cls] = True
      out.append(cls)
  return out


def _regular_degrees(t: np.ndarray, seed: int) -> list[int]:
  m = len(t)
  classes = conjugacy_classes(t)
  inv = inverses(t)
  class_of = np.empty(m, np.int64)
  for i, cls in enumerate(classes):
    class_of[cls] = i
  rng = np.random.default_rng(seed)
  w = rng.normal(size=len(classes))
  u = rng.normal(size=len(classes))
  inv_class = class_of[inv[[c[0] for c in classes]]]
  real = w + w[inv_class]                 # symmetric under g -> g^-1: a real symmetric part
  imag = u - u[inv_class]                 # antisymmetric: i (L_g - L_g^T) is Hermitian
  coef = real[class_of] + 1j * imag[class_of]          # coefficient of each element g
  # z acts on the regular representation by left multiplication: (z f)(h) = sum_g c_g f(g^-1 h)
  z = np.zeros((m, m), complex)
  z[t, np.arange(m)[None, :]] += coef[:, None]         # column h, row g h: weight c_g
  eig = np.sort(np.linalg.eigvalsh(z))
  scale = max(1.0, float(np.abs(eig).max()))
  breaks = np.flatnonzero(np.diff(eig) > 1e-6 * scale)
  sizes = np.diff(np.concatenate([[0], breaks + 1, [m]]))
  degrees = [math.isqrt(int(s)) for s in sizes]
  if (any(d * d != s for d, s in zip(degrees, sizes)) or sum(sizes) != m
      or len(sizes) != len(classes)):
    raise GroupError(f'irreducible degrees: eigenspace sizes {sorted(sizes)} are not the '
                     f'squares of {len(classes)} degrees summing to {m}')
  return sorted(degrees)


def irrep_degrees(spec: str) -> tuple[int, ...]:
  """The sorted degrees of the irreducible complex representations of the group ``spec``."""
  spec = spec.strip()
  kind, _, arg = spec.partition(':')
  if kind.strip() == 'direct':
    parts = [irrep_degrees(f) for f in arg.split('*')]
    return tuple(sorted(math.prod(ds) for ds in itertools.product(*parts)))
  return _degrees_cached(spec)


@functools.lru_cache(maxsize=64)
def _degrees_cached(spec: str) -> tuple[int, ...]:
  t = table(spec)
  for seed in range(3):  # a random z separates the classes with probability 1
    try:
      return tuple(_regular_degrees(t, seed))
    except GroupError:
      continue
  raise GroupError(f'group {spec!r}: irreducible degrees not separated in 3 draws')


def is_abelian(spec: str) -> bool:
  t = table(spec)
  return bool(np.array_equal(t, t.T))


# -- the built-in collection ----------------------------------------------------------------

COLLECTION = (
    tuple(f'dihedral:{n}' for n in range(3, 13))
    + tuple(f'dicyclic:{n}' for n in range(2, 9))
    + ('sym:3', 'sym:4', 'sym:5', 'alt:4', 'alt:5', 'sl2:3', 'gl2:3',
       'semidirect:7,3,2', 'semidirect:5,4,2', 'semidirect:9,3,4', 'semidirect:13,3,3',
       'semidirect:7,6,3', 'semidirect:9,6,2', 'semidirect:13,4,5',
       'direct:sym:3*cyclic:2', 'direct:sym:3*cyclic:3', 'direct:dicyclic:2*cyclic:2',
       'direct:dihedral:4*cyclic:3', 'direct:sym:3*sym:3', 'direct:alt:4*cyclic:2',
       'direct:dicyclic:2*dicyclic:2'))


def collection(max_dk: int) -> tuple[str, ...]:
  """The built-in non-abelian groups of order <= 128 whose largest irreducible degree is
  ``max_dk`` (Tian's ``group_collection_max_dk``), in COLLECTION's order."""
  return tuple(g for g in COLLECTION if max(irrep_degrees(g)) == max_dk)
