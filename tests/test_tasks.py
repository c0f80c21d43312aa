"""tasks.make_mod_add: the reference generator matches a direct transcription exactly."""

import random
import re

import numpy as np
import pytest

from ordered_jax import tasks


def reference_mod_add_slow(p, train_size, test_size, seed):
  """Direct transcription of the reference ModArithmeticGenerator (fact sheet 1.2)."""
  rnd = random.Random(seed)  # same stream as random.seed(seed) on the global instance
  train_set = set()
  while len(train_set) < train_size:
    a = rnd.randint(0, p - 1)
    b = rnd.randint(0, p - 1)
    train_set.add((a, b))
  test = []
  while len(test) < test_size:
    a = rnd.randint(0, p - 1)
    b = rnd.randint(0, p - 1)
    if (a, b) not in train_set:
      test.append((a, b, (a + b) % p))
  train = [(a, b, (a + b) % p) for (a, b) in train_set]
  return (np.array(train, dtype=np.int32).reshape(-1, 3),
          np.array(test, dtype=np.int32).reshape(-1, 3))


def _codes(abc_Nx3, p):
  return abc_Nx3[:, 0].astype(np.int64) * p + abc_Nx3[:, 1]


@pytest.mark.parametrize('p, train_size, test_size, seed', [
    (31, 400, 300, 199),
    (31, 950, 200, 199),   # train set nearly fills p*p = 961
    (31, 961, 0, 7),       # train set is all of p*p
    (97, 3000, 5000, 199),
    (97, 0, 50, 3),
    (9973, 20000, 50000, 199),
])
def test_reference_matches_slow_transcription(p, train_size, test_size, seed):
  want_train, want_test = reference_mod_add_slow(p, train_size, test_size, seed)
  train, test = tasks.make_mod_add(p, train_size, test_size, seed, 'reference')
  np.testing.assert_array_equal(train, want_train)
  np.testing.assert_array_equal(test, want_test)


def test_reference_is_default_generator():
  a = tasks.make_mod_add(31, 100, 100, 199)
  b = tasks.make_mod_add(31, 100, 100, 199, generator='reference')
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_python_mt19937_matches_getrandbits():
  for seed in (0, 199, 2**40 + 5):
    rnd = random.Random(seed)
    want = [rnd.getrandbits(32) for _ in range(2000)]
    got = tasks.python_mt19937(seed).random_raw(2000).tolist()
    assert got == want


@pytest.mark.parametrize('generator', tasks.GENERATORS)
def test_splits_shapes_dtype_sum_and_disjoint(generator):
  p = 97
  train, test = tasks.make_mod_add(p, 2000, 3000, 5, generator)
  assert train.shape == (2000, 3) and test.shape == (3000, 3)
  assert train.dtype == np.int32 and test.dtype == np.int32
  for abc in (train, test):
    assert abc[:, :2].min() >= 0 and abc[:, :2].max() < p
    np.testing.assert_array_equal(abc[:, 2], (abc[:, 0] + abc[:, 1]) % p)
  assert np.unique(_codes(train, p)).size == 2000
  assert not np.isin(_codes(test, p), _codes(train, p)).any()


def test_reference_test_split_keeps_duplicates_fast_does_not():
  p = 31  # 961 pairs, 300 train: 2000 test draws must repeat pairs
  _, ref_test = tasks.make_mod_add(p, 300, 2000, 199, 'reference')
  assert np.unique(_codes(ref_test, p)).size < 2000
  _, fast_test = tasks.make_mod_add(p, 300, 661, 199, 'fast')  # fills p*p exactly
  assert np.unique(_codes(fast_test, p)).size == 661


def test_fast_deterministic_per_seed_and_differs_across_seeds():
  a = tasks.make_mod_add(97, 1000, 1000, 1, 'fast')
  b = tasks.make_mod_add(97, 1000, 1000, 1, 'fast')
  c = tasks.make_mod_add(97, 1000, 1000, 2, 'fast')
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  # Train rows come in random order (not sorted by pair).
  codes = _codes(a[0], 97)
  assert not np.all(np.diff(codes) > 0)


def test_reference_differs_across_seeds():
  a, _ = tasks.make_mod_add(97, 500, 0, 1)
  b, _ = tasks.make_mod_add(97, 500, 0, 2)
  assert not np.array_equal(a, b)


def test_empty_splits():
  train, test = tasks.make_mod_add(7, 0, 0, 0)
  assert train.shape == (0, 3) and test.shape == (0, 3)
  train, test = tasks.make_mod_add(7, 0, 0, 0, 'fast')
  assert train.shape == (0, 3) and test.shape == (0, 3)


@pytest.mark.parametrize('kwargs, field', [
    (dict(p=7, train_size=50, test_size=0, seed=0), 'train_size'),
    (dict(p=7, train_size=49, test_size=1, seed=0), 'test_size'),
    (dict(p=7, train_size=40, test_size=10, seed=0, generator='fast'),
     'train_size + test_size'),
    (dict(p=7, train_size=-1, test_size=1, seed=0), 'train_size'),
    (dict(p=7, train_size=1, test_size=-1, seed=0), 'test_size'),
    (dict(p=0, train_size=1, test_size=1, seed=0), 'p'),
    (dict(p=7, train_size=1, test_size=1, seed=-1), 'seed'),
    (dict(p=7, train_size=1, test_size=1, seed=0, generator='torch'), 'generator'),
])
def test_invalid_arguments_raise_value_error_naming_field(kwargs, field):
  with pytest.raises(ValueError, match=re.escape(field)) as info:
    tasks.make_mod_add(**kwargs)
  assert '\n' not in str(info.value)


def test_fast_allows_train_plus_test_equal_to_p_squared():
  train, test = tasks.make_mod_add(7, 40, 9, 0, 'fast')
  assert np.unique(np.concatenate([_codes(train, 7), _codes(test, 7)])).size == 49
