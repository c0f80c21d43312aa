"""Readers (ours and the reference's JSONL/CSV, paper-era names), series helpers, tables."""

import json
import os

import numpy as np
import pyarrow.csv as pa_csv
import pytest

from analysis import readers, series, tables

# The reference's paper-era JSONL: one POST_EPOCH line per epoch, SNAPSHOT lines, and one
# POST_STEP line per epoch whose values are lists (burst steps).
PAPER_ROWS = [
    {'epoch': 0, 'hook_point': 'POST_EPOCH', 'training_metrics/loss': 4.0,
     'training_metrics/train_acc': 1.0, 'training_metrics/val_acc': 0.5,
     'training_metrics/lr': 1e-3, 'fourier/freq_powers': {'3': 0.25}},
    {'epoch': 0, 'hook_point': 'SNAPSHOT', 'phases/phase_code': 0},
    {'epoch': 0, 'hook_point': 'POST_STEP', 'hessian/rayleigh_quotient': [1.0, float('nan'),
                                                                           3.0]},
    {'epoch': 1, 'hook_point': 'POST_EPOCH', 'training_metrics/loss': 3.0,
     'training_metrics/train_acc': 50.0, 'training_metrics/val_acc': None,
     'fourier/newly_acquired_freqs': [5, 7]},
    {'epoch': 1, 'hook_point': 'POST_STEP', 'hessian/rayleigh_quotient': []},
    {'epoch': 1, 'hook_point': 'SNAPSHOT', 'training_metrics/val_acc': 2.0,
     'training_metrics/loss': float('nan')},
]


def test_merge_rows_like_the_reference_loader():
  rows = readers.merge_rows(PAPER_ROWS)
  assert [r['epoch'] for r in rows] == [0, 1]
  r0, r1 = rows
  assert r0 == {'epoch': 0, 'training_metrics/loss': 4.0,
                'training_metrics/training_accuracy': 1.0,
                'training_metrics/validation_accuracy': 0.5,
                'training_metrics/learning_rate': 1e-3, 'fourier/freq_powers': {'3': 0.25},
                'phases/phase_code': 0, 'hessian/rayleigh_quotient': 2.0}  # NaN ignored
  # Later non-null values win; a NaN or None never overwrites; an empty list is null.
  assert r1['training_metrics/validation_accuracy'] == 2.0
  assert r1['training_metrics/loss'] == 3.0
  assert r1['fourier/newly_acquired_freqs'] == 6.0
  assert 'hessian/rayleigh_quotient' not in r1
  shuffled = readers.merge_rows([PAPER_ROWS[3], PAPER_ROWS[0], PAPER_ROWS[5]])
  assert [r['epoch'] for r in shuffled] == [0, 1]  # sorted by epoch


def test_canonical_names():
  assert readers.canonical('val_acc') == readers.TEST_ACC
  assert readers.canonical('training_metrics/train_acc') == readers.TRAIN_ACC
  assert readers.canonical('training_metrics/lr') == readers.LR
  assert readers.canonical('training_metrics/validation_accuracy') == readers.TEST_ACC
  assert readers.canonical('fourier/peak_power') == 'fourier/peak_power'


def _write_jsonl(path, rows, tail=''):
  with open(path, 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in rows) + tail)


def test_jsonl_and_csv_give_the_same_rows(tmp_path):
  run = tmp_path / 'stride'
  run.mkdir()
  _write_jsonl(run / 'stride.jsonl', PAPER_ROWS, tail='{"epoch": 2, "training_')  # torn
  other = tmp_path / 'target'
  other.mkdir()
  # The reference's CSV sink: lists as a;b, dicts as k:v;k:v, missing cells empty.
  (other / 'target.csv').write_text(
      'epoch,hook_point,training_metrics/loss,training_metrics/train_acc,'
      'training_metrics/val_acc,training_metrics/lr,fourier/freq_powers,phases/phase_code,'
      'hessian/rayleigh_quotient,fourier/newly_acquired_freqs\n'
      '0,POST_EPOCH,4.0,1.0,0.5,0.001,3:0.25,,,\n'
      '0,SNAPSHOT,,,,,,0,,\n'
      '0,POST_STEP,,,,,,,1.0;nan;3.0,\n'
      '1,POST_EPOCH,3.0,50.0,,,,,,5;7\n'
      '1,SNAPSHOT,nan,,2.0,,,,,\n')
  a = readers.read_run(str(run))
  b = readers.read_run(str(other))
  assert a.rows == b.rows and len(a.rows) == 2  # the torn last line is ignored
  assert a.strategy == 'stride' and a.origin == 'reference'
  e, v = a.series(readers.TEST_ACC)
  assert e.tolist() == [0, 1] and v.tolist() == [0.5, 2.0]
  assert a.dict_series('fourier/freq_powers')[1] == [{'3': 0.25}]


def test_malformed_inputs_are_input_errors(tmp_path):
  run = tmp_path / 'r'
  run.mkdir()
  (run / 'r.jsonl').write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
  with pytest.raises(readers.InputError, match=r'r.jsonl:2: not a JSON object'):
    readers.read_run(str(run))
  (run / 'r.jsonl').write_text('{"loss": 1}\n{"epoch": 1}\n')
  with pytest.raises(readers.InputError, match=r'r.jsonl:1: the row has no whole-number epoch'):
    readers.read_run(str(run))
  (run / 'r.jsonl').write_text('{"epoch": 0}\n')
  (run / 'summary.json').write_text('{broken')
  with pytest.raises(readers.InputError, match='summary.json: not valid JSON'):
    readers.read_run(str(run))
  with pytest.raises(readers.InputError, match='no such directory'):
    readers.load([str(tmp_path / 'absent')])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(readers.InputError, match='no run folders'):
    readers.load([str(tmp_path / 'empty')])


@pytest.mark.parametrize('epoch', ['Infinity', '1e400', 'NaN', '"two"', '1.5', 'true'])
def test_an_epoch_that_is_not_a_whole_number_names_the_line(tmp_path, epoch):
  run = tmp_path / 'r'
  run.mkdir()
  (run / 'r.jsonl').write_text(f'{{"epoch": 0}}\n{{"epoch": {epoch}}}\n{{"epoch": 2}}\n')
  with pytest.raises(readers.InputError, match=r'r.jsonl:2: the row has no whole-number'):
    readers.read_run(str(run))
  (run / 'r.jsonl').unlink()
  cell = {'Infinity': 'inf', '"two"': 'two', 'true': 'True'}.get(epoch, epoch)
  (run / 'r.csv').write_text(f'epoch,loss\n0,1.0\n{cell},2.0\n')
  with pytest.raises(readers.InputError, match=r'r.csv:3: bad epoch'):
    readers.read_run(str(run))


def test_a_line_that_is_not_utf8_names_the_line(tmp_path):
  run = tmp_path / 'r'
  run.mkdir()
  (run / 'r.jsonl').write_bytes(b'{"epoch": 0}\n{"epoch": 1, "x": "\xff"}\n{"epoch": 2}\n')
  with pytest.raises(readers.InputError, match=r'r.jsonl:2: not a JSON object'):
    readers.read_run(str(run))
  (run / 'r.jsonl').unlink()
  (run / 'r.csv').write_bytes(b'epoch,loss\n0,1.0\n1,\xff\n')
  with pytest.raises(readers.InputError, match=r'r.csv: not UTF-8'):
    readers.read_run(str(run))


@pytest.mark.parametrize('summary,part', [
    ({'training': None}, 'training'), ({'training': 5}, 'training'),
    ({'grokking': 3}, 'grokking'), ({'final_eval': 'x'}, 'final_eval'),
    ({'timing': []}, 'timing')])
def test_summary_parts_of_the_wrong_type_are_named(tmp_path, summary, part):
  run = tmp_path / 'r'
  run.mkdir()
  (run / 'summary.json').write_text(json.dumps(summary))
  with pytest.raises(readers.InputError, match=rf'summary.json: {part}: expected a JSON'):
    readers.read_run(str(run))


def test_an_environment_that_is_not_an_object_is_the_reference_s(tmp_path):
  run = tmp_path / 'r'
  run.mkdir()
  (run / 'r.jsonl').write_text('{"epoch": 0}\n')
  (run / 'experiment_config.json').write_text('{"environment": 5}')
  assert readers.read_run(str(run)).origin == 'reference'


def test_workdirs_side_by_side_and_filters(tmp_path):
  for wd, names in (('ours', ('stride', 'random')), ('paper', ('stride',))):
    for n in names:
      os.makedirs(tmp_path / wd / n)
      _write_jsonl(tmp_path / wd / n / f'{n}.jsonl', [{'epoch': 0, 'val_acc': 1.0}])
  (tmp_path / 'ours' / 'analysis').mkdir()  # our own output folder is not a run
  runs = readers.load([str(tmp_path / 'ours'), str(tmp_path / 'paper')])
  assert [r.name for r in runs] == ['ours/random', 'ours/stride', 'paper/stride']
  only = readers.load([str(tmp_path / 'ours'), str(tmp_path / 'paper')], ['stride'])
  assert [r.name for r in only] == ['ours/stride', 'paper/stride']
  single = readers.load([str(tmp_path / 'ours' / 'random')])  # a run folder itself
  assert [r.name for r in single] == ['random']
  with pytest.raises(readers.InputError, match='--strategies target: no such run'):
    readers.load([str(tmp_path / 'ours')], ['target'])
  assert readers.expand_metrics(runs, ['val_acc']) == [readers.TEST_ACC]
  with pytest.raises(readers.InputError, match="no run has metric 'nope/x'"):
    readers.expand_metrics(runs, ['nope/x'])


def test_a_sweep_folder_is_read_with_its_runs_labelled(tmp_path):
  """A sweep's workdir (sweep.json, runs/<id>/): its runs, labelled by the config values
  that differ between them (the run's own name left out); the ids where those labels
  would not be unique."""
  (tmp_path / 'sw' / 'runs').mkdir(parents=True)
  (tmp_path / 'sw' / 'sweep.json').write_text('{"base": {}}')
  for rid, seed, wd in (('aaa111', 0, 0.1), ('bbb222', 1, 0.1), ('ccc333', 0, 1.0)):
    d = tmp_path / 'sw' / 'runs' / rid
    d.mkdir()
    _write_jsonl(d / f'{rid}.jsonl', [{'epoch': 0, 'val_acc': 1.0}])
    (d / 'experiment_config.json').write_text(json.dumps(
        {'seed': seed, 'run_name': rid, 'p': 13, 'grokfast': {'kind': 'none', 'wd': wd}}))
  runs = readers.load([str(tmp_path / 'sw')])
  assert [r.name for r in runs] == ['seed=0,grokfast.wd=0.1', 'seed=1,grokfast.wd=0.1',
                                    'seed=0,grokfast.wd=1.0']
  both = readers.load([str(tmp_path / 'sw'), str(tmp_path / 'sw')])
  assert both[0].name == 'sw/seed=0,grokfast.wd=0.1'
  (tmp_path / 'sw' / 'runs' / 'ccc333' / 'experiment_config.json').write_text(
      json.dumps({'seed': 0, 'p': 13, 'grokfast': {'kind': 'none', 'wd': 0.1}}))
  assert [r.name for r in readers.load([str(tmp_path / 'sw')])] == [
      'aaa111', 'bbb222', 'ccc333']  # two runs alike: their ids


def test_unknown_metric_labels_carry_their_probe():
  from analysis import labels  # pylint: disable=g-import-not-at-top
  assert labels.label('weight_rms/relative') == 'relative (weight_rms)'
  assert labels.label('counterfactual/ordering_fraction/embed') == (
      'ordering fraction [embed] (counterfactual)')
  assert labels.label('training_metrics/grad_norm') == 'grad norm'
  assert labels.label('fourier/spectral_entropy') == 'embedding spectral entropy'


def test_summaries_and_targets(tmp_path):
  run = tmp_path / 'stride'
  run.mkdir()
  (run / 'summary.json').write_text(json.dumps({
      'strategy': 'stride', 'final_eval': {'val_acc': 99.56, 'train_acc': 99.69},
      'init_eval': {'val_acc': 0.01}, 'training': {'actual_epochs': 487}}))
  (run / 'experiment_config.json').write_text(json.dumps({'target_acc': 99.5, 'p': 9973,
                                                          'environment': {'torch_version': 1}}))
  r = readers.load([str(run)])[0]
  assert r.rows == [] and r.origin == 'reference' and r.target_acc == 99.5
  assert r.summary['final_eval'] == {'validation_accuracy': 99.56, 'training_accuracy': 99.69}
  (run / 'experiment_config.json').write_text('{}')
  assert readers.load([str(run)])[0].target_acc == readers.DEFAULT_TARGET_ACC


def test_series_helpers():
  x = np.array([1.0, np.nan, 3.0, 5.0])
  np.testing.assert_allclose(series.ema(x, 0.5), [1.0, np.nan, 2.0, 3.5])
  np.testing.assert_allclose(series.ema(x, 0.0), x)
  with pytest.raises(ValueError):
    series.ema(x, 1.0)
  assert series.aggregate(x, 'final') == 5.0 and series.aggregate(x, 'min') == 1.0
  assert series.aggregate(x, 'mean') == 3.0 and series.aggregate(x, 'max') == 5.0
  assert np.isnan(series.aggregate(np.array([np.nan]), 'final'))
  e = np.array([0.0, 2.0, 4.0, 6.0])
  assert series.first_crossing(e, np.array([1, 5, 9, 2.0]), 5, 'above') == 2.0
  assert series.first_crossing(e, np.array([9, 5, 1, 2.0]), 1.5, 'below') == 4.0
  assert series.first_crossing(e, np.array([1, 2, 3, 4.0]), 9, 'above') is None
  assert series.lower_is_better('training_metrics/loss')
  assert not series.lower_is_better('training_metrics/validation_accuracy')
  np.testing.assert_allclose(series.normalise(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])


def _table():
  return tables.make('run', ['stride', 'random_run'], {
      'training_metrics/loss': [0.25, 1.5], 'training_metrics/validation_accuracy': [99.5, 2.0],
      'memorised at': [10.0, None]})


def _parse_latex(text):
  body = text.split('\\midrule\n')[1].split('\\bottomrule')[0]
  rows = [[c.strip() for c in line.rstrip(' \\').split(' & ')]
          for line in body.strip().splitlines()]
  header = text.split('\\toprule\n')[1].split('\n')[0].rstrip(' \\').split(' & ')
  return [h.replace('\\_', '_') for h in header], rows


def _parse_markdown(text):
  lines = text.strip().splitlines()
  split = lambda line: [c.strip() for c in line.strip('|').split('|')]  # noqa: E731
  assert set(lines[1].replace('|', '').replace('-', '').replace(':', '')) == set()
  return split(lines[0]), [split(line) for line in lines[2:]]


def test_table_formats_parse_back(tmp_path):
  t = _table()
  header, rows = _parse_latex(tables.to_latex(t, precision=3, bold_best=True,
                                              caption='final_values & more'))
  assert header == ['run', 'training_metrics/loss', 'training_metrics/validation_accuracy',
                    'memorised at']
  # Bold best: the lowest loss, the highest accuracy; whole-number columns as integers.
  assert rows == [['stride', r'\textbf{0.250}', r'\textbf{99.500}', '10'],
                  [r'random\_run', '1.500', '2.000', '--']]
  assert r'\caption{final\_values \& more}' in tables.to_latex(t, caption='final_values & more')
  header, rows = _parse_markdown(tables.to_markdown(t, precision=2, bold_best=True))
  assert header[0] == 'run' and rows[0] == ['stride', '**0.25**', '**99.50**', '10']
  assert rows[1] == ['random_run', '1.50', '2.00', '--']
  path = tables.write(t, str(tmp_path / 't.csv'), 'csv')
  back = pa_csv.read_csv(path)
  assert back.column('run').to_pylist() == ['stride', 'random_run']
  assert back.column('training_metrics/loss').to_pylist() == [0.25, 1.5]  # full precision
  assert back.column('memorised at').to_pylist() == [10, None]
