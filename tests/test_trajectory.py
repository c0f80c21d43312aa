"""Parameter trajectories (config.trajectory, issue 14 A5): the records are the weights the
checkpoints hold, the projection is the documented one, a crash loses at most one record
and --resume repeats none; the PCA tool agrees with numpy's SVD."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import checkpoint, experiment, models, runs, train, trajectory
from tests.conftest import crash_after_epoch, micro_config

RUNS = ('stride', 'random')


def _config(**kw):
  c = micro_config(strategy='stride,random', keep_checkpoints=10, **{
      k: v for k, v in kw.items() if not k.startswith('t_')})
  c.trajectory.every = kw.get('t_every', 1)
  c.trajectory.projection = kw.get('t_projection', 'none')
  c.trajectory.seed = kw.get('t_seed', 0)
  return c


def _flat(params) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in jax.tree.leaves(params)])


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  """Every epoch's weights, float32, of an uninterrupted two-run batch."""
  config = _config()
  workdir = str(tmp_path_factory.mktemp('traj'))
  experiment.run(config, workdir, quiet='silent')
  return config, workdir


def test_records_are_the_checkpointed_and_final_weights(full_run):
  config, workdir = full_run
  model = models.Model(experiment.model_config(config))
  like = experiment.make_trainer(config).init_state([3], [1e-3], [0.1])
  for run in RUNS:
    d = os.path.join(workdir, run)
    rec = np.load(os.path.join(d, trajectory.FILENAME))
    assert list(rec['epoch']) == list(range(-1, config.epochs))
    assert rec.dtype['params'].shape == (models.param_count(model.abstract_params()),)
    meta = trajectory.read_meta(d)
    assert meta['projection'] == 'none' and meta['dim'] == rec.dtype['params'].shape[0]
    assert [tuple(s) for _, s in meta['leaves']] == [
        x.shape for x in jax.tree.leaves(model.abstract_params())]
    mgr = checkpoint.manager(d, read_only=True)
    steps = mgr.all_steps()
    assert sorted(steps) == [1, 3, 5, 6]
    for step in steps:  # checkpoint <step> holds the weights after epoch step - 1
      state, _, _ = checkpoint.read(mgr, step, train.run_slice(like, 0))
      np.testing.assert_array_equal(rec['params'][rec['epoch'] == step - 1][0],
                                    _flat(state.params))
    mgr.close()
    np.testing.assert_array_equal(rec['params'][-1], _flat(checkpoint.load_params(d, model)))
  # Both runs start from the same weights (one init seed), which the first record holds.
  a, b = (np.load(os.path.join(workdir, r, trajectory.FILENAME)) for r in RUNS)
  np.testing.assert_array_equal(a['params'][0], b['params'][0])
  assert not np.array_equal(a['params'][-1], b['params'][-1])


def test_projection_is_the_documented_gaussian_matrix():
  seed, k, d = 7, 5, 9000  # more rows than one chunk
  x = np.random.default_rng(0).standard_normal((2, d)).astype(np.float32)
  got = np.asarray(trajectory.project(jnp.asarray(x), seed, k))
  rows = np.asarray(trajectory.projection_rows(seed, k, np.arange(d)), np.float64)
  for i in (0, 4100, d - 1):  # G[i] = normal(fold_in(key(seed), i), (k,)) / sqrt(k)
    want = jax.random.normal(jax.random.fold_in(jax.random.key(seed), i), (k,)) / math.sqrt(k)
    np.testing.assert_allclose(rows[i], np.asarray(want), rtol=1e-6)
  np.testing.assert_allclose(got, x.astype(np.float64) @ rows, rtol=1e-4, atol=1e-4)
  assert np.all(np.std(rows, axis=0) > 0.8 / math.sqrt(k))  # not a constant matrix


def test_crash_then_resume_neither_loses_nor_repeats_records(full_run, tmp_path, monkeypatch):
  """every=1, checkpoint_every=2: killed after epoch 4's row, the file also holds epoch 3,
  past the last checkpoint (after epoch 2); --resume drops it and records 3, 4, 5 again.
  The projected records equal the projection of the float32 run's."""
  _, ref_dir = full_run
  config = _config(t_projection='random:8', t_seed=11)
  workdir = str(tmp_path)
  with crash_after_epoch(monkeypatch, 4):
    experiment.run(config, workdir, quiet='silent')
  killed = np.load(os.path.join(workdir, 'stride', trajectory.FILENAME))
  assert list(killed['epoch']) == [-1, 0, 1, 2, 3]
  with pytest.raises(experiment.WorkdirError, match='trajectory.projection differs'):
    experiment.run(_config(), workdir, resume=True, quiet='silent')
  experiment.run(config, workdir, resume=True, quiet='silent')
  for run in RUNS:
    rec = np.load(os.path.join(workdir, run, trajectory.FILENAME))
    assert list(rec['epoch']) == list(range(-1, config.epochs))
    full = np.load(os.path.join(ref_dir, run, trajectory.FILENAME))
    want = np.asarray(trajectory.project(jnp.asarray(full['params']), 11, 8))
    np.testing.assert_allclose(rec['params'], want, rtol=1e-4, atol=1e-5)


def test_a_capped_run_continued_has_the_uninterrupted_records(full_run, tmp_path):
  """stop_after=4 with every=2 ends the first invocation with a record after epoch 3, off
  the schedule; --resume drops it, so the file equals an uninterrupted run's (-1, 0, 2, 4
  and the last epoch, 5), each record the weights of the every-epoch run."""
  _, ref_dir = full_run
  workdir = str(tmp_path)
  capped = _config(t_every=2)
  with capped.unlocked():
    capped.stop_after = 4
  experiment.run(capped, workdir, quiet='silent')
  first = np.load(os.path.join(workdir, 'stride', trajectory.FILENAME))
  assert list(first['epoch']) == [-1, 0, 2, 3]
  experiment.run(_config(t_every=2), workdir, resume=True, quiet='silent')
  for run in RUNS:
    rec = np.load(os.path.join(workdir, run, trajectory.FILENAME))
    assert list(rec['epoch']) == [-1, 0, 2, 4, 5]
    full = np.load(os.path.join(ref_dir, run, trajectory.FILENAME))
    np.testing.assert_array_equal(rec['params'], full['params'][rec['epoch'] + 1])


def test_resume_warns_when_the_file_is_gone(tmp_path, caplog):
  workdir = str(tmp_path)
  capped = _config(t_every=2)
  with capped.unlocked():
    capped.stop_after = 4
  experiment.run(capped, workdir, quiet='silent')
  path = os.path.join(workdir, 'random', trajectory.FILENAME)
  os.remove(path)
  caplog.clear()
  experiment.run(_config(t_every=2), workdir, resume=True, quiet='silent')
  said = [r.getMessage() for r in caplog.records if trajectory.FILENAME in r.getMessage()]
  assert said == [f'--resume: {path} is gone; it starts again with the records from epoch 4 '
                  'on (the earlier ones are not recomputed)']
  assert list(np.load(path)['epoch']) == [4, 5]


def test_a_torn_record_is_ignored_and_dropped(tmp_path):
  path = str(tmp_path / trajectory.FILENAME)
  w = trajectory.Writer(path, 3)
  for e in range(3):
    w.append(e, np.full(3, e, np.float32))
  w.close()
  with open(path, 'ab') as f:  # killed while writing a 4th record, before the header counts it
    f.write(b'\x01\x02\x03\x04\x05')
  rec = np.load(path)
  assert list(rec['epoch']) == [0, 1, 2] and rec['params'][2].tolist() == [2, 2, 2]
  np.testing.assert_array_equal(trajectory.load(path), rec)
  w = trajectory.Writer(path, 3, keep_before=2)  # resume from the checkpoint after epoch 1
  w.append(2, np.full(3, 9, np.float32))
  w.close()
  rec = np.load(path)
  assert list(rec['epoch']) == [0, 1, 2] and rec['params'][2].tolist() == [9, 9, 9]
  assert os.path.getsize(path) == len(trajectory._header(3, 0)) + 3 * 16  # pylint: disable=protected-access


@pytest.mark.parametrize('field,value,needle', [
    ('every', -1, 'config.trajectory.every: must be >= 0'),
    ('projection', 'random:0', 'config.trajectory.projection'),
    ('projection', 'pca:2', "'random:K'"),
    ('seed', -3, 'config.trajectory.seed'),
])
def test_bad_trajectory_keys_are_one_line_errors(field, value, needle):
  c = micro_config()
  c.trajectory[field] = value
  with pytest.raises(runs.ConfigError) as e:
    runs.validate(c)
  assert needle in str(e.value) and '\n' not in str(e.value)


def test_pca_agrees_with_numpy_svd(monkeypatch):
  from analysis import trajectory as tool  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tool, 'COLUMNS', 7)  # several column blocks
  rng = np.random.default_rng(1)
  x = (rng.standard_normal((14, 3)) * [5.0, 2.0, 1.0]) @ rng.standard_normal((3, 40)) + 3.0
  x += 0.01 * rng.standard_normal(x.shape)
  scores, ratios = tool.pca(x)
  c = x - x.mean(axis=0)
  u, s, _ = np.linalg.svd(c, full_matrices=False)
  for j in range(2):
    ref = u[:, j] * s[j]
    sign = np.sign(ref @ scores[:, j])
    np.testing.assert_allclose(scores[:, j], sign * ref, rtol=1e-8, atol=1e-8)
  np.testing.assert_allclose(ratios, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-10)
  split, _ = tool.pca([x[:5], x[5:]])  # blocks of rows: the same as stacked
  np.testing.assert_allclose(split, scores, rtol=1e-10, atol=1e-10)


def test_analysis_trajectory_tool(full_run, tmp_path, capsys):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  _, workdir = full_run
  for basis in ('joint', 'run'):
    out = str(tmp_path / f'{basis}.png')
    assert cli.main(['trajectory', '--workdir', workdir, '--out', out, '--basis', basis,
                     '--dpi', '60']) == [out]
    assert matplotlib.image.imread(out).shape[0] > 100
  os.makedirs(tmp_path / 'empty' / 'stride')
  open(tmp_path / 'empty' / 'stride' / 'stride.jsonl', 'w').write('{"epoch": 0}\n')
  with pytest.raises(SystemExit) as e:
    cli.main(['trajectory', '--workdir', str(tmp_path / 'empty'), '--out', out])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: no run has a trajectory.npy') and '\n' not in err
