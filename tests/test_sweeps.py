"""Sweeps (issue 5): planning and packing, the results table, skip / rerun / resume, and
the runs axis sharded over several (forced host) devices."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ordered_jax import budget, experiment, results, runs, sinks, sweeper
from tests.conftest import MICRO, ROOT, crash_after_epoch, micro_config, set_fields


def sweep_config(grid=None, zip_=None, max_runs=0, **overrides):
  c = micro_config(**{'epochs': 3, **overrides})
  with c.unlocked():
    c.sweep.max_runs_per_batch = max_runs
    for group, values in (('grid', grid or {}), ('zip', zip_ or {})):
      for k, v in values.items():
        c.sweep[group][k] = v
  return c


def test_plan_packs_what_a_batch_may_vary():
  c = sweep_config(grid={'strategy': 'stride,random', 'seed': '1..4', 'mlp_dim': '16,32'},
                   max_runs=4)
  items = sweeper.plan(c)
  assert len(items) == 12 and len({it.id for it in items}) == 12
  packed = sweeper.batches(items)
  # Two shapes (mlp_dim), six runs each, chunks of at most 4.
  assert [len(b) for b in packed] == [4, 2, 4, 2]
  assert all(len({it.config.mlp_dim for it in b}) == 1 for b in packed)
  # Ids depend on the run, not on the sweep around it.
  again = sweeper.plan(sweep_config(grid={'seed': '2', 'strategy': 'random', 'mlp_dim': '32'}))
  assert again[0].id in {it.id for it in items}


def test_runs_per_batch_count_what_the_probes_hold(monkeypatch):
  """A sweep's automatic batch size counts each run's probe memory (a long counterfactual
  window), so a sweep that fits in smaller batches is not refused as one big batch."""
  from tests.conftest import set_fields  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sweeper, 'device_bytes', lambda: 8 * 2**30)
  plain = micro_config()
  heavy = set_fields(micro_config(), {'probes.names': 'counterfactual',
                                      'probes.counterfactual.window': 20000})
  assert sweeper.max_runs(plain) == 256
  per_run = sweeper.run_bytes(heavy)
  assert per_run > 20000 * 2 * 4 * budget.param_count(heavy)  # the window's two arrays
  assert sweeper.max_runs(heavy) == int(0.5 * 8 * 2**30 / per_run) < 256


def test_forcing_one_batch_needs_one_shape(tmp_path):
  c = sweep_config(grid={'seed': '1,2', 'mlp_dim': '16,32'})
  with c.unlocked():
    c.sweep.single_batch = True
  with pytest.raises(runs.ConfigError, match=r'sweep\.single_batch: .*mlp_dim \(16 vs 32\)'):
    sweeper.run(c, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_cli_sweep_errors_are_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/tiny.py', f'--workdir={tmp_path}',
       '--config.sweep.grid.seed=3..3'], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  (line,) = [x for x in proc.stderr.splitlines() if x.startswith('error:')]
  assert 'config.sweep.grid.seed' in line and 'empty' in line, proc.stderr[-500:]


def test_bad_sweeps_stop_before_anything_runs(tmp_path):
  for grid, match in (({'seed': '5..5'}, 'empty'), ({'batch_size': '8,1000'}, 'batch_size')):
    with pytest.raises(ValueError, match=match):
      sweeper.run(sweep_config(grid=grid), str(tmp_path))
  with pytest.raises(ValueError, match='zip'):
    sweeper.run(sweep_config(zip_={'seed': '1,2', 'lr': '0.1'}), str(tmp_path))
  import probes  # pylint: disable=g-import-not-at-top
  c = set_fields(sweep_config(), {'probes.names': 'curvature',
                                  'sweep.grid.probes.curvature.k': '3,0'})
  with pytest.raises(runs.ConfigError, match=r'^config\.probes\.curvature\.k: .*\(sweep point '
                     r'probes\.curvature\.k=0'):
    sweeper.run(c, str(tmp_path), probes=probes.build)
  assert not os.listdir(tmp_path)


@pytest.fixture(scope='module')
def finished_sweep(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('sweep'))
  # Two batches of three runs: one compiled program for both.
  c = sweep_config(grid={'strategy': 'stride,random', 'seed': '0..3'}, max_runs=3)
  path = sweeper.run(c, workdir, quiet=True)
  return c, workdir, path


def _table(path):
  t = results.load(path).to_pylist()
  return {r['run_id']: r for r in t}


@pytest.mark.slow
def test_table_has_a_row_per_run_with_keys_metrics_and_curves(finished_sweep):
  c, workdir, path = finished_sweep
  rows = _table(path)
  assert len(rows) == 6
  for rid, r in rows.items():
    s = json.load(open(os.path.join(workdir, 'runs', rid, 'summary.json')))
    assert r['strategy'] == s['strategy'] and r['epoch'] == [0, 1, 2]
    assert r['final_validation_accuracy'] == s['final_eval']['validation_accuracy']
    assert len(r['validation_accuracy']) == 3 and r['seed'] in (0, 1, 2)


@pytest.mark.slow
def test_sweep_map_draws_the_table(finished_sweep, tmp_path):
  from analysis import sweep_map  # pylint: disable=g-import-not-at-top
  _, workdir, _ = finished_sweep
  out = str(tmp_path / 'fig' / 'map.png')
  sweep_map.main(['--table', workdir, '--out', out, '--column', 'seed'])
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  [made] = cli.main(['sweep_map', '--table', workdir, '--column', 'seed'])
  assert made == os.path.join(workdir, 'analysis', 'sweep_map', 'sweep_map.png')
  with open(made, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_the_analysis_tools_read_a_sweep_folder(finished_sweep, tmp_path):
  """--workdir <sweep> reads its runs/<id>/ folders, labelled by what sets them apart."""
  from analysis import readers  # pylint: disable=g-import-not-at-top
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  _, workdir, _ = finished_sweep
  found = readers.load([workdir])
  assert len(found) == 6 and len({r.name for r in found}) == 6
  for r in found:
    assert r.name == f"seed={r.config['seed']},strategy={r.config['strategy']}", r.name
    assert [row['epoch'] for row in r.rows] == [0, 1, 2]
  [made] = cli.main(['report', '--workdir', workdir, '--output-dir', str(tmp_path)])
  assert 'seed=2,strategy=random' in open(made).read()


@pytest.mark.slow
def test_rerun_skips_finished_and_restarts_chosen_runs(finished_sweep, tmp_path):
  c, original, _ = finished_sweep
  workdir = str(tmp_path / 'sweep')  # a copy: a rerun batch has other runs beside it, so
  shutil.copytree(original, workdir)  # its last bits differ from the shared fixture's
  path = os.path.join(workdir, results.TABLE)
  stamp = lambda rid: os.path.getmtime(os.path.join(workdir, 'runs', rid, 'summary.json'))
  before = {rid: stamp(rid) for rid in _table(path)}
  sweeper.run(c, workdir, quiet=True)  # nothing left to do
  assert {rid: stamp(rid) for rid in before} == before
  sweeper.run(c, workdir, quiet=True, rerun='seed=1')
  rows = _table(path)
  changed = {rid for rid in before if stamp(rid) != before[rid]}
  assert changed == {rid for rid, r in rows.items() if r['seed'] == 1} and len(changed) == 2
  assert len(rows) == 6


@pytest.mark.slow
def test_a_damaged_summary_of_a_finished_run_is_named_with_the_rerun_that_fixes_it(
    finished_sweep, tmp_path):
  c, original, _ = finished_sweep
  workdir = str(tmp_path / 'sweep')
  shutil.copytree(original, workdir)
  os.remove(os.path.join(workdir, results.TABLE))  # the table is rebuilt from the summaries
  rid, row = next((rid, r) for rid, r in _table(os.path.join(original, results.TABLE)).items()
                  if r['seed'] == 2 and r['strategy'] == 'random')
  with open(os.path.join(workdir, 'runs', rid, 'summary.json'), 'w') as f:
    f.write('{"training": 3}')
  with pytest.raises(experiment.WorkdirError) as e:
    sweeper.run(c, workdir, quiet=True)
  assert f"{rid}/summary.json cannot be read" in str(e.value)
  rerun = str(e.value).split("--rerun='")[1].rstrip("'")
  assert {'seed=2', 'strategy=random'} <= set(rerun.split(';'))
  sweeper.run(c, workdir, quiet=True, rerun=rerun)
  assert _table(os.path.join(workdir, results.TABLE))[rid]['seed'] == 2


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_the_same_table(finished_sweep, tmp_path, monkeypatch):
  c, _, path = finished_sweep
  with crash_after_epoch(monkeypatch, 1):
    sweeper.run(c, str(tmp_path), quiet=True)
  got = _table(sweeper.run(c, str(tmp_path), quiet=True))
  want = _table(path)
  drop = lambda r: {k: v for k, v in r.items() if k != 'duration_seconds'}
  assert {k: drop(v) for k, v in got.items()} == {k: drop(v) for k, v in want.items()}


def test_killed_between_the_runs_checkpoints_resumes_to_the_same_table(
    finished_sweep, tmp_path, monkeypatch):
  """Issue 19, item 3: killed after the first run of a batch wrote its first checkpoint
  and before the others did. With no step in common the batch starts again as one batch
  (with a step in common it resumes whole: test_interrupted_sweep_resumes_to_the_same_table
  and _parts). The table equals the uninterrupted sweep's."""
  step = 1
  from ordered_jax import checkpoint  # pylint: disable=g-import-not-at-top
  c, _, path = finished_sweep
  real = checkpoint.save
  calls = []

  def save(mgr, s, state, meta):
    if s == step and calls.count(s) == 1:
      mgr.wait_until_finished()
      raise RuntimeError('simulated kill')
    real(mgr, s, state, meta)
    calls.append(s)

  monkeypatch.setattr(checkpoint, 'save', save)
  with pytest.raises(RuntimeError, match='simulated kill'):
    sweeper.run(c, str(tmp_path), quiet=True)
  monkeypatch.undo()
  steps = sorted(tuple(checkpoint.steps(os.path.join(tmp_path, 'runs', d)))
                 for d in os.listdir(tmp_path / 'runs'))
  assert steps == [(), (), (1,)]
  batches = []
  real_run = experiment.run

  def spy(config, workdir, **kw):
    batches.append(([r.name for r in kw['batch']], kw['resume']))
    return real_run(config, workdir, **kw)

  monkeypatch.setattr(experiment, 'run', spy)
  got = _table(sweeper.run(c, str(tmp_path), quiet=True))
  first = [it.id for it in sweeper.batches(sweeper.plan(c))[0]]
  # The interrupted batch runs again with its three runs (XLA may order sums differently
  # for another batch size, so a split batch could change the numbers).
  assert batches[0] == (first, False) and len(batches) == 2
  want = _table(path)
  drop = lambda r: {k: v for k, v in r.items() if k != 'duration_seconds'}
  assert {k: drop(v) for k, v in got.items()} == {k: drop(v) for k, v in want.items()}


@pytest.mark.slow
def test_a_capped_sweep_continues_with_a_larger_cap(finished_sweep, tmp_path):
  """stop_after may change between invocations, as on a plain --resume: the runs capped at
  epoch 2 continue to the full length, the table then equals an uncapped sweep's."""
  c, _, path = finished_sweep
  capped = sweep_config(grid={'strategy': 'stride,random', 'seed': '0..3'}, max_runs=3,
                        stop_after=2)
  sweeper.run(capped, str(tmp_path), quiet=True)
  rows = _table(os.path.join(str(tmp_path), results.TABLE))
  assert {len(r['validation_accuracy']) for r in rows.values()} == {2}
  got = _table(sweeper.run(c, str(tmp_path), quiet=True))
  drop = lambda r: {k: v for k, v in r.items() if k != 'duration_seconds'}
  assert {k: drop(v) for k, v in got.items()} == {k: drop(v) for k, v in _table(path).items()}


@pytest.mark.slow
def test_a_changed_base_config_needs_another_workdir(finished_sweep):
  c, workdir, _ = finished_sweep
  other = sweep_config(grid={'strategy': 'stride,random', 'seed': '0..3'}, max_runs=3,
                       dropout=0.0)
  with pytest.raises(experiment.WorkdirError, match='dropout'):
    sweeper.run(other, workdir, quiet=True)


SHARDED = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
import jax
from tests.conftest import micro_config
from ordered_jax import experiment, train
c = micro_config(strategy='stride,random,target', epochs=2, optimizer='sgd', lr=0.05)
assert len(jax.devices()) == {n}
b = experiment.build(c)
from ordered_jax import sharding
mesh = sharding.runs_mesh()
state, spec, data = sharding.place(b.state, b.spec, b.data, mesh, sharding.padding(3, mesh),
                                   shared_data=True)
for e in range(2):
  state, m = b.trainer.epoch(state, spec, data, np.int32(e), do_eval=True)
leaves = [np.asarray(x)[:3].tolist() for x in jax.tree.leaves(state.params)]
print(json.dumps({{'params': leaves, 'correct': np.asarray(m['validation_correct'])[:3].tolist(),
                  'shards': len(state.active.sharding.device_set)}}))
"""


def _sharded(n):
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={n}',
         'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', SHARDED.format(root=ROOT, n=n)], env=env,
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def unsharded():
  return _sharded(1)


@pytest.mark.parametrize('n', [2, 4])
@pytest.mark.slow
def test_sharded_runs_equal_unsharded(n, unsharded):
  """Three runs over n devices (padded to a multiple of n) end equal to the same batch on
  one device: the same predictions, weights to float32 rounding (each device's XLA program
  has its own batch shape, so its summation order may differ in the last bit, as a batch
  of another size does on one device). SGD, because Adam's normalised step turns a
  last-bit difference in a near-zero gradient into a difference of order lr."""
  one, got = unsharded, _sharded(n)
  assert got['shards'] == n and one['shards'] == 1
  assert got['correct'] == one['correct']
  for a, b in zip(got['params'], one['params']):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_processes_checking_one_workdir_at_once_do_not_trip_each_other(tmp_path):
  """Every process of a --distributed job checks that the workdir is writable at the same
  moment: the check's file is private to each (a shared name made one process remove
  the other's, fail, and leave its peer waiting at a barrier)."""
  import threading  # pylint: disable=g-import-not-at-top
  errors = []

  def check():
    try:
      for _ in range(300):
        runs.check_workdir(str(tmp_path))
    except runs.ConfigError as e:
      errors.append(e)

  threads = [threading.Thread(target=check) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and not os.listdir(tmp_path)


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_run_one_batch_like_one_process(tmp_path):
  """main.py --distributed: two processes (one CPU device each) share a three-run batch on
  one mesh; process 0 writes the files, which match an in-process run to float rounding."""
  flags = ['--config=configs/default.py', '--quiet', '--config.strategy=stride,random,target',
           '--config.epochs=4'] + [f'--config.{k}={v}' for k, v in MICRO.items()
                                   if k not in ('epochs',)]
  port = _free_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen(
      [sys.executable, 'main.py', *flags, f'--workdir={tmp_path / "two"}', '--distributed',
       f'--coordinator=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:  # never leave a process waiting for its peer
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert '3 runs (+1 padding) sharded over 2 devices' in outs[0][1]
  c = micro_config(strategy='stride,random,target', epochs=4)
  experiment.run(c, str(tmp_path / 'one'), quiet=True)
  for run in ('stride', 'random', 'target'):
    two = sinks.read_jsonl(str(tmp_path / 'two' / run / f'{run}.jsonl'))
    one = sinks.read_jsonl(str(tmp_path / 'one' / run / f'{run}.jsonl'))
    assert [r['epoch'] for r in two] == [r['epoch'] for r in one]
    for a, b in zip(two, one):
      assert a['training_metrics/loss'] == pytest.approx(b['training_metrics/loss'], rel=1e-5)
    assert (sorted(os.listdir(tmp_path / 'two' / run / 'checkpoints')) ==
            sorted(os.listdir(tmp_path / 'one' / run / 'checkpoints')))
