"""The experiment end to end in-process: outputs, resume, interrupts, workdir safety."""

import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import checkpoint, experiment, models, sinks, train
from tests.conftest import crash_after_epoch, micro_config

KEYS = {'training_metrics/loss', 'training_metrics/perplexity', 'training_metrics/learning_rate',
        'training_metrics/training_accuracy', 'training_metrics/validation_accuracy'}


def _params_equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def _load(run_dir, config):
  return checkpoint.load_params(run_dir, models.Model(experiment.model_config(config)))


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  """One uninterrupted two-run batch that the other tests compare against."""
  config = micro_config(strategy='stride,random', csv=True, tensorboard=True)
  workdir = str(tmp_path_factory.mktemp('ref'))
  summaries = experiment.run(config, workdir, quiet=True)
  return config, workdir, summaries


def test_outputs(reference_run):
  config, workdir, summaries = reference_run
  assert sorted(os.listdir(workdir)) == ['random', 'stride']
  for s in summaries:
    d = os.path.join(workdir, s['run'])
    files = set(os.listdir(d))
    assert {'experiment_config.json', 'summary.json', f"{s['run']}.jsonl", f"{s['run']}.csv",
            'checkpoints', 'final_params'} <= files
    assert any(f.startswith('events.out.tfevents') for f in files)
    cfg = json.load(open(os.path.join(d, 'experiment_config.json')))
    assert cfg['strategy'] == s['run'] and cfg['p'] == 13 and cfg['stride'] == 3
    for k in ('jax_version', 'jaxlib_version', 'flax_version', 'optax_version',
              'orbax_checkpoint_version', 'backend', 'device_kind', 'device_count',
              'xla_flags', 'float32_matmul_precision'):
      assert k in cfg['environment'], k
    assert '--xla_gpu_deterministic_ops=true' in cfg['environment']['xla_flags']
    rows = sinks.read_jsonl(os.path.join(d, f"{s['run']}.jsonl"))
    assert [r['epoch'] for r in rows] == list(range(6))
    assert all(set(r) == KEYS | {'epoch'} for r in rows)
    assert rows[-1]['training_metrics/learning_rate'] == pytest.approx(5e-7)  # next epoch's
    csv_lines = open(os.path.join(d, f"{s['run']}.csv")).read().splitlines()
    assert csv_lines[0].startswith('epoch,training_metrics/loss') and len(csv_lines) == 7
    t = s['training']
    assert (t['planned_epochs'], t['epochs_trained'], t['last_epoch'], t['actual_epochs']) == (
        6, 6, 5, 5)
    assert t['total_gradient_steps'] == 6 * 4 and t['stop_reason'] == 'completed'
    assert s['model']['parameters'] == models.param_count(_load(d, config))
    assert s['final_eval']['validation_accuracy'] == pytest.approx(
        rows[-1]['training_metrics/validation_accuracy'])
    assert set(s['init_eval']) == {'validation_accuracy', 'training_accuracy'}
    assert s['timing']['duration_seconds'] > 0 and s['timing']['steps_per_second'] > 0


def test_notebook_restore_evaluates_to_the_summary(reference_run):
  config, workdir, summaries = reference_run
  from ordered_jax import tasks  # pylint: disable=g-import-not-at-top
  params = _load(os.path.join(workdir, 'stride'), config)
  trainer = experiment.make_trainer(config)
  tr, te = tasks.make_mod_add(config.p, config.train_size, config.test_size, config.seed)
  data = train.make_data(tr, te, config.eval_batch_size)
  acc = train.accuracies(trainer.evaluate(train.stack_runs([params]), data), data)
  assert float(acc['validation_accuracy'][0]) == summaries[0]['final_eval']['validation_accuracy']


def test_crash_then_resume_is_bit_identical(reference_run, tmp_path, monkeypatch):
  config, ref_dir, _ = reference_run
  workdir = str(tmp_path)
  with crash_after_epoch(monkeypatch, 4):
    experiment.run(config, workdir, quiet=True)
  # Latest checkpoint is after epoch 2 (checkpoint_every=2); epochs 3-4 are in the JSONL.
  experiment.run(config, workdir, resume=True, quiet=True)
  for run in ('stride', 'random'):
    assert _params_equal(_load(os.path.join(workdir, run), config),
                         _load(os.path.join(ref_dir, run), config))
    ours = sinks.read_jsonl(os.path.join(workdir, run, f'{run}.jsonl'))
    ref = sinks.read_jsonl(os.path.join(ref_dir, run, f'{run}.jsonl'))
    assert ours == ref
    a = json.load(open(os.path.join(workdir, run, 'summary.json')))
    b = json.load(open(os.path.join(ref_dir, run, 'summary.json')))
    assert a['final_eval'] == b['final_eval'] and a['training'] == b['training']
    assert a['init_eval'] == b['init_eval']


def test_sigterm_writes_a_checkpoint_and_resume_finishes(reference_run, tmp_path, monkeypatch):
  config, ref_dir, _ = reference_run
  workdir = str(tmp_path)
  real_write = sinks.JsonlSink.write

  def kill_at_3(self, epoch, metrics):
    real_write(self, epoch, metrics)
    if epoch == 3 and self.path.endswith('random.jsonl'):
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(sinks.JsonlSink, 'write', kill_at_3)
  with pytest.raises(experiment.Interrupted) as e:
    experiment.run(config, workdir, quiet=True)
  assert e.value.signum == signal.SIGTERM
  monkeypatch.setattr(sinks.JsonlSink, 'write', real_write)
  mgr = checkpoint.manager(os.path.join(workdir, 'stride'), read_only=True)
  assert mgr.latest_step() == 4  # written at the end of epoch 3, not the periodic one (3)
  experiment.run(config, workdir, resume=True, quiet=True)
  for run in ('stride', 'random'):
    assert _params_equal(_load(os.path.join(workdir, run), config),
                         _load(os.path.join(ref_dir, run), config))


def test_damaged_latest_checkpoint_falls_back(reference_run, tmp_path):
  config, ref_dir, _ = reference_run
  workdir = str(tmp_path / 'w')
  shutil.copytree(ref_dir, workdir)
  latest = os.path.join(workdir, 'stride', 'checkpoints', '6')
  for root, _, files in os.walk(os.path.join(latest, 'state')):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'garbage')
  os.remove(os.path.join(workdir, 'stride', 'summary.json'))
  mgrs = [checkpoint.manager(os.path.join(workdir, r), read_only=True)
          for r in ('stride', 'random')]
  trainer = experiment.make_trainer(config)
  like = train.run_slice(trainer.init_state([3], [1e-3], [0.1]), 0)
  step, states, _ = checkpoint.restore_latest(mgrs, [like, like])
  assert step == 5  # the previous checkpoint (after epoch 4), not the damaged 6
  assert int(states[0].epoch) == 5


def test_workdir_is_never_silently_overwritten(reference_run, tmp_path):
  config = micro_config(epochs=1)
  workdir = str(tmp_path)
  experiment.run(config, workdir, quiet=True)
  with pytest.raises(experiment.WorkdirError, match='--resume.*--overwrite'):
    experiment.run(config, workdir, quiet=True)
  with pytest.raises(experiment.WorkdirError, match='already complete'):
    experiment.run(config, workdir, resume=True, quiet=True)
  with pytest.raises(experiment.WorkdirError, match='no run'):
    experiment.run(config, str(tmp_path / 'empty'), resume=True, quiet=True)
  os.remove(os.path.join(workdir, 'stride', 'summary.json'))
  with pytest.raises(experiment.WorkdirError, match=r'config\.lr differs'):
    experiment.run(micro_config(epochs=1, lr=2e-3), workdir, resume=True, quiet=True)
  experiment.run(config, workdir, overwrite=True, quiet=True)
  assert os.path.exists(os.path.join(workdir, 'stride', 'summary.json'))


def test_resume_reads_fields_added_since_as_their_old_values(tmp_path):
  """A run saved before a field existed resumes when the field has the value the run had
  (nested fields too: probes.curvature.every_n_steps was every probe epoch, 0)."""
  config = micro_config()
  new = experiment.run_config(config, experiment.runs.expand(config)[0], {})
  old = json.loads(json.dumps(new))
  del old['task'], old['probes']['curvature']['every_n_steps']
  sinks.write_json(str(tmp_path / 'experiment_config.json'), old)
  with pytest.raises(experiment.WorkdirError, match=r'config\.probes differs'):
    experiment._check_resume_config(str(tmp_path), new)  # pylint: disable=protected-access
  new['probes']['curvature']['every_n_steps'] = 0
  experiment._check_resume_config(str(tmp_path), new)  # pylint: disable=protected-access
  new['task'] = 'sub'
  with pytest.raises(experiment.WorkdirError, match=r'config\.task differs'):
    experiment._check_resume_config(str(tmp_path), new)  # pylint: disable=protected-access


def test_zero_epochs_evaluates_the_initial_weights(tmp_path):
  config = micro_config(epochs=0)
  (s,) = experiment.run(config, str(tmp_path), quiet=True)
  assert s['training']['epochs_trained'] == 0 and s['training']['last_epoch'] is None
  assert s['final_eval'] == s['init_eval']
  assert sinks.read_jsonl(str(tmp_path / 'stride' / 'stride.jsonl')) == []
  assert os.path.isdir(tmp_path / 'stride' / 'final_params')


def test_early_stopped_run_freezes_while_the_other_trains(tmp_path):
  """A 1% target: a run that reaches it after an epoch stops there, with its outputs."""
  config = micro_config(strategy='stride,random', target_acc=1.0, epochs=3)
  summaries = experiment.run(config, str(tmp_path), quiet=True)
  stopped = [s for s in summaries if s['training']['early_stopped']]
  assert stopped, 'with a 1% target some run reaches it in the first epoch'
  for s in stopped:
    assert s['training']['stop_reason'] == 'reached_target_acc'
    assert s['grokking']['generalization_epoch'] == s['training']['last_epoch']
    rows = sinks.read_jsonl(str(tmp_path / s['run'] / f"{s['run']}.jsonl"))
    assert rows[-1]['epoch'] == s['training']['last_epoch']


def test_diverging_run_stops_keeps_its_weights_and_the_other_goes_on(tmp_path):
  config = micro_config(lrs=(1e-3, 1e3), min_lr=0.0, epochs=3)
  ok, bad = experiment.run(config, str(tmp_path), quiet=True)
  assert bad['run'] == 'stride_lr1000' and bad['training']['stop_reason'] == 'non_finite_loss'
  assert bad['training']['epochs_trained'] == 0 and bad['final_eval'] == bad['init_eval']
  assert ok['training']['epochs_trained'] == 3 and ok['training']['stop_reason'] == 'completed'
  init = experiment.build(config).state.params
  assert _params_equal(_load(str(tmp_path / 'stride_lr1000'), config), train.run_slice(init, 1))
  assert np.isfinite(jax.tree.leaves(_load(str(tmp_path / 'stride_lr0.001'), config))[0]).all()


def test_retention_keeps_the_latest_and_every_kth(tmp_path):
  mgr = checkpoint.manager(str(tmp_path), keep=2, keep_every=4)
  for step in range(1, 11):
    checkpoint.save(mgr, step, {'x': jnp.full((2,), step)}, {'step': step})
  mgr.wait_until_finished()
  assert sorted(mgr.all_steps()) == [4, 8, 9, 10]
  state, meta = checkpoint.restore(mgr, 9, {'x': jnp.zeros((2,), jnp.int32)})
  assert meta == {'step': 9} and state['x'].tolist() == [9, 9]
  mgr.close()
