"""Spectra for the probes: Gram matrices on the device, eigenvalues on the host.

No probe calls a LAPACK kernel (``eigh``, ``eigvalsh``, ``svd``) inside the jitted epoch.
jaxlib 0.10's CPU kernels hand a batch (our runs, under ``vmap``) to XLA's intra-op thread
pool and block until it is done; XLA runs independent kernels at the same time, so with as
many of them in flight as the pool has threads (two, on a laptop or a CI runner) every
thread waits on work queued behind itself and the process hangs. Ordering them does not
help: XLA:CPU drops ``optimization_barrier`` before scheduling. Instead a probe returns
the small Gram matrix of what it wants the spectrum of (one matmul: the smaller side
squared, at most d x d = 128 x 128 at paper size) under a ``GRAM`` key, and its
``to_host`` takes the eigenvalues in float64 numpy. The Lanczos tridiagonal matrix is
solved on device by ``jax.scipy.linalg.eigh_tridiagonal`` (pure JAX, no LAPACK).

Singular values from a float32 Gram matrix are exact to about eps * s_1^2 / s_i: ample
for the top values, norms of the spectrum and rank summaries the probes report.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GRAM = 'gram'  # metric-key prefix of device Gram matrices that to_host turns into spectra


def gram(w: jax.Array) -> jax.Array:
  """The smaller-side Gram matrix of a 2-D array (W^T W or W W^T), full f32 precision."""
  hi = jax.lax.Precision.HIGHEST
  if w.shape[0] >= w.shape[1]:
    return jnp.matmul(w.T, w, precision=hi)
  return jnp.matmul(w, w.T, precision=hi)


def eigenvalues(g: np.ndarray) -> np.ndarray:
  """Eigenvalues of a symmetric matrix, descending, clipped at 0 (a Gram matrix's)."""
  return np.clip(np.linalg.eigvalsh(np.asarray(g, np.float64))[::-1], 0.0, None)


def singular_values(g: np.ndarray) -> np.ndarray:
  """Singular values of W, descending, from ``gram(W)``."""
  return np.sqrt(eigenvalues(g))


def pop_grams(m: dict) -> tuple[dict, dict]:
  """(the metrics without Gram matrices, {name: Gram matrix}) from a probe's host metrics."""
  prefix = GRAM + '/'
  grams = {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}
  return {k: v for k, v in m.items() if not k.startswith(prefix)}, grams
