"""The reference's ``resonant`` strategy (its HEAD's ``ResonantDatasetBuilder``).

Unlike the other orderings, resonant builds its own training set, already in order
("preordered"), with its own batch size: one batch per (residue class j of the stride s,
cycle c). Each batch pairs the class's first operands a with two kinds of second operands:
a random "coupling" pool shared by the cycle, and an arithmetic progression whose step
targets one of ``n_harmonics`` Fourier harmonics of the stride frequency F = round(p / s).
Its test set is drawn like the reference's (a fresh ``random.Random(seed)`` stream of
(a, b) pairs, training pairs skipped, duplicates kept). See the reference sheet, section 1.4.
Python's ``round`` (half to even) and ``random`` are used on purpose: they are the
reference's.
"""

from __future__ import annotations

import math
import random

import numpy as np

from ordered_jax import tasks


def batch_size(p: int, stride: int) -> int:
  """Rows per batch: the size of the largest residue class a mod stride."""
  return math.ceil(p / stride)


def train_size(p: int, stride: int, n_cycles: int) -> int:
  """Rows of the training set: stride classes x n_cycles batches of ``batch_size`` rows."""
  return stride * n_cycles * batch_size(p, stride)


def harmonic_steps(p: int, stride: int, n_harmonics: int) -> list[int]:
  """b's step in the harmonic rows for each target harmonic h (freq F 2^h folded to p/2)."""
  base = round(p / stride)
  steps = []
  for h in range(n_harmonics):
    freq = base * 2**h
    effective = p - freq if freq > p // 2 else freq
    d = round(p / effective)
    steps.append((d - stride) % p)
  return steps


def train_set(p: int, stride: int, n_harmonics: int, overlap_frac: float, n_cycles: int,
              seed: int) -> np.ndarray:
  """int32 [N, 3] rows (a, b, (a + b) mod p) in emission (= training) order."""
  classes = [list(range(j, p, stride)) for j in range(stride)]
  size = max(len(c) for c in classes)
  classes = [c + [c[-1]] * (size - len(c)) for c in classes]
  n_coupling = round(size * overlap_frac)
  steps = harmonic_steps(p, stride, n_harmonics)
  pools = [random.Random(seed + c).sample(range(p), n_coupling) for c in range(n_cycles)]
  rows = []
  for j in range(stride):
    step = steps[j % n_harmonics]
    for c in range(n_cycles):
      b_base = random.Random(seed * 1000 + c * stride + j).randint(0, p - 1)
      a_K = classes[j]
      rows += [(a_K[k], pools[c][k]) for k in range(n_coupling)]
      rows += [(a_K[n_coupling + k], (b_base + k * step) % p)
               for k in range(size - n_coupling)]
  ab = np.array(rows, np.int64).reshape(-1, 2)
  return np.stack([ab[:, 0], ab[:, 1], (ab[:, 0] + ab[:, 1]) % p], 1).astype(np.int32)


def test_set(p: int, train_Nx3: np.ndarray, test_size: int, seed: int) -> np.ndarray:
  """int32 [test_size, 3]: a fresh ``random.Random(seed)`` stream of (a, b) draws with the
  training pairs skipped (duplicates kept), as the reference draws it."""
  train_codes = np.unique(train_Nx3[:, 0].astype(np.int64) * p + train_Nx3[:, 1])
  kept, n = [], 0
  for codes in tasks._pair_codes(seed, p, max(2 * test_size, 1024)):  # pylint: disable=protected-access
    pos = np.minimum(np.searchsorted(train_codes, codes), train_codes.size - 1)
    fresh = codes[train_codes[pos] != codes]
    kept.append(fresh)
    n += fresh.size
    if n >= test_size:
      break
  codes = np.concatenate(kept)[:test_size]
  a, b = codes // p, codes % p
  return np.stack([a, b, (a + b) % p], 1).astype(np.int32)
