"""Orbax checkpoints of one run: save, restore with fallback, final parameters.

Each run folder holds its own ``checkpoints/`` (an Orbax ``CheckpointManager`` whose
step is the number of epochs completed) and ``final_params/``. A checkpoint is the run's
full ``RunState`` (params, optimiser state, RNG key data, epoch, stopping state) plus a
JSON ``meta`` item with the host-side bookkeeping, so a resume is bit-identical. Orbax
writes to a temporary directory and renames it when complete, so a kill during a save
leaves the previous checkpoints intact; saves are asynchronous (training goes on while
the files are written). Nothing is unpickled on restore.

Every checkpoint's ``meta`` carries ``checksum``: a BLAKE2b digest of the saved state
(each leaf's dtype, shape and bytes, in tree order, computed on the host from what is
handed to Orbax) and of the bookkeeping. ``restore`` recomputes it from what it read and
raises ``CorruptCheckpoint`` on a mismatch, so ``restore_latest`` falls back to the
previous checkpoint (with a warning) instead of resuming from silently damaged numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm


def _this_process() -> ocp.options.MultiprocessingOptions:
  """Orbax coordinates this process only: we save host (numpy) copies from the primary
  process and every process restores on its own, so no cross-process barriers."""
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def manager(run_dir: str, *, keep: int = 3, keep_every: int = 0,
            read_only: bool = False) -> ocp.CheckpointManager:
  """The run's manager: keeps the latest ``keep`` steps and every ``keep_every``-th epoch."""
  policies = [cm.LatestN(n=keep)]
  if keep_every:
    policies.append(cm.EveryNSteps(interval_steps=keep_every))
  root = os.path.join(os.path.abspath(run_dir), 'checkpoints')
  extra = {}
  if jax.process_count() > 1:  # Orbax leaves the folder to us when it coordinates one process
    extra = dict(multiprocessing_options=_this_process(), create=False)
    if not read_only:
      os.makedirs(root, exist_ok=True)
  options = ocp.CheckpointManagerOptions(**{
      'preservation_policy': cm.AnyPreservationPolicy(policies),
      'enable_async_checkpointing': not read_only, 'read_only': read_only,
      'create': not read_only, **extra})
  return ocp.CheckpointManager(root, options=options, item_names=('state', 'meta'))


CHECKSUM = 'checksum'  # the meta key holding the digest (not part of the bookkeeping)


class CorruptCheckpoint(ValueError):
  """A checkpoint whose contents do not match what was saved (one-line message)."""


def digest(state: Any, meta: dict) -> str:
  """BLAKE2b of ``state``'s leaves (dtype, shape, bytes, in tree order) and of ``meta``
  (canonical JSON, as it reads back)."""
  h = hashlib.blake2b(digest_size=20)
  for leaf in jax.tree.leaves(jax.device_get(state)):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.tobytes())
  h.update(json.dumps(json.loads(json.dumps(meta)), sort_keys=True).encode())
  return h.hexdigest()


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Asynchronous save of one run's state after ``step`` epochs (replaces an equal step),
  with the checksum of ``state`` and ``meta`` in the saved meta."""
  if step in mgr.all_steps():
    mgr.wait_until_finished()
    mgr.delete(step)
  state = jax.device_get(state)  # the host copy both the digest and Orbax read
  meta = {**meta, CHECKSUM: {'blake2b': digest(state, meta)}}
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_stored(state)),
                                         meta=ocp.args.JsonSave(meta)), force=True)


def _target(like: Any):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, like)


def _stored(state: Any) -> Any:
  """What Orbax writes of a state: a dataclass (``train.RunState``) as {field: value}
  with the fields that are None left out, so a field added later with a None default
  (``order_state``) still reads the checkpoints written before it. The digest is taken
  on the state itself (None adds no leaves: old checksums still match)."""
  if dataclasses.is_dataclass(state) and not isinstance(state, type):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if getattr(state, f.name) is not None}
  return state


def _rebuilt(like: Any, stored: Any) -> Any:
  """Inverse of ``_stored``: ``like``'s dataclass with the restored fields."""
  if dataclasses.is_dataclass(like) and isinstance(stored, dict):
    return like.replace(**stored)
  return stored


def read(mgr: ocp.CheckpointManager, step: int, like: Any) -> tuple[Any, dict, bool | None]:
  """(state, meta, intact) saved at ``step`` without judging them: ``intact`` says whether
  they match the checksum saved with them (None: written before checksums existed).
  ``CorruptCheckpoint`` only if the meta is not a JSON object."""
  out = mgr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_stored(_target(like))), meta=ocp.args.JsonRestore()))
  state, meta = _rebuilt(like, out['state']), out['meta']
  if not isinstance(meta, dict):
    raise CorruptCheckpoint(f'its meta is a JSON {type(meta).__name__}, not an object')
  meta = dict(meta)
  saved = meta.pop(CHECKSUM, None)
  if saved is None:
    return state, meta, None
  want = saved.get('blake2b') if isinstance(saved, dict) else None
  return state, meta, want == digest(state, meta)


def restore(mgr: ocp.CheckpointManager, step: int, like: Any) -> tuple[Any, dict]:
  """(state, meta) saved at ``step``; ``like`` is a state of the same structure.

  ``meta`` comes back without its checksum; ``CorruptCheckpoint`` if the meta is not a
  JSON object or the state and meta read do not match the checksum saved with them
  (checkpoints written before checksums existed load unverified)."""
  state, meta, intact = read(mgr, step, like)
  if intact is False:
    raise CorruptCheckpoint('its contents do not match the checksum saved with them')
  return state, meta


def steps(run_dir: str) -> list[int]:
  """The finished checkpoint steps of a run folder (from the folder names; no Orbax)."""
  root = os.path.join(run_dir, 'checkpoints')
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root)
                if n.isdigit() and os.path.isdir(os.path.join(root, n)))


def restore_latest(mgrs: list[ocp.CheckpointManager], likes: list[Any],
                   check_meta: Callable[[dict], None] | None = None, errors=None):
  """Restore every run of a batch at the newest step all of them can load.

  A step whose files are damaged, fail their checksum, hold a meta ``check_meta`` rejects
  (it raises ValueError) or are missing for some run is skipped with a warning and the
  previous one is tried. Returns (step, [state], [meta]) or None if nothing loads; each
  failure is appended to ``errors`` (a list) as (step, one-line reason).
  """
  common = set(mgrs[0].all_steps())
  for m in mgrs[1:]:
    common &= set(m.all_steps())
  for step in sorted(common, reverse=True):
    where = ''
    try:
      pairs = []
      for m, like in zip(mgrs, likes):
        where = os.path.join(str(m.directory), str(step))
        pairs.append(restore(m, step, like))
        if check_meta is not None:
          check_meta(pairs[-1][1])
    except Exception as e:  # pylint: disable=broad-except
      text = (str(e).splitlines() or [''])[0].split(' See full TensorStore details')[0][:200]
      why = f'{type(e).__name__}: {text}' if text and not text.startswith('<') else (
          type(e).__name__)
      logging.warning('the checkpoint after epoch %d (%s) cannot be restored (%s); trying '
                      'the previous one', step - 1, where, why)
      if errors is not None:
        errors.append((step, why))
      continue
    return step, [s for s, _ in pairs], [m for _, m in pairs]
  return None


def save_params(run_dir: str, params: Any) -> None:
  """Write ``<run_dir>/final_params`` (synchronously; replaces an older copy)."""
  path = os.path.join(os.path.abspath(run_dir), 'final_params')
  extra = dict(multiprocessing_options=_this_process()) if jax.process_count() > 1 else {}
  with ocp.StandardCheckpointer(**extra) as ckptr:
    ckptr.save(path, params, force=True)


def load_params(run_dir: str, model=None) -> Any:
  """A run's parameters for a notebook: the final ones, else the latest checkpoint's.

  ``model`` (an ``ordered_jax.models.Model``) gives the target structure; without it the
  arrays come back as stored (layer indices as strings). Example::

      model = models.Model(models.ModelConfig(vocab=97, ...))
      params = checkpoint.load_params('output/stride', model)
  """
  run_dir = os.path.abspath(run_dir)
  final = os.path.join(run_dir, 'final_params')
  target = _target(model.abstract_params()) if model is not None else None
  if os.path.isdir(final):
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(final, target)
  mgr = manager(run_dir, read_only=True)
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f'no final_params or checkpoints in {run_dir}')
  restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  params = restored['state']['params']
  if model is not None:
    params = jax.tree.map(lambda t, x: jax.numpy.asarray(x, t.dtype), target,
                          _relabel(params, target))
  return params


def _relabel(stored, target):
  """Map a restored tree whose list indices became strings onto ``target``'s keys."""
  if isinstance(target, dict):
    return {k: _relabel(stored[k] if k in stored else stored[str(k)], v)
            for k, v in target.items()}
  return stored


def load_weights(path: str, model) -> Any:
  """Parameters shaped for ``model`` from any saved form (``init_from``, analysis).

  ``path`` is a reference ``.pt`` file (read without torch, ``ordered_jax.torch_import``),
  one of our run folders (final weights, else the latest checkpoint), its
  ``final_params/`` or one ``checkpoints/<step>/`` folder. Raises FileNotFoundError or
  ValueError (wrong shapes, unreadable file)."""
  from ordered_jax import torch_import  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if os.path.isfile(path):
    return torch_import.load_params(path, model.cfg)[0]
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no such file or directory: {path}')
  target = _target(model.abstract_params())
  if os.path.isdir(os.path.join(path, 'state')):  # checkpoints/<step>/
    with ocp.StandardCheckpointer() as ckptr:
      stored = ckptr.restore(os.path.join(path, 'state'))['params']
    return jax.tree.map(lambda t, x: jax.numpy.asarray(x, t.dtype), target,
                        _relabel(stored, target))
  if os.path.exists(os.path.join(path, '_CHECKPOINT_METADATA')):  # final_params/
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(path, target)
  return load_params(path, model)
