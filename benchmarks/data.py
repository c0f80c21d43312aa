"""Time to build the paper's data (p = 9973, 300K train / 1M test) and its static orders.

  python benchmarks/data.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ordered_jax import orderings, tasks  # noqa: E402


def main():
  p, n_train, n_test, seed = 9973, 300_000, 1_000_000, 199
  for generator in tasks.GENERATORS:
    t = time.perf_counter()
    train, test = tasks.make_mod_add(p, n_train, n_test, seed, generator)
    build = time.perf_counter() - t
    t = time.perf_counter()
    for s in ('stride', 'target', 'fixed-random'):
      orderings.static_order(s, train, stride=orderings.default_stride(p))
    print(f'{generator:>9}: {build:.2f} s for {len(train):,} train + {len(test):,} test pairs; '
          f'stride, target and fixed-random orders {time.perf_counter() - t:.2f} s')


if __name__ == '__main__':
  main()
