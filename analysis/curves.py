"""Accuracy and loss curves of every run in a workdir, one figure.

  python -m analysis curves --workdir output/tiny-all --out docs/figures/tiny_curves.png
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ordered_jax import sinks  # noqa: E402
from analysis import series, style  # noqa: E402

ACC_TRAIN = 'training_metrics/training_accuracy'
ACC_TEST = 'training_metrics/validation_accuracy'
LOSS = 'training_metrics/loss'


def load_runs(workdir: str) -> dict[str, list[dict]]:
  """{run name: JSONL rows} for every run folder under ``workdir``."""
  out = {}
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, f'{name}.jsonl')
    if os.path.exists(path):
      out[name] = sinks.read_jsonl(path)
  if not out:
    raise FileNotFoundError(f'no <run>/<run>.jsonl under {workdir}')
  return out


def _number(v) -> float:
  """A plotted value: numbers as floats; missing, null, text or a bool: NaN, a gap."""
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return float(v)
  return float('nan')


def _line(rows: list[dict], key: str, smooth: float) -> tuple[list, np.ndarray]:
  """(epochs, values) of ``rows`` for ``key``, gaps as NaN, EMA-smoothed by ``smooth``."""
  return [r['epoch'] for r in rows], series.ema(
      np.array([_number(r.get(key)) for r in rows], dtype=float), smooth)


def plot(runs: dict[str, list[dict]], out: str, title: str = '', *, epoch_range=None,
         smooth: float = 0.0, dpi: int = 120) -> str:
  """The figure of ``runs`` ({name: rows}) at ``out``: epochs in ``epoch_range`` (inclusive
  (start, end), None: all), curves EMA-smoothed by ``smooth`` in [0, 1)."""
  fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for (name, rows), color in zip(runs.items(), colors * 4):
    rows = [r for r in rows if epoch_range is None
            or epoch_range[0] <= r['epoch'] <= epoch_range[1]]
    ev = [r for r in rows if ACC_TEST in r]
    ax_acc.plot(*_line(ev, ACC_TRAIN, smooth), color=color, ls='--', lw=1.2)
    ax_acc.plot(*_line(ev, ACC_TEST, smooth), color=color, lw=1.8, label=name)
    ax_loss.semilogy(*_line(rows, LOSS, smooth), color=color, lw=1.4, label=name)
  ax_acc.set(xlabel='epoch', ylabel='accuracy (%)', ylim=(-2, 102),
             title='test (solid) and train (dashed) accuracy')
  ax_loss.set(xlabel='epoch', ylabel='training loss', title='training loss (epoch mean)')
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
  if title:
    fig.suptitle(title)
  return style.save(fig, out, dpi=dpi)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--out', required=True)
  ap.add_argument('--title', default='')
  args = ap.parse_args(argv)
  try:
    print(plot(load_runs(args.workdir), args.out, args.title))
  except (FileNotFoundError, NotADirectoryError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  main()
