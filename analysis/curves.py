"""Accuracy and loss curves of every run in a workdir, one figure.

  python -m analysis curves --workdir output/tiny-all --out docs/figures/tiny_curves.png
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ordered_jax import sinks  # noqa: E402
from analysis import style  # noqa: E402

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


def plot(runs: dict[str, list[dict]], out: str, title: str = '') -> str:
  fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for (name, rows), color in zip(runs.items(), colors * 4):
    ev = [r for r in rows if ACC_TEST in r]
    epochs = [r['epoch'] for r in ev]
    nan = float('nan')  # a missing or NaN value (null in the JSONL) is a gap in the line
    ax_acc.plot(epochs, [r.get(ACC_TRAIN, nan) for r in ev], color=color, ls='--', lw=1.2)
    ax_acc.plot(epochs, [r[ACC_TEST] for r in ev], color=color, lw=1.8, label=name)
    ax_loss.semilogy([r['epoch'] for r in rows], [r.get(LOSS, nan) for r in rows],
                     color=color, lw=1.4, label=name)
  ax_acc.set(xlabel='epoch', ylabel='accuracy (%)', ylim=(-2, 102),
             title='test (solid) and train (dashed) accuracy')
  ax_loss.set(xlabel='epoch', ylabel='training loss', title='training loss (epoch mean)')
  for ax in (ax_acc, ax_loss):
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
  if title:
    fig.suptitle(title)
  return style.save(fig, out, dpi=120)


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
