"""Teacher-student linear regression (task ``teacher:<kind>``), the Training-Dynamics
codebase's task: y = W* x + noise, x ~ N(0, I_d), an offline fixed train and test sample.

The framework's data are int32 rows that orderings permute and batches gather. A
regression example is stored in such a row as the float32 bits of [x (d), y (d)]
(``to_rows``; ``split`` reads them back on device, bit for bit), so orderings, batching,
the scanned epoch and the runs axis stay as they are and the loss reads x and y from the
batch itself (``train.Trainer.data_loss``).

Teachers (``TEACHERS``): ``diagonal``, scale * diag(1, 2, ..., d) (that codebase's
``diagonal`` spectrum); ``power_law``, scale * diag(i^-alpha) (its ``power_law``), either
optionally rotated to O^T D O (``rotate``, as its current version always does);
``random``, i.i.d. N(0, scale^2) entries (its earlier ``random_normal``).
Independent numpy streams, as its RNG streams: data_seed -> test inputs, data_seed + 1 ->
train inputs, data_seed + 2 -> train label noise, data_seed + 3 -> a random teacher. The
test targets carry no noise (as there).

Online (``teacher.online``): every optimiser step trains on a fresh batch drawn on device
(``online_rows``) from fold_in(batch key, global step), the batch key being the order
stream's (``order_seed``, else the run's seed); the offline training sample then only
sizes the epoch (train_size / batch_size steps) and gives ``training_loss``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TEACHERS = ('diagonal', 'random', 'power_law')


def haar_orthogonal(dim: int, seed: int) -> np.ndarray:
  """A Haar-random orthogonal matrix [dim, dim]: QR of a Gaussian matrix, R's diagonal
  signs moved into Q (float64), from default_rng(seed)."""
  q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
  return q * np.sign(np.diag(r))


def matrix(kind: str, dim: int, scale: float, seed: int, *, alpha: float = 1.0,
           rotate: bool = False) -> np.ndarray:
  """The teacher W* [dim, dim] (float32). ``rotate``: O^T D O for the diagonal spectra, O
  Haar-random from data_seed + 4 (the codebase's current rotation; same eigenvalues)."""
  if kind in ('diagonal', 'power_law'):
    i = np.arange(1, dim + 1, dtype=np.float64)
    d = np.diag(scale * (i if kind == 'diagonal' else i ** -alpha))
    if rotate:
      o = haar_orthogonal(dim, seed + 4)
      d = o.T @ d @ o
    return d.astype(np.float32)
  if kind == 'random':
    return (scale * np.random.default_rng(seed + 3).standard_normal((dim, dim))).astype(
        np.float32)
  raise ValueError(f'teacher: must be one of {", ".join(TEACHERS)}; got {kind!r}')


def to_rows(x_NxD: np.ndarray, y_NxE: np.ndarray) -> np.ndarray:
  """int32 rows [N, D + E] holding the float32 bits of x, then y."""
  xy = np.concatenate([x_NxD, y_NxE], axis=1).astype(np.float32)
  return np.ascontiguousarray(xy).view(np.int32)


def split(rows_BxC: jax.Array, d_in: int) -> tuple[jax.Array, jax.Array]:
  """(x [B, d_in], y [B, C - d_in]) float32 from ``to_rows``' int32 rows (on device)."""
  xy = jax.lax.bitcast_convert_type(rows_BxC, jnp.float32)
  return xy[:, :d_in], xy[:, d_in:]


def online_rows(key: jax.Array, w_star, batch: int, noise_std: float) -> jax.Array:
  """A fresh batch of int32 rows [batch, 2 dim] on device (``to_rows``' layout): x ~ N(0, I)
  from ``key``, y = W* x plus N(0, noise_std^2) noise from an independent subkey. A pure
  function of the key, so a run's batches are a function of (seed, step)."""
  w = jnp.asarray(w_star, jnp.float32)
  kx, kn = jax.random.split(key)
  x = jax.random.normal(kx, (batch, w.shape[1]), jnp.float32)
  y = x @ w.T
  if noise_std > 0:
    y = y + noise_std * jax.random.normal(kn, y.shape, jnp.float32)
  return jax.lax.bitcast_convert_type(jnp.concatenate([x, y], axis=1), jnp.int32)


def make(kind: str, dim: int, scale: float, noise_std: float, train_size: int,
         test_size: int, seed: int, **matrix_kw) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, test rows) of the offline teacher task; see the module docstring.
  ``matrix_kw``: ``matrix``'s alpha and rotate."""
  w = matrix(kind, dim, scale, seed, **matrix_kw)
  x_test = np.random.default_rng(seed).standard_normal((test_size, dim)).astype(np.float32)
  x_train = np.random.default_rng(seed + 1).standard_normal((train_size, dim)).astype(
      np.float32)
  y_train = x_train @ w.T
  if noise_std > 0:
    y_train = y_train + noise_std * np.random.default_rng(seed + 2).standard_normal(
        y_train.shape).astype(np.float32)
  return to_rows(x_train, y_train), to_rows(x_test, x_test @ w.T)
