"""Determinism settings and environment metadata.

``configure`` must run before JAX initialises its backend (``main.py`` calls it first):
XLA reads ``XLA_FLAGS`` once, at backend start-up.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

DETERMINISTIC_XLA_FLAGS = ('--xla_gpu_deterministic_ops=true',)


def configure(*, deterministic: bool = True, matmul_precision: str = 'highest',
              compilation_cache: str | None = None) -> None:
  """XLA flags for deterministic GPU kernels, float32 matmul precision, threefry, cache."""
  if deterministic:
    flags = os.environ.get('XLA_FLAGS', '').split()
    for flag in DETERMINISTIC_XLA_FLAGS:
      if flag.split('=')[0] not in ' '.join(flags):
        flags.append(flag)
    os.environ['XLA_FLAGS'] = ' '.join(flags)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_default_matmul_precision', matmul_precision)
  jax.config.update('jax_threefry_partitionable', True)
  if compilation_cache:
    jax.config.update('jax_compilation_cache_dir', compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # start-up: cache all


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def metadata() -> dict:
  """What produced a run: versions, backend, devices, flags, precision."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      'python_version': sys.version.split()[0],
      'platform': platform.platform(),
      'jax_version': jax.__version__,
      'jaxlib_version': _version('jaxlib'),
      'flax_version': _version('flax'),
      'optax_version': _version('optax'),
      'orbax_checkpoint_version': _version('orbax-checkpoint'),
      'numpy_version': _version('numpy'),
      'backend': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'float32_matmul_precision': jax.config.jax_default_matmul_precision,
      'threefry_partitionable': bool(jax.config.jax_threefry_partitionable),
      'x64': bool(jax.config.jax_enable_x64),
  }
