"""Parameter trajectories (the reference's ``--record-trajectory``): every run's weights
every ``trajectory.every`` epochs, one compact, append-only file per run.

``<run>/trajectory.npy`` is a NumPy ``.npy`` file of records (``np.load`` reads it), each
``(epoch, params)``: ``epoch`` (int32) is the epoch just trained, as in the JSONL rows
(-1 = the initial weights), ``params`` (float32 [D]) the run's parameters then, flattened
leaf by leaf in tree order (``models.param_names``) and, with ``projection='random:K'``,
projected to K numbers (``project``). Records are written for the initial weights, after
every epoch ``e`` with ``e % every == 0`` (the checkpoint convention: the weights of
checkpoint ``e + 1``) and after the run's last trained epoch. ``<run>/trajectory.json``
says what the numbers are (projection, seed, D, the leaves' names and shapes).

Crash safety: a record is appended after the last complete one and flushed, and only
then does the header count it (the ``.npy`` header is padded to a fixed length and
rewritten in place), so a kill loses at most the record being written. ``--resume``
drops the records after the checkpoint it continues from, so none repeats, and the final
record that a run capped by ``stop_after`` wrote off the schedule, so a capped and
continued run's file equals an uninterrupted run's.
"""

from __future__ import annotations

import ast
import json
import math
import os
from typing import Any

import numpy as np

FILENAME = 'trajectory.npy'
META = 'trajectory.json'
NONE = 'none'
MAX_K = 1 << 20
_MAGIC = b'\x93NUMPY\x01\x00'
_CHUNK = 4096  # rows of the projection generated at a time (memory: CHUNK x K floats)


# -- config ----------------------------------------------------------------------------

def parse_projection(text) -> int:
  """K of ``'random:K'``, 0 for ``'none'``; ValueError (one line) otherwise."""
  if text == NONE:
    return 0
  kind, _, k = str(text).partition(':')
  if kind != 'random' or not k.isdigit() or not 1 <= int(k) <= MAX_K:
    raise ValueError(f"must be 'none' (float32 parameters) or 'random:K' (a Gaussian "
                     f'projection to K in 1 .. {MAX_K} numbers); got {text!r}')
  return int(k)


def enabled(config) -> bool:
  return 'trajectory' in config and config.trajectory.every > 0


def spec(config) -> dict:
  """What the file's numbers are (``trajectory.json`` without the layout)."""
  t = config.trajectory
  return {'format': 1, 'projection': t.projection, 'seed': int(t.seed)}


# -- the numbers -------------------------------------------------------------------------

def leaves(params) -> list[tuple[str, tuple[int, ...]]]:
  """(name, shape) of every leaf of ONE run's parameters, in the order they are flattened."""
  import jax  # pylint: disable=g-import-not-at-top
  from ordered_jax import models  # pylint: disable=g-import-not-at-top
  return [(n, tuple(int(d) for d in x.shape))
          for n, x in zip(models.param_names(params), jax.tree.leaves(params))]


def projection_rows(seed: int, k: int, rows):
  """Rows ``rows`` of the projection matrix G [D, K]: G[i] = N(0, 1)^K drawn with
  ``fold_in(key(seed), i)``, divided by sqrt(K) (so E|x G|^2 = |x|^2)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  key = jax.random.key(seed)
  draw = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (k,), jnp.float32))
  return draw(jnp.asarray(rows, jnp.uint32)) / jnp.float32(math.sqrt(k))


def project(x_RxD, seed: int, k: int):
  """x G for every run (G of ``projection_rows``), generated ``_CHUNK`` rows at a time so
  that G is never held whole (a paper model has millions of parameters)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  r, d = x_RxD.shape
  n = -(-d // _CHUNK)
  x = jnp.pad(x_RxD, ((0, 0), (0, n * _CHUNK - d))).reshape(r, n, _CHUNK).transpose(1, 0, 2)

  def body(acc, cx):
    c, xc = cx
    g = projection_rows(seed, k, c * _CHUNK + jnp.arange(_CHUNK, dtype=jnp.uint32))
    return acc + jnp.matmul(xc, g, precision=jax.lax.Precision.HIGHEST), None

  out, _ = jax.lax.scan(body, jnp.zeros((r, k), jnp.float32),
                        (jnp.arange(n, dtype=jnp.uint32), x))
  return out


def memory(projection: str, n_params: int, n_runs: int) -> int:
  """Bytes ``make_vectors`` holds at once (within a few percent of XLA's own count, tested):
  the runs' flat parameters (the leaves, then their padded and chunked copies), the [R, K]
  result and, with a projection, about four ``_CHUNK`` x K arrays (a chunk of G and the
  random bits it is drawn from)."""
  k = parse_projection(projection)
  padded = -(-n_params // _CHUNK) * _CHUNK
  return 4 * (n_runs * (n_params + 2 * padded + k) + (4 * _CHUNK * k if k else 0))


def make_vectors(projection: str, seed: int):
  """A jitted function: batched params (leading runs axis) -> float32 [R, D or K]."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  k = parse_projection(projection)

  def vectors(params):
    flat = [x.reshape(x.shape[0], -1).astype(jnp.float32) for x in jax.tree.leaves(params)]
    x = jnp.concatenate(flat, axis=1)
    return project(x, seed, k) if k else x

  return jax.jit(vectors)


# -- the file ----------------------------------------------------------------------------

def record_dtype(dim: int) -> np.dtype:
  return np.dtype([('epoch', '<i4'), ('params', '<f4', (dim,))])


def _header(dim: int, n: int) -> bytes:
  """The .npy v1.0 header for ``n`` records, always the same length for a given ``dim``."""
  descr = np.lib.format.dtype_to_descr(record_dtype(dim))
  text = "{'descr': %r, 'fortran_order': False, 'shape': (%d,), }" % (descr, n)
  widest = len(text) - len(str(n)) + 20  # room for any count
  size = -(-(len(_MAGIC) + 2 + widest + 1) // 64) * 64
  body = text.ljust(size - len(_MAGIC) - 2 - 1) + '\n'
  return _MAGIC + len(body).to_bytes(2, 'little') + body.encode('latin1')


def read_header(f) -> tuple[int, int, int]:
  """(dim, records the header counts, header length) of an open trajectory file;
  ValueError if it is not one."""
  f.seek(0)
  head = f.read(10)
  if len(head) < 10 or head[:8] != _MAGIC:
    raise ValueError('not a trajectory file (.npy v1.0)')
  length = int.from_bytes(head[8:10], 'little')
  try:
    d = ast.literal_eval(f.read(length).decode('latin1'))
    dtype = np.lib.format.descr_to_dtype(d['descr'])
    dim = dtype['params'].shape[0]
    n = int(d['shape'][0])
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'not a trajectory file ({type(e).__name__})') from None
  if dtype != record_dtype(dim):
    raise ValueError(f'not a trajectory file (records of {dtype})')
  return dim, n, 10 + length


def load(path: str, mmap: bool = False) -> np.ndarray:
  """The complete records of a trajectory file (structured: ``epoch``, ``params``), the
  ones its header counts; ``mmap``: read lazily (``np.memmap``, read-only)."""
  with open(path, 'rb') as f:
    dim, n, start = read_header(f)
    dtype = record_dtype(dim)
    count = min(n, (os.fstat(f.fileno()).st_size - start) // dtype.itemsize)
    if mmap:
      if not count:
        return np.zeros((0,), dtype)
      return np.memmap(f, dtype=dtype, mode='r', offset=start, shape=(count,))
    f.seek(start)
    return np.fromfile(f, dtype=dtype, count=count)


class Writer:
  """One run's ``trajectory.npy``, appended a record at a time (see the module docstring)."""

  def __init__(self, path: str, dim: int, *, keep_before: int | None = None,
               every: int = 0):
    """A new file, or (``keep_before`` = the first epoch this invocation trains) the
    existing one without its records of epochs >= ``keep_before`` and, given ``every`` (the
    run goes on training), without a last record off the schedule (``finish``'s, not the
    file's first: the initial weights)."""
    self.path, self.dim = path, dim
    self.dtype = record_dtype(dim)
    if keep_before is not None and os.path.exists(path):
      with open(path, 'rb') as f:
        old_dim, _, _ = read_header(f)
      if old_dim != dim:
        raise ValueError(f'{path} holds {old_dim} numbers per record, this run {dim}')
      epochs = np.array(load(path, mmap=True)['epoch'])
      self.n = int(np.sum(epochs < keep_before))
      if every and self.n > 1 and epochs[self.n - 1] % every:
        self.n -= 1
      self.last = int(epochs[self.n - 1]) if self.n else None
      self.f = open(path, 'r+b')
    else:
      self.n, self.last = 0, None
      self.f = open(path, 'w+b')
    self.start = len(_header(dim, 0))
    self._commit()
    self.f.truncate(self.start + self.n * self.dtype.itemsize)

  def _commit(self) -> None:
    self.f.seek(0)
    self.f.write(_header(self.dim, self.n))
    self.f.flush()

  def append(self, epoch: int, vector: np.ndarray) -> None:
    rec = np.zeros((), self.dtype)
    rec['epoch'], rec['params'] = epoch, vector
    self.f.seek(self.start + self.n * self.dtype.itemsize)
    self.f.write(rec.tobytes())
    self.f.flush()
    os.fsync(self.f.fileno())
    self.n += 1
    self.last = epoch
    self._commit()

  def close(self) -> None:
    if not self.f.closed:
      self.f.close()


def read_meta(run_dir: str) -> dict | None:
  path = os.path.join(run_dir, META)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_resume(config, dirs) -> str | None:
  """Why this config cannot continue the runs' trajectory files (one line), or None."""
  if not enabled(config):
    return None
  want = spec(config)
  for d in dirs:
    try:
      old = read_meta(d)
    except (OSError, ValueError):
      return f'{os.path.join(d, META)} cannot be read; remove it and {FILENAME} to start anew'
    if old is not None and any(old.get(k) != v for k, v in want.items()):
      k = next(k for k, v in want.items() if old.get(k) != v)
      return (f'trajectory.{k} differs from the run\'s {FILENAME} ({old.get(k)!r} -> '
              f'{want[k]!r}); resume with the same, or move {os.path.join(d, FILENAME)} away')
  return None


class Recorder:
  """Every run's trajectory during one invocation of ``experiment.run``."""

  def __init__(self, config, dirs: list[str], params_1run: Any, *, start: int,
               resume: bool, active=None, write: bool = True):
    """``active[i]``: run i trains on from ``start`` (on ``resume``; None: all do)."""
    from ordered_jax import sinks  # pylint: disable=g-import-not-at-top
    t = config.trajectory
    self.every, self.write = int(t.every), write
    self.vectors = make_vectors(t.projection, int(t.seed))
    k = parse_projection(t.projection)
    layout = leaves(params_1run)
    dim = k or sum(math.prod(s) for _, s in layout)
    self.writers = []
    for d in dirs if write else []:
      path = os.path.join(d, FILENAME)
      sinks.write_json(os.path.join(d, META), {
          **spec(config), 'every': self.every, 'dim': dim,
          'parameters': sum(math.prod(s) for _, s in layout),
          'leaves': [[n, list(s)] for n, s in layout]})
      if resume and start > 0 and not os.path.exists(path):
        from absl import logging  # pylint: disable=g-import-not-at-top
        logging.warning('--resume: %s is gone; it starts again with the records from epoch '
                        '%d on (the earlier ones are not recomputed)', path, start)
      try:
        goes_on = active is None or bool(active[len(self.writers)])
        self.writers.append(Writer(path, dim, keep_before=start if resume else None,
                                   every=self.every if goes_on else 0))
      except ValueError as e:
        from ordered_jax import workdir  # pylint: disable=g-import-not-at-top
        raise workdir.WorkdirError(f'--resume: {path} cannot be continued ({e}); move it '
                                   'away to start a new one') from None

  def _fetch(self, params) -> np.ndarray:
    from ordered_jax import sharding  # pylint: disable=g-import-not-at-top
    return np.asarray(sharding.fetch(self.vectors(params)))

  def initial(self, params, epoch: int = -1) -> None:
    """The weights every run starts from, as after ``epoch`` (-1: the initial weights;
    ``init_optimizer`` continues a reference run after its epoch ``start - 1``)."""
    v = self._fetch(params)
    for i, w in enumerate(self.writers):
      w.append(epoch, v[i])

  def due(self, epoch: int) -> bool:
    return epoch % self.every == 0

  def after_epoch(self, epoch: int, params, trained) -> None:
    """After ``epoch``: a record for every run that trained it, if the epoch is due."""
    if not self.due(epoch):
      return
    v = self._fetch(params)
    for i, w in enumerate(self.writers):
      if trained[i]:
        w.append(epoch, v[i])

  def finish(self, params, last_epochs) -> None:
    """Each run's final weights (after ``last_epochs[i]``), unless already recorded (every
    process fetches: with several, the fetch is a collective)."""
    if all(e is None for e in last_epochs):
      return
    v = self._fetch(params)
    for i, (w, e) in enumerate(zip(self.writers, last_epochs)):
      if e is not None and w.last != e:
        w.append(e, v[i])

  def close(self) -> None:
    for w in self.writers:
      w.close()
