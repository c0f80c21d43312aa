"""Figures of metric series across runs: metric_plot, compare, convergence, correlation,
layer_dynamics, area_plot. Each function takes ``readers.Run`` records and returns a
matplotlib figure (the CLI saves it); call them inside ``style.use(...)``."""

from __future__ import annotations

import re

import matplotlib.colors as mcolors
import numpy as np

from analysis import labels, series, style
from analysis.readers import InputError, Run


def _line(ax, x, y, color, label, smooth):
  """One series; with smoothing the raw values stay visible underneath."""
  if smooth:
    ax.plot(x, y, color=color, alpha=0.25, lw=1.0)
    y = series.ema(y, smooth)
  return ax.plot(x, y, color=color, label=label)[0]


def metric_plot(runs: list[Run], metrics: list[str], *, layout='overlay',
                group_by='strategy', log_scale=False, share_y=False, smooth=0.0,
                epoch_range=None, title=''):
  """Metric series over epochs.

  overlay + group_by strategy: a panel per metric, a line per run; overlay + group_by
  metric: a panel per run, a line per metric; grid: a panel per (metric, run)."""
  colors = style.colors()
  if layout == 'grid':
    cells = [(m, [r]) for m in metrics for r in runs]
    fig, axes = style.panels(len(cells), ncols=len(runs), nrows=len(metrics),
                             sharey='row' if share_y else False)
    for ax, (m, rs) in zip(axes, cells):
      e, v = rs[0].series(m, epoch_range)
      _line(ax, e, v, colors[runs.index(rs[0]) % len(colors)], rs[0].name, smooth)
      ax.set(title=rs[0].name, ylabel=labels.label(m))
  elif group_by == 'metric':
    fig, axes = style.panels(len(runs), sharey=share_y)
    for ax, r in zip(axes, runs):
      for i, m in enumerate(metrics):
        e, v = r.series(m, epoch_range)
        if e.size:
          _line(ax, e, v, colors[i % len(colors)], labels.label(m), smooth)
      ax.set(title=r.name)
      ax.legend()
  else:
    fig, axes = style.panels(len(metrics), sharey=share_y)
    for ax, m in zip(axes, metrics):
      for i, r in enumerate(runs):
        e, v = r.series(m, epoch_range)
        if e.size:
          _line(ax, e, v, colors[i % len(colors)], r.name, smooth)
      ax.set(title=labels.label(m), ylabel=labels.label(m))
      ax.legend()
  for ax in axes:
    ax.set_xlabel('epoch')
    if log_scale:
      ax.set_yscale('log')
  if title:
    fig.suptitle(title)
  return fig


def aggregates(runs: list[Run], metrics: list[str], stat: str, epoch_range=None):
  """{metric: [value per run]} of ``series.aggregate`` (NaN where a run lacks the metric)."""
  return {m: [series.aggregate(r.series(m, epoch_range)[1], stat) for r in runs]
          for m in metrics}


def compare(runs: list[Run], metrics: list[str], *, stat='final', epoch_range=None,
            title=''):
  """A bar chart per metric of one aggregate per run."""
  values = aggregates(runs, metrics, stat, epoch_range)
  colors = style.colors()
  fig, axes = style.panels(len(metrics), size=(max(3.0, 0.9 * len(runs) + 1.5), 3.0))
  names = [r.name for r in runs]
  for ax, m in zip(axes, metrics):
    v = np.asarray(values[m])
    bars = ax.bar(range(len(runs)), np.nan_to_num(v),
                  color=[colors[i % len(colors)] for i in range(len(runs))])
    ax.bar_label(bars, labels=['n/a' if np.isnan(x) else f'{x:.4g}' for x in v], fontsize=7)
    ax.set_xticks(range(len(runs)), names, rotation=30, ha='right')
    ax.set(title=f'{labels.label(m)} ({stat})', ylabel=labels.label(m))
    ax.grid(axis='x', visible=False)
  if title:
    fig.suptitle(title)
  return fig


def default_threshold(runs: list[Run], metric: str, direction: str) -> float:
  """90 % of the way from the worst to the best value any run reaches."""
  vals = np.concatenate([r.series(metric)[1] for r in runs] + [np.zeros(0)])
  vals = vals[np.isfinite(vals)]
  if not vals.size:
    raise InputError(f'no run has values of {metric!r}')
  lo, hi = vals.min(), vals.max()
  return float(lo + 0.9 * (hi - lo)) if direction == 'above' else float(hi - 0.9 * (hi - lo))


def crossings(runs: list[Run], metrics: list[str], thresholds: dict, directions: dict,
              epoch_range=None):
  """{metric: [first epoch reaching the threshold, or None, per run]}."""
  return {m: [series.first_crossing(*r.series(m, epoch_range), thresholds[m], directions[m])
              for r in runs] for m in metrics}


def convergence(runs: list[Run], metrics: list[str], thresholds: dict, directions: dict, *,
                normalize=False, smooth=0.0, epoch_range=None, title=''):
  """Per metric: a bar of the first epoch reaching the threshold per run, the curves with
  the threshold, and (``normalize``) the curves scaled to [0, 1]."""
  hits = crossings(runs, metrics, thresholds, directions, epoch_range)
  ncols = 3 if normalize else 2
  fig, axes = style.panels(len(metrics) * ncols, ncols=ncols)
  colors = style.colors()
  for row, m in enumerate(metrics):
    ax_bar, ax_curve = axes[row * ncols], axes[row * ncols + 1]
    reached = [np.nan if h is None else h for h in hits[m]]
    bars = ax_bar.bar(range(len(runs)), np.nan_to_num(reached),
                      color=[colors[i % len(colors)] for i in range(len(runs))])
    ax_bar.bar_label(bars, labels=['not reached' if np.isnan(h) else f'{h:g}'
                                   for h in reached], fontsize=7)
    ax_bar.set_xticks(range(len(runs)), [r.name for r in runs], rotation=30, ha='right')
    sign = '>=' if directions[m] == 'above' else '<='
    ax_bar.set(title=f'first epoch with {labels.label(m)} {sign} {thresholds[m]:.4g}',
               ylabel='epoch')
    for i, r in enumerate(runs):
      e, v = r.series(m, epoch_range)
      _line(ax_curve, e, v, colors[i % len(colors)], r.name, smooth)
      if normalize:
        _line(axes[row * ncols + 2], e, series.normalise(v), colors[i % len(colors)],
              r.name, smooth)
    ax_curve.axhline(thresholds[m], color='grey', ls='--', lw=1)
    ax_curve.set(title=labels.label(m), xlabel='epoch', ylabel=labels.label(m))
    ax_curve.legend()
    if normalize:
      axes[row * ncols + 2].set(title=f'{labels.label(m)} scaled to [0, 1]', xlabel='epoch')
  if title:
    fig.suptitle(title)
  return fig


def correlation(runs: list[Run], x: str, ys: list[str], *, trend_line=False, sample=0,
                seed=0, epoch_range=None, title=''):
  """Scatter of metric ``x`` against each of ``ys`` (a point per epoch holding both),
  coloured by run, with Pearson r per run in the legend and optional least-squares lines."""
  fig, axes = style.panels(len(ys))
  colors = style.colors()
  rng = np.random.default_rng(seed)
  for ax, y in zip(axes, ys):
    for i, r in enumerate(runs):
      ex, vx = r.series(x, epoch_range)
      ey, vy = r.series(y, epoch_range)
      common, ix, iy = np.intersect1d(ex, ey, return_indices=True)
      px, py = vx[ix], vy[iy]
      ok = np.isfinite(px) & np.isfinite(py)
      px, py = px[ok], py[ok]
      if not px.size:
        continue
      if sample and px.size > sample:
        keep = np.sort(rng.choice(px.size, sample, replace=False))
        px, py = px[keep], py[keep]
      rho = np.corrcoef(px, py)[0, 1] if px.size > 1 and px.std() and py.std() else np.nan
      c = colors[i % len(colors)]
      ax.scatter(px, py, s=10, color=c, alpha=0.7, label=f'{r.name} (r = {rho:.2f})')
      if trend_line and px.size > 1 and px.std():
        slope, icpt = np.polyfit(px, py, 1)
        xs = np.linspace(px.min(), px.max(), 2)
        ax.plot(xs, slope * xs + icpt, color=c, lw=1.2)
    ax.set(xlabel=labels.label(x), ylabel=labels.label(y),
           title=f'{labels.label(y)} vs {labels.label(x)}')
    ax.legend()
  if title:
    fig.suptitle(title)
  return fig


def layer_matrix(run: Run, prefix: str, *, aggregate_layers=False, sort='name', top=0,
                 relative=False, epoch_range=None):
  """(parameter names, epochs, values [params, epochs]) of the keys ``<prefix>/<param>``
  (or ``<prefix><param>``, as ``norms/norm_<param>``); layers merged by their mean with
  ``aggregate_layers``; with ``relative`` each row divided by its first finite value;
  sorted by name or by variance over time (largest first)."""
  keys = [k for k in run.keys() if k.startswith(prefix) and len(k) > len(prefix)
          and k[len(prefix)] in '/_']
  if not keys:
    return [], np.zeros(0), np.zeros((0, 0))
  epochs = np.unique(np.concatenate([run.series(k, epoch_range)[0] for k in keys]))
  rows = {}
  for k in keys:
    name = k[len(prefix) + 1:]
    if aggregate_layers:
      name = re.sub(r'layers\.\d+\.', 'layers.*.', name)
    e, v = run.series(k, epoch_range)
    full = np.full(epochs.shape, np.nan)
    full[np.searchsorted(epochs, e)] = v
    rows.setdefault(name, []).append(full)
  names = list(rows)
  mat = np.stack([np.nanmean(np.stack(rows[n]), axis=0) if len(rows[n]) > 1 else rows[n][0]
                  for n in names])
  if relative:
    first = np.array([row[np.isfinite(row)][0] if np.isfinite(row).any() else np.nan
                      for row in mat])
    mat = mat / np.where(first == 0, np.nan, first)[:, None]
  if sort == 'variance':
    order = np.argsort(-np.nan_to_num(np.nanvar(mat, axis=1), nan=-1.0), kind='stable')
  else:
    order = np.argsort(names, kind='stable')
  order = order[:top] if top else order
  return [names[i] for i in order], epochs, mat[order]


def layer_dynamics(runs: list[Run], prefix: str, *, aggregate_layers=False, log_norm=False,
                   sort='name', top=0, relative=False, epoch_range=None, title=''):
  """A heatmap per run: parameters (rows) x epochs (columns) of a per-parameter metric."""
  mats = {r.name: layer_matrix(r, prefix, aggregate_layers=aggregate_layers, sort=sort,
                               top=top, relative=relative, epoch_range=epoch_range)
          for r in runs}
  mats = {k: v for k, v in mats.items() if v[0]}
  if not mats:
    raise InputError(f'no run has per-parameter keys {prefix}/<param>')
  n_rows = max(len(v[0]) for v in mats.values())
  fig, axes = style.panels(len(mats), ncols=2, size=(6.0, max(2.6, 0.9 + 0.28 * n_rows)))
  for ax, (name, (params, epochs, mat)) in zip(axes, mats.items()):
    finite = mat[np.isfinite(mat)]
    norm = None
    if log_norm and finite.size and (finite > 0).any():
      norm = mcolors.LogNorm(vmin=finite[finite > 0].min(), vmax=finite.max())
    extent = (epochs[0] - 0.5, epochs[-1] + 0.5, len(params) - 0.5, -0.5)
    im = ax.imshow(np.ma.masked_invalid(mat), aspect='auto', interpolation='nearest',
                   cmap='viridis', norm=norm, extent=extent)
    ax.set_yticks(range(len(params)), [p.replace('transformer.layers.', 'L').replace(
        'self_attn.', '') for p in params], fontsize=7)
    ax.set(title=name, xlabel='epoch')
    ax.grid(False)
    fig.colorbar(im, ax=ax, label=labels.label(prefix) + (' / first value' if relative
                                                          else ''))
  if title:
    fig.suptitle(title)
  return fig


def dict_matrix(run: Run, metric: str, *, top_n=10, sort_by='power', epoch_range=None):
  """(keys, epochs, values [keys, epochs], other [epochs]) of a dict-valued metric: the
  ``top_n`` keys by final value in ``sort_by`` order (index, power or acquired = first
  epoch present), the rest summed into ``other``; missing entries count as 0."""
  epochs, dicts = run.dict_series(metric, epoch_range)
  keys = sorted({k for d in dicts for k in d}, key=lambda k: (float(k) if _numeric(k)
                                                                else float('inf'), k))
  if not keys:
    return [], epochs, np.zeros((0, len(epochs))), np.zeros(len(epochs))
  mat = np.array([[float(d.get(k, 0.0)) for d in dicts] for k in keys])
  by_power = np.argsort(-mat[:, -1], kind='stable')
  chosen = by_power[:top_n] if top_n else by_power
  if sort_by == 'index':
    chosen = np.sort(chosen)
  elif sort_by == 'acquired':
    first = np.array([np.flatnonzero(row > 0)[0] if (row > 0).any() else len(epochs)
                      for row in mat])
    chosen = sorted(chosen, key=lambda i: (first[i], i))
  elif sort_by != 'power':
    raise ValueError(f'sort_by must be index, power or acquired; got {sort_by!r}')
  chosen = list(chosen)
  rest = np.setdiff1d(np.arange(len(keys)), chosen)
  other = mat[rest].sum(axis=0) if rest.size else np.zeros(len(epochs))
  return [keys[i] for i in chosen], epochs, mat[chosen], other


def _numeric(k: str) -> bool:
  try:
    float(k)
    return True
  except ValueError:
    return False


def area_plot(runs: list[Run], metric: str, *, top_n=10, sort_by='power', normalize=False,
              share_y=False, epoch_range=None, title=''):
  """Stacked areas of a dict-valued metric (e.g. fourier/freq_powers) over epochs, a panel
  per run."""
  data = {r.name: dict_matrix(r, metric, top_n=top_n, sort_by=sort_by,
                              epoch_range=epoch_range) for r in runs}
  data = {k: v for k, v in data.items() if len(v[1])}
  if not data:
    raise InputError(f'no run has dict values for {metric!r}')
  if not any(v[0] for v in data.values()):
    raise InputError(f'every {metric!r} value is empty (nothing tracked yet)')
  fig, axes = style.panels(len(data), ncols=2, size=(5.5, 3.4), sharey=share_y)
  for ax, (name, (keys, epochs, mat, other)) in zip(axes, data.items()):
    stack = np.vstack([mat, other[None]]) if other.any() else mat
    names = list(keys) + (['other'] if other.any() else [])
    if normalize:
      total = stack.sum(axis=0)
      stack = np.divide(stack, total, out=np.zeros_like(stack), where=total > 0)
    ax.set(title=name, xlabel='epoch',
           ylabel=('share of total ' if normalize else '') + labels.label(metric))
    if not stack.size:
      ax.text(0.5, 0.5, 'no entries', transform=ax.transAxes, ha='center', color='grey')
      continue
    cmap = style.colors()
    cols = [cmap[i % len(cmap)] for i in range(len(keys))] + (['#bbbbbb'] if other.any()
                                                                 else [])
    ax.stackplot(epochs, stack, labels=[f'k = {n}' if n != 'other' else n for n in names],
                 colors=cols, alpha=0.85)
    ax.legend(loc='upper left', ncol=2, fontsize=7)
  if title:
    fig.suptitle(title)
  return fig
