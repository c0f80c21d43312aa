"""The resonant strategy's dataset against the reference sheet (section 1.4)."""

import random

import numpy as np

from ordered_jax import resonant


def test_paper_defaults_match_the_sheet():
  p, s = 9973, 99
  assert resonant.batch_size(p, s) == 101
  assert resonant.harmonic_steps(p, s, 4) == [0, 9923, 9899, 9886]
  tr = resonant.train_set(p, s, 4, 0.4, 3, seed=199)
  assert tr.shape == (29_997, 3) == (resonant.train_size(p, s, 3), 3)
  assert np.unique(tr[:, 0].astype(np.int64) * p + tr[:, 1]).size == 29_979
  np.testing.assert_array_equal(tr[:, 2], (tr[:, 0] + tr[:, 1]) % p)


def test_emission_order_small():
  """Batch (j, c): class j's a values; coupling b's from cycle c's pool, then the harmonic
  progression from a per-(j, c) random base."""
  p, s, h, f, cycles, seed = 31, 5, 2, 0.5, 2, 7
  size = resonant.batch_size(p, s)          # ceil(31 / 5) = 7
  n_coupling = round(size * f)              # round(3.5) = 4 (half to even)
  steps = resonant.harmonic_steps(p, s, h)
  tr = resonant.train_set(p, s, h, f, cycles, seed).reshape(s, cycles, size, 3)
  for j in range(s):
    members = [a for a in range(p) if a % s == j]
    members += [members[-1]] * (size - len(members))
    for c in range(cycles):
      batch = tr[j, c]
      assert batch[:, 0].tolist() == members
      pool = random.Random(seed + c).sample(range(p), n_coupling)
      assert batch[:n_coupling, 1].tolist() == pool
      base = random.Random(seed * 1000 + c * s + j).randint(0, p - 1)
      want = [(base + k * steps[j % h]) % p for k in range(size - n_coupling)]
      assert batch[n_coupling:, 1].tolist() == want


def test_test_set_is_the_reference_stream_minus_train():
  p, seed = 31, 3
  tr = resonant.train_set(p, 5, 2, 0.5, 2, seed)
  te = resonant.test_set(p, tr, 200, seed)
  train_pairs = set(map(tuple, tr[:, :2].tolist()))
  rnd, want = random.Random(seed), []
  while len(want) < 200:
    a, b = rnd.randint(0, p - 1), rnd.randint(0, p - 1)
    if (a, b) not in train_pairs:
      want.append((a, b, (a + b) % p))
  np.testing.assert_array_equal(te, np.array(want, np.int32))
