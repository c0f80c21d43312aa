"""Shared fixtures: a micro config that compiles in seconds, a persistent compile cache."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from ordered_jax import environment  # noqa: E402

# Tests share compiled programs across in-process runs and subprocesses through JAX's cache.
CACHE = os.environ.setdefault('ORDERED_JAX_CACHE', os.path.join(ROOT, '.cache', 'jax-tests'))
environment.configure(deterministic=True, matmul_precision='highest', compilation_cache=CACHE)

MICRO = dict(p=13, train_size=60, test_size=40, batch_size=16, eval_batch_size=32,
             embed_dim=16, num_heads=2, layers=2, mlp_dim=32, epochs=6, seed=3,
             checkpoint_every=2, keep_every=0, tensorboard=False)


def micro_config(**overrides):
  """The default config shrunk to a model and task that train in milliseconds per epoch."""
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  for k, v in {**MICRO, **overrides}.items():
    c[k] = v
  c.lock()
  return c


@pytest.fixture
def micro():
  return micro_config
