"""Where each ordering groks: a sweep's results table as one figure.

Left, a grid of cells (strategy x one more swept key, default weight_decay), each the mean
generalisation epoch over the remaining keys (seeds), annotated "epoch (k/n)" with k of n
runs reaching the target; cells where no run did are grey. Right, every run's test
accuracy curve, coloured by strategy.

  python -m analysis sweep_map --table output/sweep-tiny/results.parquet --out sweep.png
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ordered_jax import results  # noqa: E402
from analysis import style  # noqa: E402


def cells(rows: list[dict], column: str) -> tuple[list, list, dict]:
  """(strategies, column values, {(strategy, value): [generalisation epoch or None]})."""
  grid = collections.defaultdict(list)
  for r in rows:
    grid[(r['strategy'], r[column])].append(r['generalization_epoch'])
  strategies = sorted({k[0] for k in grid})
  values = sorted({k[1] for k in grid})
  return strategies, values, grid


def plot(rows: list[dict], out: str, column: str = 'weight_decay', title: str = '') -> str:
  if not rows:
    raise ValueError('the table has no rows')
  if column not in rows[0]:
    raise ValueError(f'--column {column!r} is not a column of the table')
  strategies, values, grid = cells(rows, column)
  fig, (ax_map, ax_curves) = plt.subplots(1, 2, figsize=(12, 0.6 * len(strategies) + 3),
                                          constrained_layout=True)
  mean = np.full((len(strategies), len(values)), np.nan)
  for i, s in enumerate(strategies):
    for j, v in enumerate(values):
      hit = [e for e in grid.get((s, v), []) if e is not None]
      if hit:
        mean[i, j] = np.mean(hit)
  lo, hi = np.nanmin(mean, initial=0.0), np.nanmax(mean, initial=1.0)
  for i, s in enumerate(strategies):
    for j, v in enumerate(values):
      epochs = grid.get((s, v), [])
      hit = [e for e in epochs if e is not None]
      label = f'{np.mean(hit):.0f}' if hit else 'never'
      dark = hit and mean[i, j] > (lo + hi) / 2  # late epochs are dark in viridis_r
      ax_map.text(j, i, f'{label}\n({len(hit)}/{len(epochs)})', ha='center', va='center',
                  fontsize=9, color='white' if dark else 'black')
  cmap = plt.get_cmap('viridis_r').with_extremes(bad='0.85')
  im = ax_map.imshow(np.ma.masked_invalid(mean), cmap=cmap, aspect='auto')
  ax_map.set_xticks(range(len(values)), [f'{v:g}' if isinstance(v, float) else str(v)
                                         for v in values])
  ax_map.set_yticks(range(len(strategies)), strategies)
  ax_map.set_xlabel(column)
  ax_map.set_title('mean generalisation epoch (runs that reached the target)')
  fig.colorbar(im, ax=ax_map, label='epoch')
  colors = dict(zip(strategies, plt.rcParams['axes.prop_cycle'].by_key()['color'] * 4))
  for r in rows:
    ax_curves.plot(r['epoch'], r['validation_accuracy'], color=colors[r['strategy']],
                   alpha=0.6, lw=1)
  for s in strategies:
    ax_curves.plot([], [], color=colors[s], label=s)
  ax_curves.set_xlabel('epoch')
  ax_curves.set_ylabel('test accuracy (%)')
  ax_curves.legend(loc='lower right', fontsize=8)
  if title:
    fig.suptitle(title)
  return style.save(fig, out, dpi=120)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--table', required=True, help='a sweep folder or its results.parquet')
  ap.add_argument('--out', required=True)
  ap.add_argument('--column', default='weight_decay', help='the swept key on the x axis')
  ap.add_argument('--title', default='')
  args = ap.parse_args(argv)
  try:
    print(plot(results.load(args.table).to_pylist(), args.out, args.column, args.title))
  except (ValueError, OSError) as e:
    sys.exit(f'error: {str(e).splitlines()[0]}')


if __name__ == '__main__':
  main()
