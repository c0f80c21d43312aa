"""SGD against GD on a teacher (configs/dln_teacher.py): test loss against optimiser steps,
one line per batch size, from a sweep folder's runs.

Each run's steps after epoch e are (e + 1) x its steps per epoch (ceil(train / batch)), so
runs of different batch sizes share the x axis. Lines are geometric means over the runs
(seeds) of a batch size, bands their minimum to maximum.

  python -m analysis dln_sgd_gd --sweep output/dln-teacher --out dln_sgd_gd.png
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import style  # noqa: E402

KEY = 'training_metrics/validation_loss'


def curves(sweep_dir: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{batch size: (steps [T], test losses [runs, T])}; ValueError (one line) when the folder
  holds no teacher runs."""
  by_batch = collections.defaultdict(list)
  for cfg_path in sorted(glob.glob(os.path.join(sweep_dir, 'runs', '*', 'experiment_config.json'))):
    run_dir = os.path.dirname(cfg_path)
    with open(cfg_path) as f:
      cfg = json.load(f)
    spe = math.ceil(cfg['train_size'] / cfg['batch_size'])
    rows = []
    for path in glob.glob(os.path.join(run_dir, '*.jsonl')):
      with open(path) as f:
        rows += [json.loads(line) for line in f if line.strip()]
    pts = sorted((r['epoch'], r[KEY]) for r in rows if KEY in r)
    if pts:
      by_batch[cfg['batch_size']].append(
          (np.array([(e + 1) * spe for e, _ in pts]), np.array([v for _, v in pts])))
  if not by_batch:
    raise ValueError(f'{sweep_dir}: no runs with {KEY} (a teacher sweep, as '
                     'configs/dln_teacher.py)')
  out = {}
  for b, runs in sorted(by_batch.items()):
    t = min(len(s) for s, _ in runs)
    out[b] = (runs[0][0][:t], np.stack([v[:t] for _, v in runs]))
  return out


def plot(sweep_dir: str, out: str, title: str = '') -> str:
  data = curves(sweep_dir)
  fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
  for b, (steps, loss) in data.items():
    positive = np.maximum(loss, 1e-30)
    mean = np.exp(np.mean(np.log(positive), axis=0))
    line, = ax.plot(steps, mean, label=f'batch {b} ({loss.shape[0]} runs)')
    ax.fill_between(steps, positive.min(0), positive.max(0), color=line.get_color(), alpha=0.2)
  ax.set_yscale('log')
  ax.set_xlabel('optimiser steps')
  ax.set_ylabel('test loss (MSE)')
  ax.legend(fontsize=8)
  ax.set_title(title or 'Deep linear network on a diagonal teacher: SGD against GD')
  return style.save(fig, out, dpi=120)
