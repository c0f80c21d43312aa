"""Shared fixtures: a micro config that compiles in seconds, a persistent compile cache."""

import collections
import contextlib
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


def set_fields(config, fields: dict):
  """``config`` with dotted ``fields`` set (``{'grokfast.kind': 'ema'}``; a locked config
  refuses a key it lacks)."""
  for k, v in fields.items():
    node = config
    *path, last = k.split('.')
    for p in path:
      node = node[p]
    node[last] = v
  return config


@pytest.fixture
def micro():
  return micro_config


# The LAPACK-backed primitives no probe may put inside the jitted epoch (probes.spectra).
LAPACK_PRIMITIVES = frozenset({'eigh', 'svd', 'eig', 'cholesky', 'lu', 'qr',
                               'householder_product', 'schur', 'hessenberg', 'tridiagonal',
                               'geqrf', 'geqp3', 'lu_pivots_to_permutation'})


def jaxpr_primitive_counts(jaxpr) -> collections.Counter:
  """How often each primitive occurs in a jaxpr, sub-jaxprs (scan, cond, while, pjit)
  included."""
  counts = collections.Counter()
  for eqn in jaxpr.eqns:
    counts[eqn.primitive.name] += 1
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          counts += jaxpr_primitive_counts(inner)
  return counts


def jaxpr_primitives(jaxpr) -> set:
  """Every primitive name in a jaxpr, sub-jaxprs included."""
  return set(jaxpr_primitive_counts(jaxpr))


def epoch_info(**kw):
  """An ``instrument.EpochInfo`` with neutral defaults, for probe unit tests."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ordered_jax import instrument  # pylint: disable=g-import-not-at-top
  base = dict(epoch=jnp.int32(0), params=None, params_before=None, opt_state=None,
              grad_mean=None, loss=jnp.float32(1.0), learning_rate=jnp.float32(1e-3),
              key=jax.random.key(0), train_NxC=None, first_batch_BxC=None,
              validation_accuracy=jnp.float32(0.0), apply=None, loss_fn=None)
  base.update(kw)
  return instrument.EpochInfo(**base)


@contextlib.contextmanager
def crash_after_epoch(monkeypatch, epoch: int):
  """Inside the block, a ``RuntimeError('simulated crash')`` is raised right after the
  metrics row of ``epoch`` is written (what a kill then leaves on disk); the block must
  raise it. The real sink is back afterwards."""
  from ordered_jax import sinks  # pylint: disable=g-import-not-at-top
  real = sinks.JsonlSink.write

  def crash(self, e, metrics):
    real(self, e, metrics)
    if e == epoch:
      raise RuntimeError('simulated crash')

  monkeypatch.setattr(sinks.JsonlSink, 'write', crash)
  try:
    with pytest.raises(RuntimeError, match='simulated crash'):
      yield
  finally:
    monkeypatch.setattr(sinks.JsonlSink, 'write', real)


def pytest_configure(config):
  """The slowest tests listed at the end of every run (CI's log shows where time goes)."""
  if config.option.durations is None:
    config.option.durations = 15
