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


CHUNK = 8192  # contraction block of ``gram`` for long, thin arrays


def gram(w: jax.Array) -> jax.Array:
  """The smaller-side Gram matrix of a 2-D array (W^T W or W W^T), full f32 precision.

  A window of K parameter vectors (K x D, D ~ 10^5..10^7) is summed over blocks of CHUNK
  columns: XLA:CPU runs the single K x D x K product at about a quarter of its matmul rate
  (85 ms against 28 ms for 51 x 421,729 on 2 cores); on a GPU the loop costs a few
  launches."""
  hi = jax.lax.Precision.HIGHEST
  if w.shape[0] >= w.shape[1]:
    w = w.T  # [small, long]
  k, d = w.shape
  if d < 4 * CHUNK:
    return jnp.matmul(w, w.T, precision=hi)
  n = d // CHUNK

  def block(i, g):
    b = jax.lax.dynamic_slice_in_dim(w, i * CHUNK, CHUNK, axis=1)
    return g + jnp.matmul(b, b.T, precision=hi)

  rest = w[:, n * CHUNK:]
  return jax.lax.fori_loop(0, n, block, jnp.matmul(rest, rest.T, precision=hi))


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
