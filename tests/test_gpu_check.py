"""The benchmark scripts that CI can run without their hardware: benchmarks/gpu_check.py's
--dry_run (the GPU check's code paths at tiny sizes on the CPU, so it cannot rot) and
benchmarks/vs_reference.py's and parts_vs_reference.py's clean skip without the reference and
torch (and the latter's own half, which needs neither)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SECTIONS = ('paper_r1', 'paper_r4', 'determinism', 'probes', 'paper_r16', 'precision')


def _script(name, *args, timeout=120):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', name), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def _positive(*xs):
  return all(isinstance(x, (int, float)) and x > 0 for x in xs)


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_figure(tmp_path):
  proc = _script('gpu_check.py', f'--out={tmp_path}', '--dry_run', timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert sorted(os.listdir(tmp_path)) == ['gpu_check.json', 'gpu_check.md']
  with open(tmp_path / 'gpu_check.json') as f:
    d = json.load(f)
  assert d['dry_run'] is True and d['order'] == list(SECTIONS)
  assert d['environment']['backend'] == 'cpu'
  s = d['sections']
  assert {k: s[k]['status'] for k in SECTIONS} == {k: 'ok' for k in SECTIONS}, s
  for r, name in ((1, 'paper_r1'), (4, 'paper_r4'), (16, 'paper_r16')):
    p = s[name]
    assert p['runs'] == r and p['peak_bytes'] is None  # the CPU keeps no memory statistics
    assert _positive(p['compile_train_s'], p['compile_eval_s'], p['epoch_train_s'],
                     p['epoch_eval_s'], p['runs_x_steps_per_s'])
    assert p['epoch_s'] == p['epoch_train_s'] + p['epoch_eval_s']
    assert len(p['accuracies']['validation_accuracy']) == r
  pr = s['precision']
  assert set(pr['paper']) == {'highest', 'tensorfloat32'}
  assert isinstance(pr['short_run_identical'], bool) and _positive(pr['paper_train_speedup'])
  det = s['determinism']
  for key in ('deterministic_ops_on', 'deterministic_ops_off'):
    v = det[key]
    assert v['rows'][0] == v['rows'][1] == v['epochs_trained'] == 2
    assert v['identical'] is True  # two processes on one CPU agree bit for bit
  assert '--xla_gpu_deterministic_ops=true' in det['deterministic_ops_on']['xla_flags']
  assert 'deterministic' not in det['deterministic_ops_off']['xla_flags']
  assert _positive(det['flag_cost'])
  probes = s['probes']
  assert probes['probes'] == ['norms']
  assert _positive(probes['probe_epoch_s'], probes['between_s'], probes['plain_s'],
                   probes['amortised_x'])
  proj = d['projection']
  for k in ('sequential_R1', 'batched_R4'):
    assert _positive(proj[f'{k}_hours'], proj[f'{k}_full_hours'], proj[f'{k}_vs_reference'])
  assert proj['reference_hours'] == 57.6
  # Sequential: 11,148 epochs of one run; batched: 5,000 epochs of the four-run batch.
  assert abs(proj['sequential_R1_hours'] * 3600 - 11148 * s['paper_r1']['epoch_s']) < 1e-6
  assert abs(proj['batched_R4_hours'] * 3600 - 5000 * s['paper_r4']['epoch_s']) < 1e-6
  md = (tmp_path / 'gpu_check.md').read_text()
  assert md.startswith('# GPU check (DRY RUN')
  assert '| section | figure | value |' in md
  for name in SECTIONS + ('projection',):
    assert f'| {name} |' in md


def test_gpu_check_out_of_budget_still_writes(tmp_path):
  proc = _script('gpu_check.py', f'--out={tmp_path}', '--dry_run', '--budget_s=0.5',
                 '--sections=paper_r1,probes')
  assert proc.returncode == 0, proc.stderr[-2000:]
  d = json.loads((tmp_path / 'gpu_check.json').read_text())
  assert [d['sections'][k]['status'].split(':')[0] for k in ('paper_r1', 'probes')] == [
      'skipped', 'skipped']
  assert d['projection']['full_instrumentation_x'] is None
  assert '**skipped' in (tmp_path / 'gpu_check.md').read_text()


def test_gpu_check_bad_flag_is_one_line(tmp_path):
  proc = _script('gpu_check.py', f'--out={tmp_path}', '--sections=paper_r1,bogus')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "error: --sections: unknown 'bogus'; choose from " + ', '.join(SECTIONS)]
  assert not os.listdir(tmp_path)


def test_vs_reference_skips_cleanly(tmp_path):
  fake_checkout = tmp_path / 'OrderedLearning'
  (fake_checkout / 'experiments' / 'mod_arithmetic').mkdir(parents=True)
  (fake_checkout / 'run_experiment.py').write_text('')
  no_torch = tmp_path / 'python'
  no_torch.write_text('#!/bin/sh\nexit 1\n')
  no_torch.chmod(0o755)
  for args, why in (
      ((), '--reference_dir and --torch_python not given'),
      ((f'--reference_dir={tmp_path}', f'--torch_python={sys.executable}'),
       'is not an OrderedLearning checkout'),
      ((f'--reference_dir={fake_checkout}', f'--torch_python={tmp_path}/absent'),
       'does not run'),
      ((f'--reference_dir={fake_checkout}', f'--torch_python={no_torch}'),
       'cannot import torch')):
    proc = _script('vs_reference.py', *args, f'--out={tmp_path}/v.json', timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('vs_reference: skipped: '), proc.stdout
    assert why in lines[0]
  assert not os.path.exists(tmp_path / 'v.json')


def test_vs_reference_runs_both_sides_with_the_same_values():
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import vs_reference  # pylint: disable=g-import-not-at-top
  for name, want in (('ref97', {'--p': '97', '--train-size': '4000', '--test-size': '4000',
                                '--embed-dim': '256', '--weight-decay': '0.1'}),
                     ('tiny', {'--p': '97', '--train-size': '3500', '--test-size': '4000',
                               '--embed-dim': '128', '--weight-decay': '1.0'})):
    ref, ours, what = vs_reference.commands(name, 20, 'R', 'O', 'torchpy')
    flags = dict(zip(ref[3::2], ref[4::2]))
    assert ref[:3] == ['torchpy', 'run_experiment.py', 'mod_arithmetic']
    assert {k: flags[k] for k in want} == want
    assert flags['--strategy'] == 'stride' and flags['--epochs'] == '20'
    assert flags['--output-dir'] == 'R' and '--no-console-output' in ref
    assert '--config.mlp_dim=2048' in ours and '--config.epochs=20' in ours
    assert '--workdir=O' in ours and 'mlp 2048' in what


def test_parts_vs_reference_skips_cleanly_and_refuses_bad_flags(tmp_path):
  proc = _script('parts_vs_reference.py', f'--out={tmp_path}/p.json', timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().splitlines() == [
      'parts_vs_reference: skipped: --reference_dir and --torch_python not given']
  assert not os.path.exists(tmp_path / 'p.json')
  proc = _script('parts_vs_reference.py', '--rounds=0', timeout=60)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines() == ['error: --rounds and --reps must be at least 1']


def test_parts_vs_reference_names_a_failing_worker_in_one_line(tmp_path):
  """A reference whose worker dies: one line naming the side, exit 1, no JSON written."""
  ref = tmp_path / 'ref'
  (ref / 'experiments' / 'mod_arithmetic').mkdir(parents=True)
  (ref / 'run_experiment.py').write_text('')
  fake = tmp_path / 'python'
  fake.write_text('#!/bin/sh\ncase "$2" in *__version__*) echo "9.9 2";; '
                  '*) echo "ModuleNotFoundError: no model" >&2; exit 3;; esac\n')
  fake.chmod(0o755)
  proc = _script('parts_vs_reference.py', f'--reference_dir={ref}', f'--torch_python={fake}',
                 f'--out={tmp_path}/p.json', timeout=60)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      f'parts_vs_reference: reference: {fake} exited 3: ModuleNotFoundError: no model']
  assert not os.path.exists(tmp_path / 'p.json')
  proc = _script('parts_vs_reference.py', f'--out={tmp_path}/no/p.json', timeout=60)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f'error: --out={tmp_path}/no/p.json: its folder does not exist']


@pytest.mark.slow
def test_parts_vs_reference_our_side_measures():
  """Our half of the comparison runs (the torch half needs the reference and torch)."""
  proc = _script('parts_vs_reference.py', '--worker', '--reps=1', timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  assert _positive(row['step_ms'], row['eval_us_per_pair']), row
  assert row['eval_chunk'] == 1024  # the reference model's CPU chunk (experiment.eval_chunk)
