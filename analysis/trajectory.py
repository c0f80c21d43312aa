"""PCA of parameter trajectories (``config.trajectory.every``; ordered_jax.trajectory).

  python -m analysis trajectory --workdir output/tiny-all --out trajectory.png

Every run's ``trajectory.npy`` records are points in parameter space (or in its random
projection). ``--basis joint`` (the default) centres all runs' points together and
projects them on their first two principal components, so the runs of a batch share one
plane and their paths compare; ``--basis run`` gives each run its own PCA and panel.
Start (circle) and end (square) of each path are marked; axes say the share of variance.
The scores come from the eigendecomposition of the points' Gram matrix (T x T), never a
D x D covariance, so full-size trajectories of large models fit in memory.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ordered_jax import trajectory as trajectory_lib


class NoTrajectory(ValueError):
  """No run under the workdir has a trajectory file (one-line message)."""


def read(runs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{run name: (epochs [T], points [T, D] float32, memory-mapped)} of every run
  (``analysis.readers`` runs) that has a ``trajectory.npy`` with at least one record."""
  out = {}
  for r in runs:
    path = os.path.join(r.path, trajectory_lib.FILENAME)
    if not os.path.isfile(path):
      continue
    try:
      rec = trajectory_lib.load(path, mmap=True)
    except ValueError as e:
      raise ValueError(f'{path}: {e}') from None
    if len(rec):
      out[r.name] = (np.array(rec['epoch'], np.int64), rec['params'])
  if not out:
    raise NoTrajectory('no run has a trajectory.npy (train with --config.trajectory.every=N)')
  return out


COLUMNS = 1 << 14  # columns read at a time: memory ~ points x COLUMNS x 8 bytes


def gram(blocks: list[np.ndarray]) -> np.ndarray:
  """X X^T (float64) of the centred rows of ``blocks`` stacked, reading COLUMNS columns at
  a time (the blocks may be memory-mapped files larger than memory)."""
  total = sum(len(b) for b in blocks)
  g = np.zeros((total, total))
  for c in range(0, blocks[0].shape[1], COLUMNS):
    x = np.concatenate([np.asarray(b[:, c:c + COLUMNS], np.float64) for b in blocks])
    x -= x.mean(axis=0, keepdims=True)
    g += x @ x.T
  return g


def pca(points, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """(scores [T, k], explained variance ratios [k]) of the centred points (one [T, D]
  array, or a list of blocks of rows stacked): the leading eigenvectors of the Gram
  matrix X X^T scaled by the square roots of their eigenvalues, which equal U S of X's
  SVD; each component's sign makes its largest |score| positive. Components beyond the
  rank are zero."""
  vals, vecs = np.linalg.eigh(gram(points if isinstance(points, list) else [points]))
  order = np.argsort(vals)[::-1]
  vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
  scores = np.zeros((vecs.shape[0], k))
  m = min(k, vecs.shape[0])
  scores[:, :m] = vecs[:, :m] * np.sqrt(vals[:m])
  for j in range(m):
    if scores[np.argmax(np.abs(scores[:, j])), j] < 0:
      scores[:, j] *= -1
  total = vals.sum()
  ratios = np.zeros(k)
  ratios[:m] = vals[:m] / total if total > 0 else 0.0
  return scores, ratios


def joint(runs: dict[str, tuple[np.ndarray, np.ndarray]]):
  """{run: scores [T, 2]} in the plane of the runs' pooled points, and the ratios."""
  dims = {n: p.shape[1] for n, (_, p) in runs.items()}
  if len(set(dims.values())) > 1:
    raise ValueError('the runs\' trajectories have different sizes '
                     f'({", ".join(f"{n} {d}" for n, d in dims.items())}); use --basis run')
  scores, ratios = pca([p for _, p in runs.values()])
  out, i = {}, 0
  for n, (e, _) in runs.items():
    out[n] = scores[i:i + len(e)]
    i += len(e)
  return out, ratios


def plot(runs: dict[str, tuple[np.ndarray, np.ndarray]], out: str, *, basis: str = 'joint',
         title: str = '', dpi: int = 150) -> str:
  """Draw the figure (see the module docstring) to ``out``; returns its path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from analysis import style  # pylint: disable=g-import-not-at-top
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color'] * 8
  if basis == 'joint':
    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    scores, ratios = joint(runs)
    panels = [(ax, list(runs), scores, ratios)]
  else:
    n = len(runs)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4.5 * cols,
                             4 * math.ceil(n / cols)), constrained_layout=True, squeeze=False)
    for a in axes.flat[n:]:
      a.set_visible(False)
    panels = []
    for a, (name, (_, p)) in zip(axes.flat, runs.items()):
      s, r = pca(p)
      panels.append((a, [name], {name: s}, r))
  for ax, names, scores, ratios in panels:
    for name in names:
      color = colors[list(runs).index(name)]
      s, epochs = scores[name], runs[name][0]
      ax.plot(s[:, 0], s[:, 1], '-', color=color, lw=1.3, alpha=0.9,
              label=f'{name} (epochs {epochs[0]}..{epochs[-1]})')
      ax.plot(s[0, 0], s[0, 1], 'o', color=color, ms=7, mfc='white', mew=1.8)
      ax.plot(s[-1, 0], s[-1, 1], 's', color=color, ms=7)
    ax.set(xlabel=f'PC1 ({100 * ratios[0]:.1f}% of variance)',
           ylabel=f'PC2 ({100 * ratios[1]:.1f}% of variance)')
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize='small',
              title='o start, \u25a0 end' if ax is panels[0][0] else None)
  if title:
    fig.suptitle(title)
  return style.save(fig, out, dpi=dpi)
