"""Lockstep comparison (issue 6, part 5) against numpy on the runs' saved weights."""

import os

import jax
import numpy as np
import pytest

from ordered_jax import checkpoint, experiment, lockstep, runs, sinks, tasks
from tests.conftest import micro_config


@pytest.fixture(scope='module')
def lockstep_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('lockstep'))
  config = micro_config(strategy='stride,random,target', lockstep=True, seeds=(3, 4),
                        epochs=3, eval_every=1)
  experiment.run(config, workdir, quiet=True)
  return config, workdir


def test_runs_share_init_and_data_but_not_their_seed():
  rs = runs.expand(micro_config(strategy='stride,random', lockstep=True, seeds=(3, 4)))
  assert {(r.data_seed, r.init_seed) for r in rs} == {(3, 3)}
  assert [r.order_seed for r in rs] == [3, 4, 3, 4]


def test_rows_match_numpy_on_the_final_weights(lockstep_run):
  config, workdir = lockstep_run
  batch = runs.expand(config)
  names = [r.name for r in batch]
  rows = sinks.read_jsonl(os.path.join(workdir, lockstep.FILENAME))
  n_pairs = len(names) * (len(names) - 1) // 2
  assert len(rows) == 3 * n_pairs and {r['epoch'] for r in rows} == {0, 1, 2}
  b = experiment.build(config)
  model = b.trainer.model
  params = {n: checkpoint.load_params(os.path.join(workdir, n), model) for n in names}
  flat = {n: np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)]) for n, p in params.items()}
  _, test = tasks.make_task(runs.task(config), *runs.sizes(config), 3, config.data_generator)
  preds = {n: np.asarray(np.argmax(model.apply(p, test[:, :-1]), -1)) for n, p in params.items()}
  for row in (r for r in rows if r['epoch'] == 2):
    u, v = flat[row['a']], flat[row['b']]
    np.testing.assert_allclose(row['param_distance'], np.linalg.norm(u - v), rtol=1e-5)
    np.testing.assert_allclose(row['param_cosine'],
                               u @ v / np.linalg.norm(u) / np.linalg.norm(v), rtol=1e-5)
    np.testing.assert_allclose(row['prediction_disagreement'],
                               100 * np.mean(preds[row['a']] != preds[row['b']]), atol=1e-9)
    layers = {k: v for k, v in row.items() if k.startswith('layer_distance/')}
    assert len(layers) == len(jax.tree.leaves(params[row['a']]))
    np.testing.assert_allclose(np.sqrt(sum(x**2 for x in layers.values())),
                               row['param_distance'], rtol=1e-5)
  assert any(r['param_distance'] > 0 for r in rows)


def test_needs_two_runs_and_never_overwrites(lockstep_run):
  with pytest.raises(runs.ConfigError, match='lockstep'):
    runs.validate(micro_config(lockstep=True))
  config, workdir = lockstep_run
  # A second lockstep batch (other runs) in the same workdir stops before writing anything.
  with pytest.raises(experiment.WorkdirError, match='lockstep.jsonl'):
    experiment.run(micro_config(strategy='fixed-random,alternating', lockstep=True), workdir,
                   quiet=True)
