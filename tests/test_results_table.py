"""The sweep results table (ordered_jax.results): parts, consolidation, load, merge, CLI."""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ordered_jax import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(rid, seed=0, val=90.0, gen=None, **extra):
  """A run's row as the sweeper writes it: keys, final metrics, nullable epochs, curves."""
  return {'run_id': rid, 'seed': seed, 'final_validation_accuracy': val,
          'memorization_epoch': 3, 'generalization_epoch': gen,
          'epoch': [0, 1, 2], 'training_accuracy': [10.0, 50.0, None],
          'validation_accuracy': [1.0, 2.0, val], 'loss': [2.0, 1.0, 0.5], **extra}


def test_add_consolidate_load_round_trip(tmp_path):
  w = results.ResultsWriter(str(tmp_path))
  p1 = w.add([row('b', seed=1, gen=7), row('a', seed=0)])
  p2 = w.add([row('c', seed=2, **{'grokfast.kind': 'ema'})])
  assert os.path.basename(p1) == 'part_000001.parquet'
  assert os.path.basename(p2) == 'part_000002.parquet'
  assert w.add([]) == ''
  assert not [n for n in os.listdir(tmp_path / results.PARTS) if n.startswith('.')]
  path = w.consolidate()
  assert path == str(tmp_path / results.TABLE)
  assert not os.path.exists(tmp_path / results.PARTS)   # parts gone once the table is written
  t = results.load(str(tmp_path))
  assert t.column_names[0] == 'run_id'
  assert t.column('run_id').to_pylist() == ['a', 'b', 'c']  # sorted
  assert t.schema.field('epoch').type == pa.list_(pa.int64())
  assert t.schema.field('training_accuracy').type == pa.list_(pa.float64())
  assert t.schema.field('generalization_epoch').type == pa.int64()  # all-null part promoted
  rows = {r['run_id']: r for r in t.to_pylist()}
  assert rows['a']['generalization_epoch'] is None and rows['b']['generalization_epoch'] == 7
  assert rows['a']['training_accuracy'] == [10.0, 50.0, None]
  assert rows['a']['grokfast.kind'] is None and rows['c']['grokfast.kind'] == 'ema'
  # The file itself is one plain read (what pandas / polars read_parquet do).
  assert pq.read_table(path).num_rows == 3
  assert results.load(path).equals(t)
  assert w.consolidate() == path and results.load(path).equals(t)  # idempotent


def test_dedup_newest_wins(tmp_path):
  w = results.ResultsWriter(str(tmp_path))
  w.add([row('a', val=10.0), row('b', val=20.0)])
  w.consolidate()
  w.add([row('a', val=11.0)])
  w.add([row('a', val=12.0), row('c', val=30.0)])
  t = results.load(str(tmp_path))   # table + parts, newest part wins
  assert t.column('final_validation_accuracy').to_pylist() == [12.0, 20.0, 30.0]
  w.consolidate()
  t = pq.read_table(str(tmp_path / results.TABLE))
  assert t.column('run_id').to_pylist() == ['a', 'b', 'c']
  assert t.column('final_validation_accuracy').to_pylist() == [12.0, 20.0, 30.0]


def test_crash_recovery_reads_leftover_parts(tmp_path):
  w = results.ResultsWriter(str(tmp_path))
  w.add([row('a')])
  w.consolidate()
  w.add([row('b', seed=1)])     # "crash": never consolidated
  parts = os.listdir(tmp_path / results.PARTS)
  (tmp_path / results.PARTS / '.part_000003.parquet.tmp-1').write_bytes(b'half')  # torn write
  for src in (str(tmp_path), str(tmp_path / results.TABLE)):
    assert results.load(src).column('run_id').to_pylist() == ['a', 'b']
  assert sorted(os.listdir(tmp_path / results.PARTS)) == sorted(
      parts + ['.part_000003.parquet.tmp-1'])       # load writes and deletes nothing
  # Only parts, no table yet.
  only = tmp_path / 'only'
  results.ResultsWriter(str(only)).add([row('z')])
  assert results.load(str(only)).column('run_id').to_pylist() == ['z']
  # A new writer continues the numbering and consolidates everything.
  w2 = results.ResultsWriter(str(tmp_path))
  assert w2.add([row('c')]).endswith('part_000002.parquet')
  w2.consolidate()
  assert pq.read_table(str(tmp_path / results.TABLE)).column('run_id').to_pylist() == [
      'a', 'b', 'c']


def test_bad_rows_and_inputs(tmp_path):
  w = results.ResultsWriter(str(tmp_path))
  with pytest.raises(ValueError, match="non-empty string 'run_id'"):
    w.add([{'seed': 1}])
  with pytest.raises(ValueError, match="column 'seed'"):
    w.add([row('a', seed=1), row('b', seed='x')])
  with pytest.raises(ValueError, match='no such file'):
    results.load(str(tmp_path / 'missing'))


def _sweep(path, rows):
  w = results.ResultsWriter(str(path))
  w.add(rows)
  return w.consolidate()


def test_merge_unifies_columns_and_keeps(tmp_path):
  a = _sweep(tmp_path / 'a', [row('x', val=1.0, lr=0.1), row('y', val=2.0, lr=0.2)])
  b = tmp_path / 'b'
  _sweep(b, [row('y', val=3.0, **{'grokfast.kind': 'ema'}), row('z', val=4.0)])
  out = results.merge([a, str(b)], str(tmp_path / 'm'))
  assert out == str(tmp_path / 'm' / results.TABLE)
  t = pq.read_table(out)
  assert t.column('run_id').to_pylist() == ['x', 'y', 'z']
  assert t.column('final_validation_accuracy').to_pylist() == [1.0, 3.0, 4.0]  # last input
  assert t.column('lr').to_pylist() == [0.1, None, None]
  assert t.column('grokfast.kind').to_pylist() == [None, 'ema', None]
  first = results.merge([a, str(b)], str(tmp_path / 'first.parquet'), keep='first')
  assert first.endswith('first.parquet')
  assert pq.read_table(first).column('final_validation_accuracy').to_pylist() == [1.0, 2.0, 4.0]
  with pytest.raises(ValueError, match='keep'):
    results.merge([a], str(tmp_path / 'k'), keep='middle')


def test_merge_errors_are_one_line(tmp_path):
  a = _sweep(tmp_path / 'a', [row('x', lr=0.1)])
  c = _sweep(tmp_path / 'c', [row('w', lr='high')])
  with pytest.raises(ValueError) as e:
    results.merge([a, c], str(tmp_path / 'm'))
  assert str(e.value) == f"column 'lr' is double in {a} but string in {c}"
  bad = tmp_path / 'bad.parquet'
  bad.write_text('not parquet\nat all')
  for src, what in ((str(bad), 'cannot read'), (str(tmp_path / 'nope'), 'no such file'),
                    (str(tmp_path), 'not a sweep')):
    with pytest.raises(ValueError, match=what) as e:
      results.merge([a, src], str(tmp_path / 'm2'))
    assert '\n' not in str(e.value)


def test_cli_merge(tmp_path):
  a = _sweep(tmp_path / 'a', [row('x', seed=1)])
  b = _sweep(tmp_path / 'b', [row('x', seed=2), row('y')])
  out = tmp_path / 'out.parquet'
  cmd = [sys.executable, '-m', 'analysis', 'merge']
  env = {**os.environ, 'PYTHONPATH': ROOT, 'MPLBACKEND': 'Agg'}
  p = subprocess.run(cmd + [a, str(tmp_path / 'b'), '-o', str(out), '--keep', 'first'],
                     capture_output=True, text=True, cwd=ROOT, env=env, check=False)
  assert p.returncode == 0, p.stderr
  assert p.stdout.strip() == str(out)
  assert pq.read_table(str(out)).column('seed').to_pylist() == [1, 0]
  p = subprocess.run(cmd + [b, str(tmp_path / 'missing'), '-o', str(tmp_path / 'o2')],
                     capture_output=True, text=True, cwd=ROOT, env=env, check=False)
  assert p.returncode == 2
  assert p.stderr == f'error: {tmp_path / "missing"}: no such file or directory\n'
  assert not os.path.exists(tmp_path / 'o2')
