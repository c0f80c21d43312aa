"""The experiment end to end in-process: outputs, resume, interrupts, workdir safety."""

import json
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import checkpoint, experiment, models, sinks, train
from ordered_jax import workdir as workdir_lib
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


def test_stop_after_keeps_the_schedule_and_resumes_to_the_full_run(reference_run, tmp_path):
  """stop_after=3 trains the first 3 epochs of the 6-epoch schedule (the same rows as the
  full run's first 3, learning rates included), is not complete, and --resume without it
  ends bit-identical to the uninterrupted run."""
  config, ref_dir, _ = reference_run
  capped = micro_config(strategy='stride,random', csv=True, tensorboard=True, stop_after=3)
  workdir = str(tmp_path)
  for s in experiment.run(capped, workdir, quiet=True):
    assert s['training']['stop_reason'] == 'stop_after'
    assert s['training']['epochs_trained'] == 3 and s['training']['planned_epochs'] == 6
  for run in ('stride', 'random'):
    d = os.path.join(workdir, run)
    assert not workdir_lib.is_complete(d)
    ref = sinks.read_jsonl(os.path.join(ref_dir, run, f'{run}.jsonl'))
    assert sinks.read_jsonl(os.path.join(d, f'{run}.jsonl')) == ref[:3]
  experiment.run(config, workdir, resume=True, quiet=True)
  _same_as_reference(workdir, ref_dir, config)


def test_resume_warns_of_rows_lost_from_the_jsonl(tmp_path, caplog):
  """A capped batch resumed as it was says nothing; with one run's JSONL deleted and the
  other's cut to its first row, written twice, --resume names each file and the epochs it
  lacks or holds twice."""
  capped = micro_config(strategy='stride,random', stop_after=3)
  more = micro_config(strategy='stride,random', stop_after=4)
  workdir = str(tmp_path)
  experiment.run(capped, workdir, quiet='silent')
  caplog.clear()
  experiment.run(more, workdir, resume=True, quiet='silent')
  assert not [r for r in caplog.records if 'jsonl' in r.getMessage()]
  os.remove(os.path.join(workdir, 'stride', 'stride.jsonl'))
  path = os.path.join(workdir, 'random', 'random.jsonl')
  lines = open(path).read().splitlines(keepends=True)
  with open(path, 'w') as f:
    f.write(lines[0] + lines[0])
  caplog.clear()
  experiment.run(micro_config(strategy='stride,random'), workdir, resume=True, quiet='silent')
  said = [r.getMessage() for r in caplog.records if 'jsonl' in r.getMessage()]
  assert len(said) == 3, said
  assert ('stride.jsonl is gone, with the rows of 4 evaluated epochs before 4 (0, 1, 2, 3)'
          in said[0])
  assert 'random.jsonl lacks the rows of 3 evaluated epochs before 4 (1, 2, 3)' in said[1]
  assert 'random.jsonl holds more than one row for 1 epoch (0)' in said[2]
  assert [r['epoch'] for r in sinks.read_jsonl(path)] == [0, 0, 4, 5]


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
  os.remove(os.path.join(workdir, 'stride', workdir_lib.COMPLETE))  # an unfinished run
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


# -- issue 19: nothing lost, nothing silent ------------------------------------------------

def _same_as_reference(workdir, ref_dir, config, runs=('stride', 'random')):
  """Final weights, metrics rows and summary numbers equal the uninterrupted run's."""
  for run in runs:
    d, r = os.path.join(workdir, run), os.path.join(ref_dir, run)
    assert workdir_lib.is_complete(d)
    assert _params_equal(_load(d, config), _load(r, config)), run
    assert (sinks.read_jsonl(os.path.join(d, f'{run}.jsonl')) ==
            sinks.read_jsonl(os.path.join(r, f'{run}.jsonl'))), run
    a = json.load(open(os.path.join(d, 'summary.json')))
    b = json.load(open(os.path.join(r, 'summary.json')))
    assert (a['final_eval'], a['training']) == (b['final_eval'], b['training']), run


@pytest.fixture(scope='module')
def crashed(reference_run, tmp_path_factory):
  """The reference batch killed after epoch 4's rows: checkpoints after epochs 0 and 2
  (steps 1 and 3), rows of epochs 0-4. Tests damage copies of it."""
  config, _, _ = reference_run
  workdir = str(tmp_path_factory.mktemp('crashed'))
  with pytest.MonkeyPatch.context() as mp:
    with crash_after_epoch(mp, 4):
      experiment.run(config, workdir, quiet=True)
  return workdir


def _copy(src, tmp_path):
  dst = str(tmp_path / 'w')
  shutil.copytree(src, dst)
  return dst


def test_a_flipped_bit_in_the_latest_checkpoint_is_caught(reference_run, crashed, tmp_path,
                                                          caplog):
  """Item 2: the checksum fails, --resume falls back to the previous checkpoint with a
  warning and ends bit-identical to the uninterrupted run."""
  caplog.set_level(logging.INFO, logger='absl')
  config, ref_dir, _ = reference_run
  workdir = _copy(crashed, tmp_path)
  latest = os.path.join(workdir, 'stride', 'checkpoints', '3')
  files = [os.path.join(r, f) for r, _, fs in os.walk(latest) for f in fs]
  biggest = max(files, key=os.path.getsize)
  data = bytearray(open(biggest, 'rb').read())
  data[len(data) // 2] ^= 0x10
  open(biggest, 'wb').write(bytes(data))
  experiment.run(config, workdir, resume=True, quiet=True)
  assert (f"the checkpoint after epoch 2 ({os.path.join(workdir, 'stride', 'checkpoints', '3')})"
          ' cannot be restored') in caplog.text
  assert 'resumed from the checkpoint after epoch 0' in caplog.text
  _same_as_reference(workdir, ref_dir, config)


def test_truncated_array_files_fall_back_with_a_readable_reason(reference_run, crashed,
                                                                tmp_path, caplog):
  """Orbax's own error for cut array files ends in a TensorStore object's repr; the
  fallback warning keeps the readable part."""
  caplog.set_level(logging.INFO, logger='absl')
  workdir = _copy(crashed, tmp_path)
  latest = os.path.join(workdir, 'stride', 'checkpoints', '3')
  files = [os.path.join(r, f) for r, _, fs in os.walk(latest) for f in fs
           if os.path.basename(r) == 'd']
  os.truncate(max(files, key=os.path.getsize), 10)  # the array chunks
  experiment.run(reference_run[0], workdir, resume=True, quiet='silent')
  said = [r.getMessage() for r in caplog.records if 'cannot be restored' in r.getMessage()]
  assert said and 'pybind11' not in said[0] and 'TensorStore details' not in said[0], said
  assert 'resumed from the checkpoint after epoch 0' in caplog.text


def test_a_meta_of_the_wrong_type_falls_back_then_is_one_line(reference_run, crashed,
                                                               tmp_path):
  """Item 11: a checkpoint whose meta is not a JSON object is skipped; when none is left,
  --resume stops with one line instead of a traceback."""
  config, ref_dir, _ = reference_run
  workdir = _copy(crashed, tmp_path)
  meta = os.path.join(workdir, 'random', 'checkpoints', '3', 'meta', 'metadata')
  open(meta, 'w').write('[1, 2, 3]')
  experiment.run(config, workdir, resume=True, quiet=True)
  _same_as_reference(workdir, ref_dir, config)
  other = _copy(crashed, tmp_path / 'b')
  for step in ('1', '3'):
    open(os.path.join(other, 'random', 'checkpoints', step, 'meta', 'metadata'),
         'w').write('"text"')
  with pytest.raises(experiment.WorkdirError, match='no readable checkpoint.*str, not an object'):
    experiment.run(config, other, resume=True, quiet=True)


@pytest.mark.parametrize('damage', ['missing', 'garbage', 'list'])
def test_a_damaged_experiment_config_is_one_line(reference_run, crashed, tmp_path, damage):
  config, _, _ = reference_run
  workdir = _copy(crashed, tmp_path)
  path = os.path.join(workdir, 'stride', 'experiment_config.json')
  if damage == 'missing':
    os.remove(path)
  else:
    open(path, 'w').write('{"lr": 0.1' if damage == 'garbage' else '[]')
  with pytest.raises(experiment.WorkdirError) as e:
    experiment.run(config, workdir, resume=True, quiet=True)
  assert 'experiment_config.json' in str(e.value) and '\n' not in str(e.value)
  assert open(os.path.join(workdir, 'stride', 'stride.jsonl')).read() == open(
      os.path.join(crashed, 'stride', 'stride.jsonl')).read()  # nothing changed


def test_a_broken_line_before_the_checkpoint_keeps_every_row(reference_run, crashed,
                                                             tmp_path, caplog):
  """Item 4: rows after a damaged line survive; only rows after the checkpoint's epoch are
  cut, into <run>.jsonl.removed, and the log says so."""
  caplog.set_level(logging.INFO, logger='absl')
  config, ref_dir, _ = reference_run
  workdir = _copy(crashed, tmp_path)
  path = os.path.join(workdir, 'stride', 'stride.jsonl')
  lines = open(path).read().splitlines(keepends=True)
  assert [json.loads(l)['epoch'] for l in lines] == [0, 1, 2, 3, 4]
  lines[1] = lines[1][:25] + '\n'  # epoch 1's row, damaged
  open(path, 'w').write(''.join(lines))
  experiment.run(config, workdir, resume=True, quiet=True)
  ref = sinks.read_jsonl(os.path.join(ref_dir, 'stride', 'stride.jsonl'))
  assert sinks.read_jsonl(path) == [r for r in ref if r['epoch'] != 1]
  assert open(path).read().splitlines()[1] == lines[1].strip()  # kept as it was
  removed = sinks.read_jsonl(path + sinks.REMOVED)
  assert [r['epoch'] for r in removed] == [3, 4] and removed == ref[3:5]
  assert 'stride.jsonl:2: cannot be read' in caplog.text
  assert 'moved 2 line(s) (epochs 3..4)' in caplog.text


def test_csv_switched_on_at_resume_covers_every_epoch(reference_run, tmp_path, monkeypatch):
  """Item 15: the CSV (and TensorBoard) of a run resumed with csv=true (tensorboard=true)
  hold every epoch, as the uninterrupted run's do."""
  from tests.test_analysis_tools import _events  # pylint: disable=g-import-not-at-top
  config, ref_dir, _ = reference_run
  off = micro_config(strategy='stride,random', csv=False, tensorboard=False)
  workdir = str(tmp_path)
  with crash_after_epoch(monkeypatch, 4):
    experiment.run(off, workdir, quiet=True)
  experiment.run(config, workdir, resume=True, quiet=True)
  for run in ('stride', 'random'):
    assert (open(os.path.join(workdir, run, f'{run}.csv')).read() ==
            open(os.path.join(ref_dir, run, f'{run}.csv')).read())
    scalars, _ = _events(os.path.join(workdir, run))
    assert sorted(s for s, _ in scalars['training_metrics/loss']) == list(range(6))


def test_killed_before_the_first_checkpoint_resume_starts_afresh(reference_run, tmp_path,
                                                                  monkeypatch, caplog):
  """Item 6: the plain command asks for --resume, and --resume starts again (saying so)
  and ends as the uninterrupted run."""
  config, ref_dir, _ = reference_run
  workdir = str(tmp_path)
  with crash_after_epoch(monkeypatch, 0):  # the first checkpoint follows epoch 0's row
    experiment.run(config, workdir, quiet=True)
  assert not checkpoint.steps(os.path.join(workdir, 'stride'))
  with pytest.raises(experiment.WorkdirError, match='--resume'):
    experiment.run(config, workdir, quiet=True)
  experiment.run(config, workdir, resume=True, quiet=True)
  assert 'starting afresh' in caplog.text
  _same_as_reference(workdir, ref_dir, config)


def test_resume_with_a_run_added_to_the_batch_is_refused(tmp_path, monkeypatch):
  """A --resume whose batch adds a run that never ran beside runs with checkpoints is
  refused in one line; the saved run's checkpoints and rows stay as they were."""
  workdir = str(tmp_path)
  with crash_after_epoch(monkeypatch, 2):
    experiment.run(micro_config(strategy='stride'), workdir, quiet=True)
  stride = os.path.join(workdir, 'stride')
  steps, rows = checkpoint.steps(stride), open(os.path.join(stride, 'stride.jsonl')).read()
  assert steps
  with pytest.raises(experiment.WorkdirError, match=r'^--resume: run\(s\) random never ran '
                     r'in .*, while stride have checkpoints: this is not the batch'):
    experiment.run(micro_config(strategy='stride,random'), workdir, resume=True, quiet=True)
  assert checkpoint.steps(stride) == steps
  assert open(os.path.join(stride, 'stride.jsonl')).read() == rows
  assert not os.path.exists(os.path.join(workdir, 'random'))


def test_killed_between_the_final_outputs_is_not_complete(reference_run, tmp_path,
                                                          monkeypatch):
  """Item 5: a kill after summary.json but before final_params (or before the marker)
  leaves a run --resume finishes, not one it calls complete."""
  config, ref_dir, _ = reference_run
  workdir = str(tmp_path)

  def killed(*_):
    raise RuntimeError('simulated kill')

  monkeypatch.setattr(checkpoint, 'save_params', killed)
  with pytest.raises(RuntimeError, match='simulated kill'):
    experiment.run(config, workdir, quiet=True)
  monkeypatch.undo()
  assert not workdir_lib.is_complete(os.path.join(workdir, 'stride'))
  experiment.run(config, workdir, resume=True, quiet=True)
  _same_as_reference(workdir, ref_dir, config)
  os.remove(os.path.join(workdir, 'random', workdir_lib.COMPLETE))  # killed before it
  experiment.run(config, workdir, resume=True, quiet=True)
  _same_as_reference(workdir, ref_dir, config)


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(reference_run, tmp_path,
                                                               monkeypatch):
  """Item 10: the checkpoint that cannot fit is refused before Orbax starts it (free space
  reported tiny after the first checkpoint), and a write that fails with ENOSPC (Orbax's
  RESOURCE_EXHAUSTED) ends the same way; both name the path and keep the last good
  checkpoint, from which --resume ends as the uninterrupted run."""
  config, ref_dir, _ = reference_run
  workdir = str(tmp_path / 'a')
  real = workdir_lib.free_bytes
  saved = []
  real_save = checkpoint.save

  def save(mgr, step, state, meta):
    real_save(mgr, step, state, meta)
    saved.append(step)

  monkeypatch.setattr(checkpoint, 'save', save)
  monkeypatch.setattr(workdir_lib, 'free_bytes', lambda p: 4096 if saved else real(p))
  with pytest.raises(experiment.DiskFull) as e:
    experiment.run(config, workdir, quiet=True)
  msg = str(e.value)
  assert '\n' not in msg and os.path.join(workdir, 'stride') in msg
  assert 'needs about' in msg and '0.0 MiB free' in msg
  assert 'checkpoint after epoch 0 is kept' in msg
  monkeypatch.undo()
  assert checkpoint.steps(os.path.join(workdir, 'random')) == [1]
  experiment.run(config, workdir, resume=True, quiet=True)
  _same_as_reference(workdir, ref_dir, config)

  other = str(tmp_path / 'b')

  def full(mgr, step, state, meta):
    if step == 3:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "/disk/x/_sharding": '
                       'No space left on device')
    real_save(mgr, step, state, meta)

  monkeypatch.setattr(checkpoint, 'save', full)
  with pytest.raises(experiment.DiskFull, match=r'^/disk/x/_sharding: no space left on device '
                     r'.*needs about .*checkpoint after epoch 0 is kept'):
    experiment.run(config, other, quiet=True)


def test_eval_chunk_caps_on_the_cpu_only():
  """The reference model's chunk on the CPU is 1,024 pairs (2 operands x 2,048 float32
  hidden units = 16 MiB); a small model and an accelerator keep eval_batch_size."""
  big = micro_config(embed_dim=256, mlp_dim=2048, eval_batch_size=2048)
  assert experiment.eval_chunk(big, 'cpu') == 1024
  assert experiment.eval_chunk(big, 'gpu') == 2048
  assert experiment.eval_chunk(micro_config(eval_batch_size=32), 'cpu') == 32
  wide = micro_config(embed_dim=16, mlp_dim=2**20, eval_batch_size=64)
  assert experiment.eval_chunk(wide, 'cpu') == 2  # 8 MiB per pair: never below 1
