"""``main.py --validate_checkpoints``: replay a config against an earlier run's checkpoints.

As the reference's ``--validate-checkpoints``: the config's runs are trained again from
the start, in memory, as one batch exactly as the run was (data, initial weights,
probes, sharding), and after every epoch that has a saved checkpoint the recomputed
state (params, optimiser state, key, epoch, stopping state, probe state) and the
host-side bookkeeping are compared bit for bit with what the checkpoint holds. Each
difference names the first differing array in tree order (e.g.
``params.layers.0.attn.qkv.kernel``), how many of its values differ and by how much.
Nothing in the workdir is written: the checkpoints are opened read-only.

This is how a user shows that a run repeats on their machine or GPU: any difference is
non-determinism, a changed environment, or checkpoint files changed after they were
written (then their checksum fails too, and the report says so).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ordered_jax import (budget, checkpoint, continuation, environment, experiment, identity,
                         orderings, runs, sharding, train)

WorkdirError = experiment.WorkdirError
FLAG = '--validate_checkpoints'
# Bookkeeping that is not part of the computation (wall-clock times).
TIMING = ('duration_seconds', 'compile_seconds')


@dataclasses.dataclass(frozen=True)
class Check:
  """One run's comparison at one checkpoint (``step`` = epochs completed)."""

  run: str
  step: int
  tensor: str | None = None  # the first differing array (or ``meta.<key>``); None = identical
  detail: str = ''           # what differs in it
  intact: bool | None = None  # the saved files match their checksum (None: none saved)

  @property
  def identical(self) -> bool:
    return self.tensor is None


def _name(path) -> str:
  return '.'.join(str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))
                  for k in path)


def _differing(x: np.ndarray, y: np.ndarray) -> str:
  """How two same-shaped arrays differ, bit for bit (NaNs compare by their bits)."""
  if x.dtype.itemsize not in (1, 2, 4, 8):
    n = int(np.sum(x != y))
  else:
    bits = np.dtype(f'u{x.dtype.itemsize}')
    n = int(np.count_nonzero(np.ascontiguousarray(x).reshape(-1).view(bits) !=
                             np.ascontiguousarray(y).reshape(-1).view(bits)))
  text = f'{n} of {x.size} values differ'
  if np.issubdtype(x.dtype, np.floating):
    d = np.abs(x.astype(np.float64) - y.astype(np.float64))
    d = d[np.isfinite(d)]
    if d.size:
      text += f', max |difference| {float(d.max()):.3g}'
  return text


def first_difference(got: Any, saved: Any) -> tuple[str, str] | None:
  """(name, what) of the first array, in tree order, whose dtype, shape or bytes differ
  between two states of the same structure; None if they are bit-identical."""
  mine = jax.tree_util.tree_flatten_with_path(jax.device_get(got))[0]
  theirs = jax.tree.leaves(jax.device_get(saved))
  if len(mine) != len(theirs):
    return 'state', f'{len(mine)} arrays against {len(theirs)} saved'
  for (path, x), y in zip(mine, theirs):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape:
      return _name(path), f'{x.dtype}{list(x.shape)} against {y.dtype}{list(y.shape)} saved'
    if x.tobytes() != np.ascontiguousarray(y).tobytes():
      return _name(path), _differing(x, y)
  return None


def meta_difference(got: dict, saved: dict) -> tuple[str, str] | None:
  """The first bookkeeping key (timings aside) whose value differs, as JSON reads it."""
  mine = json.loads(json.dumps({k: v for k, v in got.items() if k not in TIMING}))
  theirs = {k: v for k, v in saved.items() if k not in TIMING}
  for k in sorted(set(mine) | set(theirs)):
    if mine.get(k, '<missing>') != theirs.get(k, '<missing>'):
      return f'meta.{k}', f'{theirs.get(k, "<missing>")!r} saved, {mine.get(k, "<missing>")!r} now'
  return None


def _saved_config(run_dir: str) -> dict:
  path = os.path.join(run_dir, 'experiment_config.json')
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    why = e.strerror if isinstance(e, OSError) else 'not valid JSON'
    raise WorkdirError(f'{FLAG}: {path} cannot be read ({why})') from None
  if not isinstance(old, dict):
    raise WorkdirError(f'{FLAG}: {path} is not a run config (a JSON object)')
  return old


def check_workdir(config, workdir: str, batch: list[runs.Run]) -> list[str]:
  """The runs' folders, after one-line ``WorkdirError``s for a workdir that holds no
  checkpoints of this config, or runs saved with another config."""
  config = runs.resolve(config)  # as the run saved it (e.g. data_generator auto resolved)
  if not os.path.isdir(workdir):
    raise WorkdirError(f'{FLAG}: no such folder: {workdir}')
  dirs = [os.path.join(workdir, r.name) for r in batch]
  missing = [d for d in dirs if not os.path.isdir(d)]
  if missing:
    what = ('no run of this config' if len(missing) == len(dirs) else
            f'no folder {missing[0]} for run {os.path.basename(missing[0])}')
    raise WorkdirError(f'{FLAG}: {what} in {workdir} (expected '
                       f'{", ".join(r.name for r in batch)}); give the --config and '
                       '--workdir of the earlier run')
  for d in dirs:
    if not checkpoint.steps(d):
      raise WorkdirError(f'{FLAG}: {d} has no checkpoints to compare with (a run saves them '
                         'every checkpoint_every epochs)')
  env = environment.metadata()
  skip = set(experiment.RESUME_SAFE) | {'environment', 'sweep'}
  drop = lambda c: {k: v for k, v in c.items() if k not in skip}  # noqa: E731
  for d, r in zip(dirs, batch):
    old, new = _saved_config(d), experiment.run_config(config, r, env)
    k = identity.first_difference(drop(old), drop(new))
    if k is not None:
      raise WorkdirError(f'{FLAG}: config.{k} differs from the run saved in {d} '
                         f'({identity.value(drop(old), k)!r} -> '
                         f'{identity.value(drop(new), k)!r}); validate with its config')
  return dirs


def environment_note(dirs: list[str]) -> str | None:
  """A line when the run was saved under another environment (versions, device)."""
  old = _saved_config(dirs[0]).get('environment', {})
  new = environment.metadata()
  changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  if not changed:
    return None
  shown = ', '.join(f'{k} {old.get(k)!r} -> {new.get(k)!r}' for k in changed[:3])
  return (f'note: the run was saved in another environment ({shown}'
          f'{", ..." if len(changed) > 3 else ""}); differences may come from it')


def replay(config, workdir: str, probes=(), report: Callable[[list[Check]], None] = None
           ) -> list[Check]:
  """Train ``config``'s runs again and compare them with their checkpoints in
  ``workdir`` (see the module docstring); returns every comparison, in step order, and
  hands each step's comparisons to ``report`` as they are made. ``config.stop_after``
  limits the replay (checkpoints after it are not compared)."""
  runs.validate(config)
  config = runs.resolve(config)
  runs.validate(config)
  batch = runs.expand(config)
  dirs = check_workdir(config, workdir, batch)
  budget.check(config, len(batch), probes)
  init_params, cont = experiment.load_init(config) if config.get('init_from') else (None, None)
  source = config.probes.reference_weights if 'probes' in config else ''
  reference = None
  if probes and source:
    reference = experiment.load_reference(config, batch, workdir if source == 'auto' else source)
  b = experiment.build(config, probes, reference, init_params, batch)
  trainer, data, spec, state = b.trainer, b.data, b.spec, b.state
  start, host = 0, [experiment._fresh_host(r) for r in batch]  # pylint: disable=protected-access
  if cont is not None:
    state, start = continuation.apply(state, cont), cont.next_epoch
    for h in host:
      h.update(steps=cont.step, epochs_trained=start, last_epoch=start - 1)
  init_eval = train.accuracies(trainer.evaluate(state.params, data), data)
  for i, h in enumerate(host):
    h['init_eval'] = {k: float(v[i]) for k, v in init_eval.items()}
  likes = [train.run_slice(state, i) for i in range(len(batch))]
  mgrs = [checkpoint.manager(d, read_only=True) for d in dirs]
  wanted = [set(checkpoint.steps(d)) for d in dirs]
  end = experiment.last_epoch(config)
  steps = sorted(s for s in set().union(*wanted) if start < s <= end)
  mesh = sharding.runs_mesh()
  state, spec, data = sharding.place(state, spec, data, mesh,
                                     sharding.padding(len(batch), mesh),
                                     shared_data=trainer.shared_data)
  checks: list[Check] = []

  def compare(step: int) -> None:
    now = sharding.fetch(state)
    here = []
    for i, r in enumerate(batch):
      if step not in wanted[i]:
        continue
      try:
        saved, meta, intact = checkpoint.read(mgrs[i], step, likes[i])
      except Exception as e:  # pylint: disable=broad-except
        here.append(Check(r.name, step, 'checkpoint', f'cannot be read ({type(e).__name__}: '
                          f'{(str(e).splitlines() or [""])[0][:120]})'))
        continue
      diff = first_difference(train.run_slice(now, i), saved) or meta_difference(host[i], meta)
      here.append(Check(r.name, step, *(diff or (None, '')), intact=intact))
    checks.extend(here)
    if report is not None:
      report(here)

  executables, trainers = {}, {config.batch_size: trainer}
  n_train = runs.sizes(config)[0]
  active = np.asarray(sharding.fetch(state.active))
  done = start
  try:
    for epoch in range(start, steps[-1] if steps else start):
      if not active.any():
        break
      do_probe = experiment.probe_epoch(config, epoch, probes)
      do_eval = experiment.eval_epoch(config, epoch)
      size = runs.batch_size_at(config, epoch)
      variant = (size, do_eval, do_probe)
      if variant not in executables:  # as the run compiles them (ahead of time)
        if size not in trainers:
          trainers[size] = experiment.make_trainer(config, shared_data=trainer.shared_data,
                                                   probes=probes, batch_size=size)
        executables[variant] = trainers[size].epoch.lower(
            state, spec, data, jnp.int32(0), do_eval=do_eval, do_probe=do_probe).compile()
      state, m = executables[variant](state, spec, data, jnp.int32(epoch))
      m = sharding.fetch(m)
      if do_eval:
        m.update(train.accuracies(m, data))
      for i, (r, h) in enumerate(zip(batch, host)):
        if m['trained'][i]:
          experiment._record(  # pylint: disable=protected-access
              config, r, h, {k: v[i] for k, v in m.items() if not k.startswith('probes')},
              epoch, orderings.steps_per_epoch(n_train, size))
      done = epoch + 1
      active = np.asarray(sharding.fetch(state.active))
      if done in steps:
        compare(done)
    for step in steps:  # after the batch stopped: its final state
      if step > done:
        compare(step)
  finally:
    for m in mgrs:
      m.close()
  return checks


def summary(checks: list[Check], names: list[str]) -> list[str]:
  """One line per run: bit-identical at every checkpoint, or where it first differs."""
  lines = []
  for name in names:
    mine = [c for c in checks if c.run == name]
    bad = [c for c in mine if not c.identical]
    epochs = ', '.join(str(c.step - 1) for c in mine)
    if not bad:
      lines.append(f'{name}: bit-identical at its one checkpoint (after epoch {epochs})'
                   if len(mine) == 1 else f'{name}: bit-identical at all {len(mine)} '
                   f'checkpoints (after epochs {epochs})')
      continue
    c = bad[0]
    lines.append(f'{name}: differs first at the checkpoint after epoch {c.step - 1}, in '
                 f'{c.tensor} ({c.detail}){damaged(c)}; {len(bad)} of {len(mine)} '
                 'checkpoints differ')
  return lines


def damaged(c: Check) -> str:
  return (' -- its files fail their checksum: they were changed after being written'
          if c.intact is False else '')


def step_line(here: list[Check]) -> str:
  """One line per compared checkpoint: each run, identical or its first differing array."""
  parts = [f'{c.run} identical' if c.identical else
           f'{c.run} DIFFERS in {c.tensor} ({c.detail}){damaged(c)}' for c in here]
  return f'checkpoint after epoch {here[0].step - 1}: ' + '; '.join(parts)
