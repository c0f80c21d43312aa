"""Probe cadence against the reference's hook points, checked on a hand-computed sequence.

The reference fires its POST_EPOCH hooks at every epoch and its SNAPSHOT hooks every
``snapshot_every`` epochs; the counterfactual family every epoch below 50, then at
snapshots. Each stateful probe compares with its own previous firing. Here a micro run
with dropout off is replayed step by step outside the trainer's epoch (plain gradients
and optimiser steps), and the first values of each family are recomputed in numpy from
that replay.
"""

import os

import jax
import numpy as np
import pytest

import probes
from ordered_jax import experiment, instrument, orderings, sinks, train
from tests.conftest import micro_config

EPOCHS, SNAPSHOT = 4, 2
NAMES = 'norms,consecutive,variance,parameter_delta,path_length,phases,training_diagnostics'


def _flat(tree) -> np.ndarray:
  """Non-bias leaves concatenated (a permutation of the reference's flat(): norms and
  cosines are the same)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return np.concatenate([np.asarray(x, np.float64).ravel() for path, x in leaves
                         if getattr(path[-1], 'key', None) != 'bias'])


def _all(tree) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _cos(u, v):
  return u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8)


def _replay(config):
  """Per epoch: the epoch-mean gradient, the weights after each step (step 0 first) and
  the epoch's batch losses, from a plain step loop (no probes, dropout off)."""
  b = experiment.build(config)
  trainer, data = b.trainer, b.data
  spec, state = train.run_slice(b.spec, 0), train.run_slice(b.state, 0)
  params, opt_state = state.params, state.opt_state
  order = orderings.static_order('stride', b.train_sets[config.seed], stride=3)
  idx_SxB, mask_SxB = orderings.batch_indices(order, config.batch_size)
  step = jax.jit(trainer._step)  # pylint: disable=protected-access
  out = []
  for epoch in range(EPOCHS):
    opt, _ = trainer._epoch_opt_state(opt_state, spec, epoch, len(idx_SxB))  # pylint: disable=protected-access
    grads, after, losses = [], [], []
    for idx_B, mask_B in zip(idx_SxB, mask_SxB):
      loss, g, params, opt = step(params, opt, data.train_NxC[idx_B], mask_B, None)
      grads.append(_flat(g))
      after.append(params)
      losses.append(float(loss))
    opt_state = opt
    out.append({'g': np.mean(grads, axis=0), 'after': after, 'losses': losses})
  return out


@pytest.fixture(scope='module')
def cadence_run(tmp_path_factory):
  c = micro_config(strategy='stride', epochs=EPOCHS, probe_every=SNAPSHOT, dropout=0.0,
                   stride=3, checkpoint_every=10)
  c.probes.names = NAMES
  d = str(tmp_path_factory.mktemp('cadence'))
  experiment.run(c, d, quiet=True, probes=probes.build(c))
  rows = {r['epoch']: r for r in sinks.read_jsonl(os.path.join(d, 'stride', 'stride.jsonl'))}
  return rows, _replay(c)


def _fired(rows, key):
  return [e for e in sorted(rows) if key in rows[e]]


def test_each_family_fires_at_the_reference_hook_points(cadence_run):
  rows, _ = cadence_run
  every = list(range(EPOCHS))
  assert _fired(rows, 'norms/total_norm') == every
  assert _fired(rows, 'consecutive/cos_sim') == every[1:]         # needs a previous one
  assert _fired(rows, 'variance/mean_pairwise_cos') == every[1:]   # needs two members
  assert _fired(rows, 'parameter_delta/absolute_delta') == every[1:]  # 1st only stores
  assert _fired(rows, 'path_length/path_length') == every
  assert _fired(rows, 'training_diagnostics/loss_mean') == every
  assert _fired(rows, 'phases/grad_velocity') == [0, 2]            # snapshots


def test_first_values_equal_the_hand_computed_sequence(cadence_run):
  rows, ep = cadence_run
  g = [e['g'] for e in ep]
  approx = lambda x: pytest.approx(x, rel=2e-4, abs=1e-6)
  for e in range(EPOCHS):
    assert rows[e]['norms/total_norm'] == approx(np.linalg.norm(g[e]))
  # consecutive and variance compare with the previous EPOCH (not a previous snapshot)
  assert rows[1]['consecutive/cos_sim'] == approx(_cos(g[1], g[0]))
  assert rows[2]['consecutive/cos_sim'] == approx(_cos(g[2], g[1]))
  assert rows[1]['variance/mean_pairwise_cos'] == approx(_cos(g[0], g[1]))
  assert rows[2]['variance/mean_pairwise_cos'] == approx(
      np.mean([_cos(g[0], g[1]), _cos(g[0], g[2]), _cos(g[1], g[2])]))
  # parameter_delta: the weights after consecutive epochs
  end = [_all(e['after'][-1]) for e in ep]
  assert rows[1]['parameter_delta/absolute_delta'] == approx(np.linalg.norm(end[1] - end[0]))
  assert rows[2]['parameter_delta/relative_delta'] == approx(
      np.linalg.norm(end[2] - end[1]) / np.linalg.norm(end[1]))
  # path_length: from the weights after the run's first step (the reference's origin)
  steps = [_all(w) for e in ep for w in e['after']]
  per_epoch = len(ep[0]['after'])
  path = np.cumsum([0.0] + [np.linalg.norm(steps[i + 1] - steps[i])
                            for i in range(len(steps) - 1)])
  for e in (0, 1):
    last = (e + 1) * per_epoch - 1
    assert rows[e]['path_length/path_length'] == approx(path[last])
    assert rows[e]['path_length/net_displacement'] == approx(
        np.linalg.norm(steps[last] - steps[0]))
  # training_diagnostics: the epoch's batch losses
  for e in (0, 1):
    assert rows[e]['training_diagnostics/loss_mean'] == approx(np.mean(ep[e]['losses']))
  # phases at snapshots 0 and 2: velocity against the previous SNAPSHOT, acceleration
  # against a previous velocity that starts at 0
  n0, n2 = np.linalg.norm(g[0]), np.linalg.norm(g[2])
  assert rows[0]['phases/grad_velocity'] == 0.0
  assert rows[2]['phases/grad_velocity'] == approx(n2 - n0)
  assert rows[2]['phases/grad_acceleration'] == approx(n2 - n0)


def test_eval_every_also_evaluates_snapshots(tmp_path):
  """eval_every = 3 with snapshots every 2: the reference evaluates at both (and we at the
  last epoch), so early stopping can happen at the same epochs."""
  c = micro_config(epochs=7, eval_every=3, probe_every=2, checkpoint_every=10)
  experiment.run(c, str(tmp_path), quiet=True)
  rows = sinks.read_jsonl(str(tmp_path / 'stride' / 'stride.jsonl'))
  evaluated = [r['epoch'] for r in rows if 'training_metrics/validation_accuracy' in r]
  assert evaluated == [0, 2, 3, 4, 6]


def test_cadence_schedule_against_the_reference_rules():
  """Cadence.fires on the host and traced agree with the reference's rules, thinned or
  not."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  epochs = np.arange(120)
  for every, snap, early in ((1, 10, 50), (3, 4, 9), (2, 1, 0)):
    c = instrument.Cadence(every=every, snapshot=snap, early=early)
    want = {'epoch': epochs % every == 0, 'snapshot': epochs % snap == 0,
            'early': np.where(epochs < early, epochs % every == 0, epochs % snap == 0)}
    for kind, w in want.items():
      host = [bool(c.fires(kind, int(e))) for e in epochs]
      traced = jax.jit(jax.vmap(lambda x, k=kind: c.fires(k, x, jnp)))(jnp.asarray(epochs))
      assert host == list(w), (every, snap, early, kind)
      assert np.array_equal(np.broadcast_to(np.asarray(traced), w.shape), w)
      if c.always(kind):
        assert w.all()
