"""Scheduled interventions (issue 6, part 4): learning-rate factors and batch-size changes."""

import json
import os

import numpy as np
import pytest

from ordered_jax import experiment, optim, orderings, runs, sinks
from tests.conftest import micro_config


def test_lr_factors_follow_the_last_change():
  sched = optim.Schedule(kind='constant', epochs=10, changes=((3, 0.5), (6, 0.1)))
  got = [float(sched.lr(2e-3, e, 0, 4, xp=np)) for e in range(10)]
  want = [2e-3] * 3 + [1e-3] * 3 + [2e-4] * 4
  np.testing.assert_allclose(got, want, rtol=1e-12)
  cos = optim.Schedule(kind='cosine', epochs=10, min_lr=0.0, changes=((5, 0.5),))
  plain = optim.Schedule(kind='cosine', epochs=10, min_lr=0.0)
  for e in range(10):  # device (float32) and host agree, the factor applies from epoch 5
    want = float(plain.lr(1.0, e, 0, 4, xp=np)) * (0.5 if e >= 5 else 1.0)
    np.testing.assert_allclose(float(cos.lr(1.0, e, 0, 4)), want, rtol=1e-6)


@pytest.mark.parametrize('text, match', [
    ('3:0', 'factors > 0'), ('0:0.5', 'ascending'), ('4:1,2:1', 'ascending'),
    ('x', 'epoch:factor'), ('99:0.5', r'\[1, epochs\)')])
def test_bad_lr_changes_name_the_field(text, match):
  c = micro_config()
  with c.unlocked():
    c.interventions.lr = text
  with pytest.raises(runs.ConfigError, match=r'interventions\.lr.*' + match):
    runs.validate(c)


def test_batch_size_change_needs_a_per_epoch_schedule_and_fits_the_data():
  for kw, match in ((dict(schedule='cosine_step'), 'per-step'), ({}, 'training examples')):
    c = micro_config(**kw)
    with c.unlocked():
      c.interventions.batch_size = '2:8' if kw else '2:1000'
    with pytest.raises(runs.ConfigError, match=match):
      runs.validate(c)


@pytest.mark.slow
def test_batch_size_and_lr_changes_in_a_run(tmp_path):
  """The first epochs equal the plain run; later ones take the new batches and rate."""
  plain = micro_config(epochs=4, schedule='constant')
  changed = micro_config(epochs=4, schedule='constant')
  with changed.unlocked():
    changed.interventions.batch_size = '2:8'
    changed.interventions.lr = '3:0.5'
  (s0,) = experiment.run(plain, str(tmp_path / 'plain'), quiet=True)
  (s1,) = experiment.run(changed, str(tmp_path / 'changed'), quiet=True)
  read = lambda d, s: sinks.read_jsonl(os.path.join(d, s['run'], s['run'] + '.jsonl'))
  r0, r1 = read(tmp_path / 'plain', s0), read(tmp_path / 'changed', s1)
  key = 'training_metrics/loss'
  assert [r[key] for r in r0[:2]] == [r[key] for r in r1[:2]]
  assert r0[2][key] != r1[2][key]
  n = runs.sizes(plain)[0]
  assert s1['training']['total_gradient_steps'] == (
      2 * orderings.steps_per_epoch(n, 16) + 2 * orderings.steps_per_epoch(n, 8))
  lrs = [r['training_metrics/learning_rate'] for r in r1]  # the next epoch's rate
  np.testing.assert_allclose(lrs, [1e-3, 1e-3, 5e-4, 5e-4], rtol=1e-9)
