"""The ordering abstraction: a registered object that says in which row order a run sees
the training table each epoch.

An ordering (a subclass of ``Ordering``, registered by name with ``@register``) declares

* ``prepare(train_NxC, config)``: host-side preparation from the run's training table
  (numpy), returning a pytree of arrays ("prepared"; e.g. a sorted order), moved to the
  device once;
* ``order(prepared, key, epoch, run)``: the epoch's row order, a pure, jittable device
  function returning an int32 [N] permutation. ``key`` is the run's order stream,
  ``epoch`` may be traced, ``run`` (a ``RunView``) gives the table size and, for an
  ordering with ``uses_losses``, the run's per-example training losses.

Optional hooks: ``validate`` (one-line ``ConfigError``), ``resolve`` (the config as it
will run), ``make_data`` (an ordering that builds its own data set, resonant),
``run_fields`` (values that identify a run beyond its config, e.g. a file's digest) and
``refresh`` (when to recompute the losses). docs/extending.md shows a new one in one file.

The trainer evaluates each run's order on device at the start of every epoch
(``order_of``): the distinct orderings of a batch are a static tuple in ``train.RunSpec``
and each run carries the index of its own, so runs of one batch may use different
orderings (a ``lax.switch`` on that index; under ``vmap`` every branch runs and the run's
is selected, which costs a few permutations of N integers).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# name -> Ordering subclass, in registration order (the built-ins first: see __init__).
REGISTRY: dict[str, type[Ordering]] = {}


def register(cls):
  """Class decorator: adds an ``Ordering`` subclass under its ``name``."""
  if not cls.name or cls.name in REGISTRY:
    raise ValueError(f'ordering name {cls.name!r} is empty or already registered')
  REGISTRY[cls.name] = cls
  return cls


def get(name: str) -> type[Ordering]:
  """The registered ordering class ``name`` (ValueError naming the allowed ones)."""
  if name not in REGISTRY:
    raise ValueError(f'strategy must be one of {", ".join(REGISTRY)}, got {name!r}')
  return REGISTRY[name]


@struct.dataclass
class RunView:
  """What an ordering may read of its run on device besides its prepared arrays."""

  n: int = struct.field(pytree_node=False)  # rows in the training table (static)
  losses_N: Any = None  # float32 [N]: per-example training losses (``uses_losses`` only)


@dataclasses.dataclass(frozen=True)
class Ordering:
  """Base class of an ordering; instances are static (hashable) parts of a compiled epoch,
  so their fields hold only configuration (e.g. curriculum's direction)."""

  name: ClassVar[str] = ''
  description: ClassVar[str] = ''   # one line for ``--list``
  uses_losses: ClassVar[bool] = False  # ``run.losses_N`` is needed (kept in RunState)
  reads_tokens: ClassVar[bool] = False  # orders by the operands or labels (no teacher task)

  @classmethod
  def from_config(cls, config) -> Ordering:
    """The ordering's static parameters from the (validated) config."""
    del config
    return cls()

  @classmethod
  def validate(cls, config, names: list[str]) -> None:
    """Raise ``runs.ConfigError`` (one line) for a config this ordering cannot run;
    ``names`` are all the strategies of the batch."""
    del config, names

  @classmethod
  def resolve(cls, config):
    """The config as it will run with this ordering (default: unchanged)."""
    return config

  @classmethod
  def make_data(cls, config, n_test: int, seed: int):
    """(train, test) int32 tables when the ordering builds its own data set, else None."""
    del config, n_test, seed
    return None

  def run_fields(self, config) -> dict:
    """Extra values that identify a run of this ordering (added to its saved config)."""
    del config
    return {}

  def prepare(self, train_NxC: np.ndarray, config) -> Any:
    """Host-side arrays (a pytree) computed once from the run's training table."""
    del train_NxC, config
    return None

  def order(self, prepared, key: jax.Array, epoch, run: RunView) -> jax.Array:
    """int32 [N]: the rows of epoch ``epoch`` in the order they are trained on."""
    raise NotImplementedError

  def refresh(self, epoch) -> jax.Array:
    """``uses_losses`` orderings: whether the losses are recomputed before ``epoch``."""
    del epoch
    return jnp.array(False)


# -- helpers shared by orderings and the trainer ------------------------------------------

def default_stride(p: int) -> int:
  """The reference's default stride, int(sqrt(p)) (99 for p = 9973)."""
  return int(math.isqrt(p))


def random_order(key: jax.Array, epoch, n: int) -> jax.Array:
  """Uniform permutation of range(n), int32, a pure function of (key, epoch).

  jit/vmap friendly: ``epoch`` may be traced; ``n`` must be static.
  """
  return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Number of batches per epoch; the last partial batch is kept (as in the reference)."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  return -(-n // batch_size)


def batch_indices(order_N, batch_size: int):
  """[steps, batch] int32 indices and [steps, batch] bool mask, steps = ceil(N / B).

  Consecutive slices of B rows of ``order_N``; the last partial batch is padded with
  index 0 and mask False, so every step has a fixed shape (needed for ``lax.scan``).
  Returns numpy arrays for a numpy input and jax arrays otherwise.
  """
  xp = np if isinstance(order_N, np.ndarray) else jnp
  n = order_N.shape[0]
  steps = steps_per_epoch(n, batch_size)
  pad = steps * batch_size - n
  idx = xp.concatenate([xp.asarray(order_N).astype(xp.int32), xp.zeros((pad,), xp.int32)])
  mask = xp.arange(steps * batch_size) < n
  return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


# -- a batch of runs ----------------------------------------------------------------------

def spec_parts(config, strategies: list[str], train_sets: list[np.ndarray]) -> dict:
  """The ordering fields of ``train.RunSpec`` for runs with these strategies and training
  tables: ``orderings`` (the batch's distinct orderings, static), ``ordering`` (int32 [R],
  each run's index into it) and ``prepared`` (a tuple, one pytree per ordering with a runs
  axis; runs of another ordering hold zeros of the same shapes)."""
  names = list(dict.fromkeys(strategies))
  ords = tuple(get(s).from_config(config) for s in names)
  index = np.array([names.index(s) for s in strategies], np.int32)
  prepared = []
  for j, o in enumerate(ords):
    mine = {r: o.prepare(tr, config) for r, tr in enumerate(train_sets) if index[r] == j}
    like = next(iter(mine.values()))
    blank = jax.tree.map(np.zeros_like, like)
    rows = [mine.get(r, blank) for r in range(len(strategies))]
    prepared.append(jax.tree.map(lambda *xs: np.stack(xs), *rows) if like is not None
                    else None)
  return dict(orderings=ords, ordering=index, prepared=tuple(prepared))


def order_of(orderings: tuple, ordering, prepared: tuple, key, epoch, run: RunView):
  """One run's order for ``epoch``: its ordering's ``order`` (a ``lax.switch`` on the run's
  index when the batch has several)."""
  if len(orderings) == 1:
    return orderings[0].order(prepared[0], key, epoch, run).astype(jnp.int32)
  branches = [lambda o=o, p=p: o.order(p, key, epoch, run).astype(jnp.int32)
              for o, p in zip(orderings, prepared)]
  return jax.lax.switch(ordering, branches)


def uses_losses(orderings: tuple) -> bool:
  return any(o.uses_losses for o in orderings)


def initial_state(orderings: tuple, r: int, n: int):
  """``RunState.order_state`` for R runs: None unless an ordering reads losses; then the
  losses (float32 [R, N]) and the epoch they were computed at (int32 [R], -1 = never)."""
  if not uses_losses(orderings):
    return None
  return {'losses': jnp.zeros((r, n), jnp.float32), 'at': jnp.full((r,), -1, jnp.int32)}


def refresh_due(orderings: tuple, ordering, order_state, epoch):
  """bool [R]: runs whose losses are recomputed before ``epoch`` (their ordering asks for
  it at this epoch, or they have none yet)."""
  due = jnp.zeros(ordering.shape, bool)
  for j, o in enumerate(orderings):
    if o.uses_losses:
      due = due | ((ordering == j) & (o.refresh(epoch) | (order_state['at'] < 0)))
  return due
