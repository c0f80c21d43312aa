"""orderings: hand-checked static orders, the on-device random order, batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import orderings

# 8 rows of (a, b, (a + b) % 7), in "generator" order.
ROWS_8x3 = np.array([
    [3, 1, 4],  # 0
    [0, 5, 5],  # 1
    [4, 4, 1],  # 2
    [3, 6, 2],  # 3
    [1, 2, 3],  # 4
    [0, 0, 0],  # 5
    [6, 3, 2],  # 6
    [5, 6, 4],  # 7
], dtype=np.int32)
# stride 2, key (a % 2, a): a=0 -> 1, 5; a=4 -> 2; a=6 -> 6; a=1 -> 4; a=3 -> 0, 3; a=5 -> 7.
STRIDE2_8 = [1, 5, 2, 6, 4, 0, 3, 7]
# key c: c=0 -> 5; c=1 -> 2; c=2 -> 3, 6; c=3 -> 4; c=4 -> 0, 7; c=5 -> 1.
TARGET_8 = [5, 2, 3, 6, 4, 0, 7, 1]


def test_rows_fixture_is_consistent():
  np.testing.assert_array_equal(ROWS_8x3[:, 2], (ROWS_8x3[:, 0] + ROWS_8x3[:, 1]) % 7)


def test_constants():
  assert set(orderings.PAPER_STRATEGIES) <= set(orderings.STRATEGIES)
  assert orderings.PAPER_STRATEGIES == ('stride', 'random', 'fixed-random', 'target')
  assert orderings.default_stride(9973) == 99
  assert orderings.default_stride(100) == 10
  assert orderings.default_stride(99) == 9


@pytest.mark.parametrize('strategy, want', [
    ('fixed-random', list(range(8))),
    ('stride', STRIDE2_8),
    ('target', TARGET_8),
])
def test_static_orders_hand_checked(strategy, want):
  order = orderings.static_order(strategy, ROWS_8x3, stride=2)
  assert order.dtype == np.int32
  assert order.tolist() == want


def test_stride_one_is_stable_sort_by_a():
  order = orderings.static_order('stride', ROWS_8x3, stride=1)
  assert order.tolist() == [1, 5, 4, 0, 3, 2, 7, 6]


def test_ties_keep_generator_order():
  # Reverse the rows: tied rows must now come out in the reversed relative order.
  rev_8x3 = ROWS_8x3[::-1]
  back = 7 - np.arange(8)  # new index of old row i is 7 - i
  stride = orderings.static_order('stride', rev_8x3, stride=2).tolist()
  assert stride == [int(back[i]) for i in [5, 1, 2, 6, 4, 3, 0, 7]]
  target = orderings.static_order('target', rev_8x3, stride=2).tolist()
  assert target == [int(back[i]) for i in [5, 2, 6, 3, 4, 7, 0, 1]]


def test_static_orders_match_python_stable_sort_on_random_rows():
  rng = np.random.default_rng(0)
  p, s = 13, 3
  ab = rng.integers(0, p, size=(500, 2))
  rows = np.column_stack([ab, ab.sum(1) % p]).astype(np.int32)
  a, c = rows[:, 0].tolist(), rows[:, 2].tolist()
  assert orderings.static_order('stride', rows, stride=s).tolist() == sorted(
      range(500), key=lambda i: (a[i] % s, a[i]))
  assert orderings.static_order('target', rows, stride=s).tolist() == sorted(
      range(500), key=lambda i: c[i])


def test_alternating_uses_parity():
  for parity, want in [(0, STRIDE2_8), (1, TARGET_8), (2, STRIDE2_8), (3, TARGET_8)]:
    assert orderings.static_order('alternating', ROWS_8x3, stride=2,
                                  parity=parity).tolist() == want


def test_static_order_errors():
  with pytest.raises(ValueError, match='strategy'):
    orderings.static_order('spiral', ROWS_8x3, stride=2)
  with pytest.raises(ValueError, match='random'):
    orderings.static_order('random', ROWS_8x3, stride=2)
  with pytest.raises(ValueError, match='stride'):
    orderings.static_order('stride', ROWS_8x3, stride=0)


def test_random_order_is_deterministic_permutation_that_changes_per_epoch():
  key = jax.random.key(199)
  o0 = orderings.random_order(key, 0, 100)
  assert o0.dtype == jnp.int32 and o0.shape == (100,)
  assert sorted(np.asarray(o0).tolist()) == list(range(100))
  np.testing.assert_array_equal(o0, orderings.random_order(key, 0, 100))
  assert not np.array_equal(o0, orderings.random_order(key, 1, 100))
  assert not np.array_equal(o0, orderings.random_order(jax.random.key(200), 0, 100))


def test_random_order_under_jit_and_vmap():
  key = jax.random.key(3)
  jitted = jax.jit(orderings.random_order, static_argnums=2)
  for epoch in (0, 5):
    np.testing.assert_array_equal(jitted(key, jnp.int32(epoch), 50),
                                  orderings.random_order(key, epoch, 50))
  keys = jax.random.split(key, 3)
  batched = jax.vmap(orderings.random_order, in_axes=(0, None, None))(keys, 2, 50)
  assert batched.shape == (3, 50)
  for r in range(3):
    np.testing.assert_array_equal(batched[r], orderings.random_order(keys[r], 2, 50))
  over_epochs = jax.jit(jax.vmap(lambda e: orderings.random_order(key, e, 50)))(jnp.arange(2))
  np.testing.assert_array_equal(over_epochs[1], orderings.random_order(key, 1, 50))


def test_steps_per_epoch():
  assert orderings.steps_per_epoch(10, 4) == 3
  assert orderings.steps_per_epoch(8, 4) == 2
  assert orderings.steps_per_epoch(0, 4) == 0
  assert orderings.steps_per_epoch(300000, 256) == 1172
  with pytest.raises(ValueError, match='batch_size'):
    orderings.steps_per_epoch(8, 0)


@pytest.mark.parametrize('as_jax', [False, True])
def test_batch_indices_partial_last_batch(as_jax):
  order = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], np.int32)
  idx, mask = orderings.batch_indices(jnp.asarray(order) if as_jax else order, 4)
  assert isinstance(idx, jax.Array) == as_jax
  assert idx.dtype == np.int32 and mask.dtype == np.bool_
  np.testing.assert_array_equal(idx, [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])


@pytest.mark.parametrize('as_jax', [False, True])
def test_batch_indices_exact_multiple(as_jax):
  order = np.arange(8, dtype=np.int32)[::-1].copy()
  idx, mask = orderings.batch_indices(jnp.asarray(order) if as_jax else order, 4)
  np.testing.assert_array_equal(idx, [[7, 6, 5, 4], [3, 2, 1, 0]])
  assert np.asarray(mask).all() and mask.shape == (2, 4)


def test_batch_indices_under_jit():
  key = jax.random.key(0)
  f = jax.jit(lambda e: orderings.batch_indices(orderings.random_order(key, e, 10), 4))
  idx, mask = f(jnp.int32(1))
  assert idx.shape == (3, 4) and mask.shape == (3, 4)
  assert sorted(np.asarray(idx)[np.asarray(mask)].tolist()) == list(range(10))
