"""The runs axis over devices: one ``jax.sharding.Mesh`` with a ``'runs'`` axis.

A batch of R runs is vmapped over its leading axis, so spreading it over D devices is only
a matter of where its arrays live: every leaf with a runs axis gets
``NamedSharding(mesh, P('runs'))`` and the jitted epoch is partitioned by XLA (no pmap, no
code change). Shared data is replicated. R is padded to a multiple of D with copies of run
0 that are inactive from the start (frozen by the same masking as an early-stopped run);
they are never written. On one device all of this is the identity.

Several processes (hosts): after ``jax.distributed.initialize()`` (``main.py
--distributed``) ``jax.devices()`` lists every process's devices and the same mesh spans
them. Every process runs the same program; ``fetch`` gathers what the host reads, and only
the primary process (``is_primary``) writes files (docs/sweeps.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'runs'


def multiprocess() -> bool:
  """Whether several processes share the computation (``jax.distributed``)."""
  return jax.process_count() > 1


def is_primary() -> bool:
  """The process that writes files (process 0)."""
  return jax.process_index() == 0


# Gloo sets up its CPU collectives lazily, at the first cross-process computation, and
# gives the peers a fixed 30 s to meet there (not configurable): on a loaded machine one
# process can reach it later than that. Every barrier and the first gather therefore meet
# first at the coordination service's own barrier, whose timeout is ours.
BARRIER_TIMEOUT_S = 1800


def fetch(tree: Any) -> Any:
  """A device pytree as numpy on this host: ``device_get``, or with several processes an
  all-gather (every process must call it, like any computation on global arrays)."""
  if multiprocess():
    _meet('fetch')
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def barrier(name: str) -> None:
  """Wait until every process gets here (no-op with one process), for up to
  ``BARRIER_TIMEOUT_S`` (the coordination service's barrier, not a collective)."""
  if multiprocess():
    _meet(name)


_meetings: dict[str, int] = {}


def _meet(name: str) -> None:
  """Every process at the coordination service's barrier ``name`` (numbered, since a
  barrier id is single-use); falls back to a collective where there is no client."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client
  if client is None:
    multihost_utils.sync_global_devices(name)
    return
  n = _meetings[name] = _meetings.get(name, 0) + 1
  client.wait_at_barrier(f'ordered_jax/{name}/{n}', BARRIER_TIMEOUT_S * 1000)


def runs_mesh(devices=None) -> Mesh:
  """A 1-D mesh named 'runs' over ``devices`` (default: every device JAX sees)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def padding(n_runs: int, mesh: Mesh) -> int:
  """Runs to add so that the batch divides evenly over the mesh."""
  return (-n_runs) % mesh.size


def _pad(tree: Any, n_pad: int) -> Any:
  """Append ``n_pad`` copies of run 0 along the leading axis."""
  if not n_pad:
    return tree
  return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], n_pad, axis=0)]), tree)


def place(state, spec, data, mesh: Mesh, n_pad: int, *, shared_data: bool):
  """(state, spec, data) padded by ``n_pad`` inactive runs and laid out over ``mesh``:
  runs-axis leaves split over 'runs', shared data replicated."""
  if multiprocess():  # each process holds the whole batch: host copies, then global arrays
    state, spec, data = jax.device_get((state, spec, data))
  if n_pad:
    state = _pad(state, n_pad)
    r = state.active.shape[0]
    state = state.replace(active=state.active.at[r - n_pad:].set(False))
    spec = _pad(spec, n_pad)
    if not shared_data:
      data = _pad(data, n_pad)
  if mesh.size == 1:
    return state, spec, data
  split, whole = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
  state = jax.device_put(state, split)
  spec = jax.device_put(spec, split)
  data = jax.device_put(data, whole if shared_data else split)
  return state, spec, data
