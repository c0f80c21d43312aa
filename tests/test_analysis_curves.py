"""The curve figure renders from run folders and fails cleanly without them."""

import json
import os

import matplotlib.image
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
