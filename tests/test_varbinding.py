"""The fork's variable-binding task (``task=varbinding:PATH``, issue 16 part 2), on the
first 300 lines of its own data file, against a plain-Python reading of the format."""

import os

import numpy as np
import pytest

from ordered_jax import runs, tasks
from ordered_jax.task_kinds import varbinding
from tests.conftest import micro_config

DATA = os.path.join(os.path.dirname(__file__), 'data', 'varbinding_300.csv')


def _python_reading(path):
  """(input tokens, answer) per line, as text: the fork's fetch_example, and each answer
  checked by running the program with a dict."""
  out = []
  for line in open(path):
    pairs = [a.split('=') for a in line.strip().split(',')]
    env = {}
    for var, rhs in pairs[:-1]:
      env[var] = env[rhs] if rhs in env else rhs
    assert env[pairs[-1][0]] == pairs[-1][1]
    out.append(([t for v, r in pairs[:-1] for t in (v, r)] + [pairs[-1][0]], pairs[-1][1]))
  return out


def test_the_fork_file_as_tokens_and_labels():
  t = tasks.parse_task(f'varbinding:{DATA}', 97)
  assert (t.order, t.n_ops, t.n_codes) == (15, 35, 300)      # a-e, 0-9; 17 pairs + query
  vocab = list('abcde') + [str(d) for d in range(10)]
  rows = t.rows(np.arange(300))
  for (inputs, answer), row in zip(_python_reading(DATA), rows):
    assert [vocab[i] for i in row[:-1]] == inputs
    assert vocab[row[-1]] == answer


def test_split_orders_and_codes():
  t = tasks.parse_task(f'varbinding:{DATA}', 97)
  train, test = tasks.make_task(t, 150, 0, seed=3)
  assert len(train) == len(test) == 150
  codes = np.r_[t.encode(train[:, :-1]), t.encode(test[:, :-1])]
  assert sorted(codes) == list(range(300))                   # disjoint, every line once
  np.testing.assert_array_equal(t.decode(t.encode(train[:, :-1])), train[:, :-1])


def test_a_changed_file_is_read_again(tmp_path):
  path = tmp_path / 'prog.csv'
  lines = ['a=1,b=a,b=1', 'a=2,b=a,b=2', 'a=3,b=a,b=3']
  path.write_text('\n'.join(lines) + '\n')
  old = tasks.parse_task(f'varbinding:{path}', 97)
  first = old.rows(np.arange(3))[:, :-1]
  assert list(old.encode(first)) == [0, 1, 2]
  path.write_text('\n'.join(lines[::-1]) + '\n')
  os.utime(path, ns=(1, 1))                                  # a new stamp, whatever the clock
  new = tasks.parse_task(f'varbinding:{path}', 97)
  assert list(new.encode(first)) == [2, 1, 0]                # the new file's line numbers
  assert list(old.encode(first)) == [0, 1, 2]                # the old task keeps its own


@pytest.mark.parametrize('text,match', [
    ('', 'at least one line'),
    ('a=1,b=a,b=1\na=1,b=2\n', 'line 2: every line needs the same number'),
    ('a=1,b=a,b=2\n', 'line 1: the last assignment says b=2 but b holds 1'),
    ('a=1,b=c,b=1\n', 'but b is unset'),
    ('a=1,b=a,b=c\n', 'must state a value'),
    ('a=1;b=a,b=1\n', 'line 1: needs comma-separated'),
    ('a=1\n', 'same number \\(2..'),
])
def test_bad_files_are_refused_in_one_line(tmp_path, text, match):
  path = tmp_path / 'bad.csv'
  path.write_text(text)
  with pytest.raises(ValueError, match=match) as e:
    tasks.parse_task(f'varbinding:{path}', 97)
  assert '\n' not in str(e.value)


def test_unreadable_and_oversized_files(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match='cannot read the file'):
    tasks.parse_task(f'varbinding:{tmp_path / "missing.csv"}', 97)
  binary = tmp_path / 'binary.csv'
  binary.write_bytes(b'\xff\xfe\x00garbage')
  with pytest.raises(ValueError, match='cannot read the file'):
    tasks.parse_task(f'varbinding:{binary}', 97)
  monkeypatch.setattr(varbinding, 'MAX_BYTES', 100)
  with pytest.raises(ValueError, match='allows files up to 100 bytes'):
    tasks.parse_task(f'varbinding:{DATA}', 97)
  with pytest.raises(ValueError, match='needs the path'):
    tasks.parse_task('varbinding:', 97)


def test_config_validation():
  c = micro_config(task=f'varbinding:{DATA}', train_fraction=0.5, test_size=0)
  runs.validate(c)
  with c.unlocked():
    c.train_size, c.train_fraction = 'critical', 0.0
  with pytest.raises(runs.ConfigError, match='train_size'):
    runs.validate(c)
  c = micro_config(task='varbinding:/nonexistent/x.csv')
  with pytest.raises(runs.ConfigError, match='task'):
    runs.validate(c)


def test_trains_end_to_end(tmp_path):
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  c = micro_config(task=f'varbinding:{DATA}', model='mlp', train_fraction=0.5, test_size=0,
                   epochs=2, batch_size=50, strategy='stride')
  (summary,) = experiment.run(runs.resolve(c), str(tmp_path), quiet='silent')
  assert summary['training']['epochs_trained'] == 2
  assert summary['training']['steps_per_epoch'] == 3            # 150 training lines / 50
  assert 0 <= summary['final_eval']['validation_accuracy'] <= 100
