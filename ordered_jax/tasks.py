"""The (a + b) mod p task: train/test example tables.

Two generators:

* ``'reference'`` reproduces the PyTorch reference's pairs exactly (stdlib ``random``
  seeded with ``seed``; train = a Python set filled in draw order and listed in set
  iteration order; test = the continued stream, train pairs skipped, duplicates kept).
  It is vectorised by replaying CPython's Mersenne Twister words in numpy.
* ``'fast'``: numpy ``default_rng(seed)``; train and test are disjoint, neither has a
  duplicate pair, and the train rows come in random order (the fast "fixed-random").

Both return int32 tables with columns (a, b, (a + b) % p).
"""

from __future__ import annotations

import math
import random
from typing import Iterator

import numpy as np

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
  pairs = p * p
  words_per_draw = 2 * (1 << p.bit_length()) / p
  train_draws = _expected_draws(train_size, pairs)
  test_draws = test_size * pairs / max(pairs - train_size, 1)
  chunk = int(words_per_draw * 1.02 * (train_draws + test_draws)) + 1024
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
  return (_with_sum(train_ab[:, 0], train_ab[:, 1], p),
          _with_sum(test_codes // p, test_codes % p, p))


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
