"""The curve figure renders from run folders and fails cleanly without them."""

import json
import os

import matplotlib.image
import numpy as np
import pytest

from analysis import curves


def test_plot_renders_every_run(tmp_path):
  for name in ('stride', 'random'):
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / f'{name}.jsonl', 'w') as f:
      for e in range(5):
        f.write(json.dumps({'epoch': e, curves.LOSS: 1.0 / (e + 1), curves.ACC_TRAIN: 20.0 * e,
                            curves.ACC_TEST: 10.0 * e}) + '\n')
  runs = curves.load_runs(str(tmp_path))
  assert list(runs) == ['random', 'stride'] and len(runs['stride']) == 5
  out = curves.plot(runs, str(tmp_path / 'fig.png'))
  img = matplotlib.image.imread(out)
  assert img.shape[0] > 100 and img.std() > 0  # not blank


def test_missing_runs_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError):
    curves.load_runs(str(tmp_path))


def test_a_missing_or_nan_value_is_a_gap(tmp_path):
  """The reference's files write NaN (null) for a diverged loss; a row may lack a key."""
  os.makedirs(tmp_path / 'stride')
  with open(tmp_path / 'stride' / 'stride.jsonl', 'w') as f:
    for e in range(5):
      row = {'epoch': e, curves.LOSS: 1.0 / (e + 1), curves.ACC_TRAIN: 20.0 * e,
             curves.ACC_TEST: 10.0 * e}
      if e == 2:
        row[curves.LOSS] = float('nan')
      if e == 3:
        del row[curves.LOSS], row[curves.ACC_TRAIN]
      f.write(json.dumps(row) + '\n')
  out = curves.plot(curves.load_runs(str(tmp_path)), str(tmp_path / 'fig.png'))
  assert matplotlib.image.imread(out).std() > 0


def test_text_values_are_gaps_and_the_options_apply(tmp_path):
  """A value that is not a number (text in an edited file) is a gap, not a category axis;
  the epoch range, smoothing and dpi reach the figure."""
  rows = [{'epoch': e, curves.LOSS: 1.0 / (e + 1), curves.ACC_TEST: 10.0 * e,
           curves.ACC_TRAIN: 'abc' if e == 2 else 20.0 * e} for e in range(6)]
  epochs, values = curves._line(rows, curves.ACC_TRAIN, 0.0)
  assert epochs == list(range(6)) and np.isnan(values[2]) and values[3] == 60.0
  _, smooth = curves._line(rows, curves.LOSS, 0.5)
  assert smooth[1] == 0.5 * 1.0 + 0.5 * 0.5
  small = curves.plot({'r': rows}, str(tmp_path / 'a.png'), dpi=50, epoch_range=(1, 3))
  big = curves.plot({'r': rows}, str(tmp_path / 'b.png'), dpi=100)
  assert 2 * matplotlib.image.imread(small).shape[1] == matplotlib.image.imread(big).shape[1]
