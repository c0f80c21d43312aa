"""Tian's scaling law from a sweep's results table: final test accuracy against the critical
multiplier, one line per modulus.

A run with ``train_size='critical'`` trains on n = c (ln M / M) (2.7482 - delta) T
examples; its multiplier x = 2.7482 - ``critical_delta`` is n in units of c (ln M / M) T,
so the law predicts the same transition near x = 2.7482 for every M. Points are runs
(seeds), lines their means; the dashed line is 2.7482 (configs/tian_scaling.py).

  python -m analysis scaling --table output/tian-scaling --out scaling.png
"""

from __future__ import annotations

import collections

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import style  # noqa: E402

CRITICAL = 2.7482
NEEDED = ('p', 'critical_delta', 'final_validation_accuracy')


def points(rows: list[dict]) -> dict[int, list[tuple[float, float]]]:
  """{M: [(multiplier, final test accuracy %)]}, sorted by multiplier; ValueError (one
  line) when a needed column is missing."""
  if not rows:
    raise ValueError('the table has no rows')
  for name in NEEDED:
    if name not in rows[0]:
      raise ValueError(f'the table has no column {name!r} (sweep p and critical_delta with '
                       "train_size='critical', as configs/tian_scaling.py)")
  out = collections.defaultdict(list)
  for r in rows:
    out[int(r['p'])].append((CRITICAL - float(r['critical_delta']),
                             float(r['final_validation_accuracy'])))
  return {m: sorted(v) for m, v in sorted(out.items())}


def plot(rows: list[dict], out: str, title: str = '') -> str:
  data = points(rows)
  fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for i, (m, pts) in enumerate(data.items()):
    xs, ys = np.array(pts).T
    means = {x: ys[xs == x].mean() for x in np.unique(xs)}
    c = colors[i % len(colors)]
    ax.scatter(xs, ys, color=c, s=14, alpha=0.6)
    ax.plot(list(means), list(means.values()), color=c, label=f'M = {m}')
  ax.axvline(CRITICAL, color='0.3', ls='--', lw=1, label='2.7482 (critical)')
  ax.set_xlabel('n / (c (ln M / M) M²): the critical multiplier')
  ax.set_ylabel('final test accuracy (%)')
  ax.set_ylim(-2, 102)
  ax.legend(fontsize=8, loc='lower right')
  ax.set_title(title or "Tian's scaling law: generalisation against training-set size")
  return style.save(fig, out, dpi=120)
