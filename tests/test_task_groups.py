"""tasks.parse_task / make_task: every task's labels against an independent brute force
(plain Python loops, explicit permutation composition, the dihedral group acting on the
vertices of a polygon, hand-written polynomials), group axioms, codes, splits and sizes."""

import itertools
import math
import pickle
import re

import numpy as np
import pytest

from ordered_jax import tasks


def table(task):
  """The task's label table [order, order] over every operand pair, via codes."""
  rows = task.rows(np.arange(task.n_codes))
  out = np.full((task.order, task.order), -1, np.int64)
  out[rows[:, 0], rows[:, 1]] = rows[:, 2]
  return out


# -- brute force ----------------------------------------------------------------------------


def brute_zp(kind, p):
  """{(a, b): label} by Python's own arithmetic (div: the inverse from pow(b, -1, p))."""
  ops = {'add': lambda a, b: (a + b) % p, 'sub': lambda a, b: (a - b) % p,
         'mul': lambda a, b: a * b % p, 'div': lambda a, b: a * pow(b, -1, p) % p}[kind]
  first_b = 1 if kind == 'div' else 0
  return {(a, b): ops(a, b) for a in range(p) for b in range(first_b, p)}


def brute_product(factors):
  elements = list(itertools.product(*[range(f) for f in factors]))  # first factor slowest
  return [[elements.index(tuple((u + v) % f for u, v, f in zip(g, h, factors)))
           for h in elements] for g in elements]


def brute_sym(n):
  perms = list(itertools.permutations(range(n)))
  return [[perms.index(tuple(s[t[i]] for i in range(n))) for t in perms] for s in perms]


def brute_dihedral(n):
  """r^k s^f acting on the vertices v of an n-gon: s reflects (v -> -v), r rotates (v -> v+1),
  so r^k s^f maps v -> k + (-1)^f v. The product g h is the map v -> g(h(v))."""
  def vertex_map(k, f):
    return tuple((k + (-v if f else v)) % n for v in range(n))
  maps = [vertex_map(i % n, i // n) for i in range(2 * n)]
  assert len(set(maps)) == 2 * n  # a faithful action: the 2n elements are distinct maps
  return [[maps.index(tuple(g[h[v]] for v in range(n))) for h in maps] for g in maps]


def hook_length_max_degree(n):
  """The largest irreducible-representation degree of S_n: max over partitions of n of
  n! / prod(hook lengths)."""
  def partitions(m, largest):
    if m == 0:
      yield ()
    for k in range(min(m, largest), 0, -1):
      for rest in partitions(m - k, k):
        yield (k,) + rest

  best = 0
  for lam in partitions(n, n):
    conj = [sum(1 for part in lam if part > j) for j in range(lam[0])]
    hooks = math.prod(lam[i] - j + conj[j] - i - 1 for i in range(len(lam)) for j in range(lam[i]))
    best = max(best, math.factorial(n) // hooks)
  return best


# -- labels match brute force ---------------------------------------------------------------


@pytest.mark.parametrize('kind', ['add', 'sub', 'mul', 'div'])
@pytest.mark.parametrize('p', [7, 11])
def test_zp_labels_match_brute_force(kind, p):
  task = tasks.parse_task(kind, p)
  want = brute_zp(kind, p)
  rows = task.rows(np.arange(task.n_codes))
  assert task.n_codes == len(want) == (p * (p - 1) if kind == 'div' else p * p)
  assert {(a, b): c for a, b, c in rows.tolist()} == want
  assert len({(a, b) for a, b, _ in rows.tolist()}) == task.n_codes  # every pair once


def test_add3_labels_match_brute_force():
  p = 7
  task = tasks.parse_task('add3', p)
  assert (task.n_ops, task.n_codes, task.order) == (3, p**3, p)
  rows = task.rows(np.arange(task.n_codes)).tolist()
  want = [[a, b, c, (a + b + c) % p] for a in range(p) for b in range(p) for c in range(p)]
  assert rows == want  # mixed radix, first operand most significant


@pytest.mark.parametrize('factors', [(2, 3), (2, 3, 4), (5,)])
def test_product_labels_match_brute_force(factors):
  task = tasks.parse_task('product:' + 'x'.join(map(str, factors)), 13)
  assert task.order == math.prod(factors) and task.c == 1
  np.testing.assert_array_equal(table(task), brute_product(factors))


def test_product_of_one_factor_is_add():
  np.testing.assert_array_equal(table(tasks.parse_task('product:11', 7)),
                                table(tasks.parse_task('add', 11)))


@pytest.mark.parametrize('n', [1, 2, 3, 4])
def test_sym_labels_match_brute_force(n):
  task = tasks.parse_task(f'sym:{n}', 97)
  assert task.order == math.factorial(n)
  np.testing.assert_array_equal(table(task), brute_sym(n))


def test_sym_6_composition_spot_check():
  task = tasks.parse_task('sym:6', 97)
  perms = list(itertools.permutations(range(6)))
  codes = np.random.default_rng(0).choice(task.n_codes, 300, replace=False)
  for s, t, st in task.rows(codes).tolist():
    assert perms[st] == tuple(perms[s][perms[t][i]] for i in range(6))


@pytest.mark.parametrize('n', [3, 4, 5])
def test_dihedral_labels_match_brute_force(n):
  task = tasks.parse_task(f'dihedral:{n}', 97)
  assert task.order == 2 * n and task.c == 1
  np.testing.assert_array_equal(table(task), brute_dihedral(n))


@pytest.mark.parametrize('n', [1, 2, 3, 4, 5, 6])
def test_sym_c_is_half_the_largest_irrep_degree(n):
  task = tasks.parse_task(f'sym:{n}', 97)
  want = 1.0 if n <= 2 else hook_length_max_degree(n) / 2  # S_1, S_2 abelian
  assert task.c == want


@pytest.mark.parametrize('expr, fn', [
    ('x^2+x*y+y^2', lambda x, y: x * x + x * y + y * y),
    ('-x + 3*y', lambda x, y: -x + 3 * y),
    ('(x+1)^3', lambda x, y: (x + 1) ** 3),
    ('x^3 + 2*x*y - y', lambda x, y: x**3 + 2 * x * y - y),
    ('x**64 - +y^0 + 100', lambda x, y: x**64 - 1 + 100),
    ('7', lambda x, y: 7),
])
@pytest.mark.parametrize('p', [7, 11])
def test_poly_labels_match_brute_force(expr, fn, p):
  task = tasks.parse_task(f'poly:{expr}', p)
  want = [[fn(x, y) % p for y in range(p)] for x in range(p)]
  np.testing.assert_array_equal(table(task), want)


def test_poly_large_p_no_overflow():
  p = 46337  # prime near the int32 square root: residue products need int64
  task = tasks.parse_task('poly:x^5*y^7 - 3*x*y + 12345678901', p)
  codes = np.random.default_rng(1).choice(task.n_codes, 500, replace=False)
  for x, y, z in task.rows(codes).tolist():
    assert z == (x**5 * y**7 - 3 * x * y + 12345678901) % p


# -- group structure ------------------------------------------------------------------------

GROUPS = ['add', 'sub', 'product:2x3', 'product:2x3x4', 'sym:3', 'sym:4', 'dihedral:4',
          'dihedral:5', 'div']


@pytest.mark.parametrize('spec', GROUPS)
def test_latin_square(spec):
  """Every label once per row and per column (div: on the group Z_p^*, a and b != 0)."""
  task = tasks.parse_task(spec, 11)
  t = table(task)
  if spec == 'div':
    t = t[1:, 1:]
  assert all(len(set(row)) == len(row) for row in t.tolist())
  assert all(len(set(col)) == len(col) for col in t.T.tolist())


@pytest.mark.parametrize('spec', ['add', 'product:2x3x4', 'sym:4', 'dihedral:5'])
def test_identity_and_inverses(spec):
  t = table(tasks.parse_task(spec, 11))
  ids = [e for e in range(len(t)) if all(t[e, g] == g == t[g, e] for g in range(len(t)))]
  assert ids == [0]  # the identity is element 0 in every encoding
  assert all((t[g] == 0).sum() == 1 for g in range(len(t)))


@pytest.mark.parametrize('spec', ['sym:4', 'dihedral:5', 'product:2x3x4'])
def test_associativity(spec):
  t = table(tasks.parse_task(spec, 11)).tolist()
  m = len(t)
  assert all(t[t[a][b]][c] == t[a][t[b][c]]
             for a in range(m) for b in range(m) for c in range(m))


@pytest.mark.parametrize('spec, abelian', [('sym:3', False), ('dihedral:4', False),
                                           ('product:2x3x4', True), ('sym:2', True)])
def test_commutativity(spec, abelian):
  t = table(tasks.parse_task(spec, 11))
  assert np.array_equal(t, t.T) == abelian


# -- codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize('spec, p', [('add3', 9973), ('div', 9973), ('sym:6', 0),
                                     ('product:2x3x4', 0), ('dihedral:16384', 0)])
def test_decode_encode_round_trip(spec, p):
  task = tasks.parse_task(spec, p)
  codes = np.random.default_rng(0).integers(0, task.n_codes, 1000)
  codes[:2] = 0, task.n_codes - 1
  ops = task.decode(codes)
  assert ops.shape == (1000, task.n_ops) and ops.dtype == np.int64
  for k in range(task.n_ops):
    assert ops[:, k].min() >= task.offsets[k]
    assert ops[:, k].max() < task.offsets[k] + task.radices[k] <= task.order
  np.testing.assert_array_equal(task.encode(ops), codes)
  labels = task.label(ops)
  assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < task.order


def test_decode_rejects_out_of_range_codes():
  task = tasks.parse_task('div', 7)
  with pytest.raises(ValueError, match='codes'):
    task.decode(np.array([task.n_codes]))
  with pytest.raises(ValueError, match='operands'):
    task.encode(np.array([[1, 0]]))  # b = 0 is not a div operand


def test_huge_space_codes_fit_int64():
  task = tasks.parse_task('add3', 9973)
  assert task.n_codes == 9973**3
  ops = task.decode(np.array([task.n_codes - 1]))
  assert ops.tolist() == [[9972, 9972, 9972]]
  assert task.label(ops).tolist() == [3 * 9972 % 9973]


def test_task_pickles_and_compares():
  task = tasks.parse_task('poly:x^2+y', 11)
  again = pickle.loads(pickle.dumps(task))
  assert again == task and again.kind == 'poly'
  np.testing.assert_array_equal(table(again), table(task))


# -- make_task ------------------------------------------------------------------------------


def codes_of(task, rows):
  return task.encode(rows[:, :task.n_ops])


@pytest.mark.parametrize('spec, p, n_train, n_test', [
    ('add3', 9973, 5000, 20000),
    ('div', 97, 3000, 5000),
    ('sym:4', 0, 300, 276),  # fills all 576 tuples
    ('dihedral:5', 0, 37, 40),
    ('poly:x^2+x*y+y^2', 31, 0, 10),
])
def test_fast_splits(spec, p, n_train, n_test):
  task = tasks.parse_task(spec, p)
  train, test = tasks.make_task(task, n_train, n_test, 5)
  assert train.shape == (n_train, task.n_ops + 1) and test.shape == (n_test, task.n_ops + 1)
  assert train.dtype == np.int32 and test.dtype == np.int32
  for rows in (train, test):
    if len(rows):
      assert rows.min() >= 0 and rows.max() < task.order
    np.testing.assert_array_equal(rows[:, -1], task.label(rows[:, :-1]))
  tr, te = codes_of(task, train), codes_of(task, test)
  assert np.unique(tr).size == n_train and np.unique(te).size == n_test
  assert not np.isin(te, tr).any()


def test_fast_deterministic_in_seed():
  task = tasks.parse_task('sym:4', 0)
  a = tasks.make_task(task, 200, 100, 1)
  b = tasks.make_task(task, 200, 100, 1)
  c = tasks.make_task(task, 200, 100, 2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])


def test_fast_add_equals_make_mod_add_fast():
  got = tasks.make_task(tasks.parse_task('add', 97), 2000, 3000, 11, 'fast')
  want = tasks.make_mod_add(97, 2000, 3000, 11, 'fast')
  for x, y in zip(got, want):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('spec', ['dihedral:6', 'div', 'add3'])
def test_test_size_zero_is_the_complement(spec):
  task = tasks.parse_task(spec, 7)
  train, test = tasks.make_task(task, 20, 0, 3)
  assert len(train) == 20 and len(test) == task.n_codes - 20
  both = np.concatenate([codes_of(task, train), codes_of(task, test)])
  np.testing.assert_array_equal(np.sort(both), np.arange(task.n_codes))
  # The same sets as asking for the complement's size explicitly.
  for x, y in zip((train, test), tasks.make_task(task, 20, task.n_codes - 20, 3)):
    np.testing.assert_array_equal(x, y)


def test_test_size_zero_refused_on_huge_spaces():
  with pytest.raises(ValueError, match='^test_size: ') as info:
    tasks.make_task(tasks.parse_task('add', 9973), 100, 0, 0)
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('p, n_train, n_test, seed', [(31, 400, 300, 199), (97, 3000, 5000, 3)])
def test_reference_add_equals_make_mod_add(p, n_train, n_test, seed):
  got = tasks.make_task(tasks.parse_task('add', p), n_train, n_test, seed, 'reference')
  want = tasks.make_mod_add(p, n_train, n_test, seed, 'reference')
  for x, y in zip(got, want):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize('spec, fn', [
    ('sub', lambda a, b, p: (a - b) % p),
    ('mul', lambda a, b, p: a * b % p),
    ('poly:x^2+x*y+y^2', lambda a, b, p: (a * a + a * b + b * b) % p),
])
def test_reference_other_tasks_same_pairs_as_add(spec, fn):
  p = 31
  add = tasks.make_task(tasks.parse_task('add', p), 400, 300, 199, 'reference')
  got = tasks.make_task(tasks.parse_task(spec, p), 400, 300, 199, 'reference')
  for x, y in zip(got, add):
    np.testing.assert_array_equal(x[:, :2], y[:, :2])
    np.testing.assert_array_equal(x[:, 2], fn(y[:, 0].astype(np.int64), y[:, 1], p))


@pytest.mark.parametrize('spec', ['div', 'add3', 'sym:3', 'dihedral:4', 'product:2x3'])
def test_reference_refused_for_other_tasks(spec):
  task = tasks.parse_task(spec, 7)
  want = (f"data_generator: 'reference' reproduces the reference's (a, b) draws and applies "
          f"to tasks add, sub, mul, poly; use 'fast' for task '{spec}'")
  with pytest.raises(ValueError) as info:
    tasks.make_task(task, 10, 10, 0, 'reference')
  assert str(info.value) == want


@pytest.mark.parametrize('args, field', [
    ((50, 0, 0, 'fast'), 'train_size'),
    ((40, 10, 0, 'fast'), 'train_size + test_size'),
    ((49, 10, 0, 'reference'), 'train_size'),  # 40 + 10 > 49 is fine: test drawn from the rest
    ((10, 0, 0, 'reference'), 'test_size'),
    ((-1, 1, 0, 'fast'), 'train_size'),
    ((1, -1, 0, 'fast'), 'test_size'),
    ((1.0, 1, 0, 'fast'), 'train_size'),
    ((1, 1, -1, 'fast'), 'seed'),
    ((1, 1, 0, 'torch'), 'data_generator'),
])
def test_make_task_invalid_arguments(args, field):
  with pytest.raises(ValueError, match='^' + re.escape(field) + ': ') as info:
    tasks.make_task(tasks.parse_task('add', 7), *args)
  assert '\n' not in str(info.value)


def test_empty_splits():
  train, test = tasks.make_task(tasks.parse_task('add3', 5), 0, 0, 0)  # 0 = the rest
  assert train.shape == (0, 4) and test.shape == (125, 4)
  train, test = tasks.make_task(tasks.parse_task('add3', 5), 125, 0, 0)
  assert train.shape == (125, 4) and test.shape == (0, 4)


# -- parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize('expr', [
    "__import__('os')", 'x.real', 'z', 'x/y', '1.5*x', 'x**1000', "'a'", '', '   ', 'x+',
    'x^-1', 'x^y', 'True*x', '~x', 'x % 3', '(lambda: 1)()', 'x if y else 1', 'x < y',
    '[x]', 'x; y', 'x\n+ y', 'x' + '+x' * 300, '(' * 300 + 'x' + ')' * 300, 'x' * 1001,
])
def test_poly_parser_rejects(expr):
  spec = f'poly:{expr}'
  with pytest.raises(ValueError) as info:
    tasks.parse_task(spec, 7)
  message = str(info.value)
  assert '\n' not in message and message.startswith('task: poly:<expr> ')
  assert message.endswith(f'; got {spec!r}')


@pytest.mark.parametrize('expr, names', [
    ("__import__('os')", 'Call'), ('x.real', 'Attribute'), ('z', "name 'z'"),
    ('x/y', "operator '/'"), ('1.5*x', "constant '1.5'"), ('x**1000', "exponent '1000'"),
    ("'a'", 'constant'), ('', 'empty'),
])
def test_poly_parser_names_what_is_not_allowed(expr, names):
  with pytest.raises(ValueError, match=re.escape(names) + '.* is not allowed'):
    tasks.parse_task(f'poly:{expr}', 7)


@pytest.mark.parametrize('spec, p', [
    ('foo', 7), ('add:3', 7), ('', 7), ('poly', 7), ('sym', 7), ('sym:0', 7), ('sym:7', 7),
    ('sym:x', 7), ('sym:-3', 7), ('dihedral:2', 7), ('dihedral:16385', 7), ('product:', 7),
    ('product:1x3', 7), ('product:2xx3', 7), ('product:256x256', 7), ('div', 10), ('add', 1),
    ('add', 7.0), ('add3', 2**21), ('ADD', 7),
])
def test_parse_task_rejects(spec, p):
  with pytest.raises(ValueError) as info:
    tasks.parse_task(spec, p)
  message = str(info.value)
  assert '\n' not in message and message.startswith('task: ')
  assert message.endswith(f'; got {spec!r}')


def test_unknown_task_lists_allowed_forms():
  with pytest.raises(ValueError) as info:
    tasks.parse_task('foo', 7)
  for form in tasks.TASK_NAMES:
    assert form in str(info.value)


def test_names_and_p_independence():
  assert tasks.parse_task('product:2x3x4', 7).name == 'product:2x3x4'
  assert tasks.parse_task(' poly: x^2 ', 7).name == 'poly:x^2'
  assert tasks.parse_task('sym:4', 7) == tasks.parse_task('sym:4', 11)  # p ignored
  assert tasks.parse_task('dihedral:5', 'unused').order == 10


# -- training-set sizes ---------------------------------------------------------------------


@pytest.mark.parametrize('p, want', [(23, 198), (97, 1220)])
def test_critical_train_size(p, want):
  task = tasks.parse_task('add', p)
  assert tasks.critical_train_size(task) == want
  assert want == round(math.log(p) / p * 2.7482 * p * p)


def test_critical_train_size_scales_with_c_delta_and_clips():
  s4 = tasks.parse_task('sym:4', 0)  # c = 3/2
  assert tasks.critical_train_size(s4) == round(1.5 * math.log(24) / 24 * 2.7482 * 576)
  add = tasks.parse_task('add', 97)
  assert tasks.critical_train_size(add, delta=0.5) < 1220 < tasks.critical_train_size(add,
                                                                                     delta=-0.5)
  assert tasks.critical_train_size(add, delta=2.7482) == 1  # at least one example
  s6 = tasks.parse_task('sym:6', 0)  # c = 8: the ratio would exceed 1
  assert tasks.critical_train_size(s6, multiplier=100) == s6.n_codes
  assert tasks.critical_train_size(tasks.parse_task('sym:1', 0)) == 1  # ln 1 = 0


def test_fraction_train_size():
  task = tasks.parse_task('div', 7)  # 42 tuples
  assert tasks.fraction_train_size(task, 1) == 42
  assert tasks.fraction_train_size(task, 0.5) == 21
  for bad in (0, -0.1, 1.5, 'half', True):
    with pytest.raises(ValueError, match='^train_fraction: '):
      tasks.fraction_train_size(task, bad)
