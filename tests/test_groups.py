"""Groups beyond S_n and D_n (issue 16 part 3): tables against brute-force definitions,
the table checks, irreducible degrees against known character tables, the collection."""

import itertools

import numpy as np
import pytest

from configs import tiny
from ordered_jax import groups, sweep, tasks


def _element_orders(t):
  out = []
  for g in range(len(t)):
    x, k = g, 1
    while x != 0:
      x, k = t[x, g], k + 1
    out.append(k)
  return sorted(out)


def test_quaternion_group():
  t = groups.table('dicyclic:2')
  assert _element_orders(t) == [1, 2, 4, 4, 4, 4, 4, 4]   # Q_8: one involution, six of order 4
  assert not groups.is_abelian('dicyclic:2')


def test_dicyclic_against_its_presentation():
  n = 3
  t = groups.table(f'dicyclic:{n}')
  a, x = 1, 2 * n                       # a and x by their indices
  assert _element_orders(t)[-1] == 2 * n
  assert t[x, x] == n                   # x^2 = a^n
  a_inv = int(np.argmax(t[a] == 0))
  x_inv = int(np.argmax(t[x] == 0))
  assert t[t[x, a], x_inv] == a_inv     # x a x^-1 = a^-1


def test_semidirect_against_pairs():
  n, m, r = 7, 3, 2
  t = groups.table(f'semidirect:{n},{m},{r}')
  for i, j in itertools.product(range(n * m), repeat=2):
    (a, b), (c, d) = (i % n, i // n), (j % n, j // n)
    want = ((a + r**b * c) % n, (b + d) % m)
    assert (t[i, j] % n, t[i, j] // n) == want


def test_alternating_is_the_even_permutations():
  perms = [p for p in itertools.permutations(range(4))
           if sum(p[i] > p[j] for i in range(4) for j in range(i + 1, 4)) % 2 == 0]
  t = groups.table('alt:4')
  for i, j in itertools.product(range(12), repeat=2):
    assert perms[t[i, j]] == tuple(perms[i][perms[j][k]] for k in range(4))


@pytest.mark.parametrize('kind,q,order', [('sl2', 3, 24), ('gl2', 3, 48), ('sl2', 5, 120)])
def test_matrix_groups_multiply_matrices(kind, q, order):
  mats = [np.array(e).reshape(2, 2) for e in itertools.product(range(q), repeat=4)
          if (round(np.linalg.det(np.array(e).reshape(2, 2))) % q == 1 if kind == 'sl2'
              else round(np.linalg.det(np.array(e).reshape(2, 2))) % q != 0)]
  eye = np.eye(2, dtype=int)
  mats = [eye] + [x for x in mats if not np.array_equal(x, eye)]   # identity first
  t = groups.table(f'{kind}:{q}')
  assert len(t) == len(mats) == order
  rng = np.random.default_rng(0)
  for i, j in rng.integers(0, order, (300, 2)):
    assert np.array_equal(mats[t[i, j]], mats[i] @ mats[j] % q)


def test_direct_product_is_componentwise():
  g, h = groups.table('sym:3'), groups.table('dicyclic:2')
  t = groups.table('direct:sym:3*dicyclic:2')
  for i, j in itertools.product(range(48), repeat=2):
    assert divmod(t[i, j], 8) == (g[i // 8, j // 8], h[i % 8, j % 8])


def test_existing_tables_agree():
  assert np.array_equal(groups.table('sym:4'), tasks._sym_table(4))
  ops = np.array(list(itertools.product(range(10), repeat=2)))
  assert np.array_equal(groups.table('dihedral:5')[ops[:, 0], ops[:, 1]],
                        tasks._label_dihedral(5, ops))


def test_check_rejects_what_is_not_a_group():
  good = groups.cyclic(5)
  groups.check(good)
  with pytest.raises(groups.GroupError, match='identity'):
    groups.check(np.roll(good, 1, axis=0))
  bad = good.copy()
  bad[1, 1] = bad[1, 2]
  with pytest.raises(groups.GroupError, match='Latin'):
    groups.check(bad)
  # the smallest loop that is not a group: order 5, identity 0, a Latin square
  loop = np.array([[0, 1, 2, 3, 4], [1, 0, 3, 4, 2], [2, 4, 0, 1, 3], [3, 2, 4, 0, 1],
                   [4, 3, 1, 2, 0]])
  with pytest.raises(groups.GroupError, match='associative'):
    groups.check(loop)


# Degrees from the character tables (e.g. James & Liebeck, Representations and Characters
# of Groups): every constructor and a direct product.
KNOWN = {
    'sym:3': (1, 1, 2), 'sym:4': (1, 1, 2, 3, 3), 'sym:5': (1, 1, 4, 4, 5, 5, 6),
    'dihedral:4': (1, 1, 1, 1, 2), 'dihedral:5': (1, 1, 2, 2),
    'dicyclic:2': (1, 1, 1, 1, 2), 'dicyclic:3': (1, 1, 1, 1, 2, 2),
    'alt:4': (1, 1, 1, 3), 'alt:5': (1, 3, 3, 4, 5),
    'sl2:3': (1, 1, 1, 2, 2, 2, 3), 'gl2:3': (1, 1, 2, 2, 2, 3, 3, 4),
    'semidirect:7,3,2': (1, 1, 1, 3, 3), 'semidirect:5,4,2': (1, 1, 1, 1, 4),
    'cyclic:6': (1,) * 6,
    'direct:sym:3*sym:3': (1, 1, 1, 1, 2, 2, 2, 2, 4),
}


@pytest.mark.parametrize('spec', sorted(KNOWN))
def test_irrep_degrees_match_character_tables(spec):
  d = groups.irrep_degrees(spec)
  assert d == KNOWN[spec]
  assert sum(x * x for x in d) == len(groups.table(spec))
  assert len(d) == len(groups.conjugacy_classes(groups.table(spec)))


def test_direct_product_degrees_computed_directly_agree():
  t = groups.table('direct:sym:3*dicyclic:2')
  assert tuple(groups._regular_degrees(t, 0)) == groups.irrep_degrees('direct:sym:3*dicyclic:2')


def test_collection_selects_by_largest_degree():
  two = groups.collection(2)
  assert 'dicyclic:2' in two and 'dihedral:3' in two and 'sym:4' not in two
  for g in two:
    assert max(groups.irrep_degrees(g)) == 2 and not groups.is_abelian(g)
  assert set(groups.collection(3)) >= {'sym:4', 'alt:4', 'sl2:3'}
  for g in groups.COLLECTION:
    assert len(groups.table(g)) <= 128


def test_tasks_from_groups():
  t = tasks.parse_task('sl2:3', 97)
  assert (t.order, t.n_ops, t.c) == (24, 2, 1.5)               # largest degree 3: c = 3 / 2
  ops = np.array([[3, 5], [7, 0]])
  assert list(t.label(ops)) == [groups.table('sl2:3')[3, 5], 7]
  assert tasks.parse_task('direct:cyclic:2*cyclic:3', 97).c == 1.0   # abelian
  for bad, what in [('alt:9', 'alt:N'), ('semidirect:7,3,3', 'semidirect:N,M,R needs'), ('gl2:4', 'prime'),
                    ('direct:sym:3', 'two or more'), ('dicyclic:x', 'whole number'),
                    ('collection:dk=2', 'sweep')]:
    with pytest.raises(ValueError, match=what) as e:
      tasks.parse_task(bad, 97)
    assert '\n' not in str(e.value)


def test_collection_is_a_sweep_over_task():
  c = tiny.get_config()
  with c.unlocked():
    c.task = 'collection:dk=3'
  assert [p['task'] for p in sweep.points(c)] == list(groups.collection(3))
  c = tiny.get_config()
  c.sweep.grid.task = 'collection:dk=2,sym:4'
  assert [p['task'] for p in sweep.points(c)] == list(groups.collection(2)) + ['sym:4']
  c.sweep.grid.task = 'collection:dk=9'
  with pytest.raises(sweep.SweepError, match='largest irrep degree 9'):
    sweep.points(c)
