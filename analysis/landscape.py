"""The ordering landscape: a sweep's results table as maps p x training fraction.

One figure per metric, one panel per ordering plus the difference random minus
fixed-random, each a grid of cells (rows: ``--row``, default p; columns: ``--col``, default
train_fraction), the cell the mean over the remaining keys (seeds):

* ``generalization_epoch``: the mean over the seeds that reached the target, annotated
  "epoch (k/n)"; grey "never" when none did. The difference cell is defined where both
  orderings generalised in some seed; otherwise it says which one did ("F only": fixed-random
  generalised and random never did; "R only"; "neither").
* ``final_validation_accuracy``: the mean, annotated with the seeds' range when they differ
  by more than ``SPREAD`` points (a cell where the seeds disagree).
* ``gap``: generalisation minus memorisation epoch per run (both reached), as the first.

Also ``landscape_curves.png``: test accuracy over epochs per cell, every run coloured by
ordering, and ``landscape_cells.csv``: every cell's values per ordering.

  python -m analysis landscape --results docs/landscape/results.parquet --out docs/landscape/
"""

from __future__ import annotations

import collections
import csv
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis import atomic, style  # noqa: E402

ORDER = ('stride', 'fixed-random', 'random', 'target')
METRICS = ('generalization_epoch', 'final_validation_accuracy', 'gap')
TITLES = {'generalization_epoch': 'generalisation epoch (test >= target), mean over seeds that got there',
          'final_validation_accuracy': 'final test accuracy (%), mean over seeds',
          'gap': 'generalisation minus memorisation epoch, mean over seeds with both'}
DIFF = ('random', 'fixed-random')  # the difference panel: DIFF[0] minus DIFF[1]
SPREAD = 10.0                      # accuracy points between seeds that mark disagreement


def value(row: dict, metric: str):
  """One run's value of ``metric`` (None when it has none, e.g. never generalised)."""
  if metric == 'gap':
    g, m = row.get('generalization_epoch'), row.get('memorization_epoch')
    return None if g is None or m is None else g - m
  v = row.get(metric)
  return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def axes_values(rows: list[dict], row_key: str, col_key: str) -> tuple[list, list]:
  """The sorted distinct values of the two map axes."""
  for k in (row_key, col_key, 'strategy'):
    if rows and k not in rows[0]:
      raise ValueError(f'{k!r} is not a column of the table (columns: '
                       f'{", ".join(sorted(rows[0]))[:200]})')
  return sorted({r[row_key] for r in rows}), sorted({r[col_key] for r in rows})


def strategies(rows: list[dict]) -> list[str]:
  """The table's orderings, the paper's four first."""
  have = {r['strategy'] for r in rows}
  return [s for s in ORDER if s in have] + sorted(have - set(ORDER))


def cells(rows: list[dict], metric: str, strategy: str, row_key: str = 'p',
          col_key: str = 'train_fraction') -> dict:
  """{(row value, col value): [the runs' values, None where a run has none]}."""
  out = collections.defaultdict(list)
  for r in rows:
    if r['strategy'] == strategy:
      out[(r[row_key], r[col_key])].append(value(r, metric))
  return out


def grid(rows: list[dict], metric: str, strategy: str, row_key: str = 'p',
         col_key: str = 'train_fraction') -> np.ndarray:
  """[len(row values), len(col values)]: the mean of the defined values per cell, NaN
  where there is none."""
  rv, cv = axes_values(rows, row_key, col_key)
  got = cells(rows, metric, strategy, row_key, col_key)
  out = np.full((len(rv), len(cv)), np.nan)
  for i, a in enumerate(rv):
    for j, b in enumerate(cv):
      vals = [v for v in got.get((a, b), []) if v is not None]
      if vals:
        out[i, j] = np.mean(vals)
  return out


def grids(rows: list[dict], metric: str, row_key: str = 'p',
          col_key: str = 'train_fraction') -> dict[str, np.ndarray]:
  """Every ordering's grid, and ``'random - fixed-random'`` (NaN where either is NaN)
  when both orderings are in the table."""
  out = {s: grid(rows, metric, s, row_key, col_key) for s in strategies(rows)}
  if all(s in out for s in DIFF):
    out[f'{DIFF[0]} - {DIFF[1]}'] = out[DIFF[0]] - out[DIFF[1]]
  return out


def _fmt(v: float, metric: str) -> str:
  return f'{v:.1f}' if metric == 'final_validation_accuracy' else f'{v:.0f}'


def _label(vals: list, metric: str) -> str:
  hit = [v for v in vals if v is not None]
  if metric == 'final_validation_accuracy':
    if not hit:
      return 'n/a'
    text = _fmt(np.mean(hit), metric)
    if max(hit) - min(hit) > SPREAD:
      text += f'\n[{min(hit):.0f}-{max(hit):.0f}]'
    return text
  if not hit:
    return f'never\n(0/{len(vals)})'
  return f'{_fmt(np.mean(hit), metric)}\n({len(hit)}/{len(vals)})'


def _diff_label(a: list, b: list, d: float, metric: str) -> str:
  if not math.isnan(d):
    return f'{d:+.1f}' if metric == 'final_validation_accuracy' else f'{d:+.0f}'
  has_a, has_b = any(v is not None for v in a), any(v is not None for v in b)
  if metric == 'generalization_epoch':
    return {(False, True): 'F only', (True, False): 'R only'}.get((has_a, has_b), 'neither')
  return 'n/a'


def _ticks(values) -> list[str]:
  return [f'{v:g}' if isinstance(v, float) else str(v) for v in values]


def figure(rows: list[dict], metric: str, row_key: str = 'p', col_key: str = 'train_fraction',
           title: str = ''):
  """(figure, grids): a panel per ordering and the difference panel, each drawn with
  ``imshow`` of exactly its grid (``origin='lower'``: row values grow upwards)."""
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {", ".join(METRICS)}; got {metric!r}')
  rv, cv = axes_values(rows, row_key, col_key)
  gs = grids(rows, metric, row_key, col_key)
  names = list(gs)
  fig, axes = style.panels(len(names), ncols=len(names),
                           size=(0.9 * len(cv) + 1.6, 0.7 * len(rv) + 1.4))
  per = [g for n, g in gs.items() if ' - ' not in n]
  finite = np.concatenate([g[np.isfinite(g)] for g in per]) if per else np.array([])
  if metric == 'final_validation_accuracy':
    norm = mcolors.Normalize(0, 100)
    cmap = plt.get_cmap('viridis')
  else:
    lo = max(1.0, float(finite.min())) if finite.size else 1.0
    hi = max(lo * 1.01, float(finite.max())) if finite.size else 10.0
    norm = mcolors.LogNorm(lo, hi)
    cmap = plt.get_cmap('viridis_r')
  cmap = cmap.with_extremes(bad='0.85')
  for ax, name in zip(axes, names):
    g = gs[name]
    is_diff = ' - ' in name
    if is_diff:
      m = float(np.nanmax(np.abs(g))) if np.isfinite(g).any() else 1.0
      im = ax.imshow(np.ma.masked_invalid(g), origin='lower', aspect='auto',
                     cmap=plt.get_cmap('RdBu_r').with_extremes(bad='0.85'),
                     norm=mcolors.Normalize(-max(m, 1e-9), max(m, 1e-9)))
      a = cells(rows, metric, DIFF[0], row_key, col_key)
      b = cells(rows, metric, DIFF[1], row_key, col_key)
    else:
      im = ax.imshow(np.ma.masked_invalid(g), origin='lower', aspect='auto', cmap=cmap,
                     norm=norm)
      got = cells(rows, metric, name, row_key, col_key)
    for i, x in enumerate(rv):
      for j, y in enumerate(cv):
        if is_diff:
          text = _diff_label(a.get((x, y), []), b.get((x, y), []), g[i, j], metric)
        else:
          text = _label(got.get((x, y), []), metric) if (x, y) in got else ''
        ax.text(j, i, text, ha='center', va='center', fontsize=7)
    ax.set_xticks(range(len(cv)), _ticks(cv))
    ax.set_yticks(range(len(rv)), _ticks(rv))
    ax.grid(False)
    ax.set(xlabel=col_key, ylabel=row_key if ax is axes[0] or is_diff else '', title=name)
    if is_diff or ax is axes[len(per) - 1]:
      fig.colorbar(im, ax=ax, shrink=0.9)
  fig.suptitle(title or TITLES[metric])
  return fig, gs


def curves_figure(rows: list[dict], row_key: str = 'p', col_key: str = 'train_fraction',
                  title: str = ''):
  """Test accuracy over epochs, a panel per cell (rows: row values, high at the top), every
  run coloured by ordering (seeds share the colour)."""
  rv, cv = axes_values(rows, row_key, col_key)
  order = strategies(rows)
  colors = dict(zip(order, (style.colors() * 4)[:len(order)]))
  fig, axes = plt.subplots(len(rv), len(cv), figsize=(3.0 * len(cv), 2.2 * len(rv)),
                           squeeze=False, constrained_layout=True)
  for i, x in enumerate(rv):
    for j, y in enumerate(cv):
      ax = axes[len(rv) - 1 - i, j]
      for r in rows:
        if r[row_key] == x and r[col_key] == y and r.get('epoch') is not None:
          ax.plot(r['epoch'], r['validation_accuracy'], color=colors[r['strategy']], lw=1,
                  alpha=0.8)
      ax.set_title(f'{row_key}={_ticks([x])[0]}, {col_key}={_ticks([y])[0]}', fontsize=8)
      ax.set_ylim(-2, 102)
      if j == 0:
        ax.set_ylabel('test acc. (%)')
      if i == 0:
        ax.set_xlabel('epoch')
  for s in order:
    axes[0, -1].plot([], [], color=colors[s], label=s)
  axes[0, -1].legend(loc='upper left', fontsize=7)
  fig.suptitle(title or 'test accuracy per run (colour: ordering)')
  return fig


def cell_table(rows: list[dict], row_key: str = 'p', col_key: str = 'train_fraction'
               ) -> list[dict]:
  """One dict per (row, col, ordering): runs, how many memorised and generalised, the
  mean generalisation epoch and gap, the mean, min and max final test accuracy."""
  rv, cv = axes_values(rows, row_key, col_key)
  out = []
  for x in rv:
    for y in cv:
      for s in strategies(rows):
        rs = [r for r in rows if r[row_key] == x and r[col_key] == y and r['strategy'] == s]
        if not rs:
          continue
        gen = [value(r, 'generalization_epoch') for r in rs]
        gap = [value(r, 'gap') for r in rs]
        acc = [value(r, 'final_validation_accuracy') for r in rs]
        acc = [a for a in acc if a is not None]
        mean = lambda v: round(float(np.mean(v)), 2) if v else None  # noqa: E731
        out.append({row_key: x, col_key: y, 'strategy': s, 'runs': len(rs),
                    'memorised': sum(value(r, 'memorization_epoch') is not None for r in rs),
                    'generalised': sum(g is not None for g in gen),
                    'generalization_epoch': mean([g for g in gen if g is not None]),
                    'gap': mean([g for g in gap if g is not None]),
                    'final_validation_accuracy': mean(acc),
                    'acc_min': min(acc) if acc else None, 'acc_max': max(acc) if acc else None})
  return out


def write(rows: list[dict], out_dir: str, row_key: str = 'p', col_key: str = 'train_fraction',
          metrics=METRICS, dpi: int = 130) -> list[str]:
  """Every figure and the cell table under ``out_dir``; returns the paths."""
  if not rows:
    raise ValueError('the table has no rows')
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for m in metrics:
    fig, _ = figure(rows, m, row_key, col_key)
    paths.append(style.save(fig, os.path.join(out_dir, f'landscape_{m}.png'), dpi=dpi))
  paths.append(style.save(curves_figure(rows, row_key, col_key),
                          os.path.join(out_dir, 'landscape_curves.png'), dpi=dpi))
  table = cell_table(rows, row_key, col_key)
  path = os.path.join(out_dir, 'landscape_cells.csv')
  with atomic.replacing(path) as f:
    w = csv.DictWriter(f, fieldnames=list(table[0]))
    w.writeheader()
    w.writerows(table)
  return paths + [path]
