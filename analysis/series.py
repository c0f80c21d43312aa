"""Pure numpy operations on one metric series: smoothing, aggregates, threshold crossings."""

from __future__ import annotations

import numpy as np

STATS = ('final', 'min', 'max', 'mean')
LOWER_IS_BETTER = ('loss', 'error', 'perplexity')  # the reference's heuristic


def ema(values: np.ndarray, weight: float) -> np.ndarray:
  """Exponential moving average s_t = w s_{t-1} + (1 - w) x_t, NaN-aware.

  NaN inputs stay NaN and do not reset the average; ``weight`` in [0, 1) (0 = none), as
  the reference's ``--smooth`` and TensorBoard's smoothing slider."""
  if not 0.0 <= weight < 1.0:
    raise ValueError(f'smoothing weight must be in [0, 1); got {weight}')
  out = np.full(values.shape, np.nan)
  s = None
  for i, x in enumerate(values):
    if np.isnan(x):
      continue
    s = x if s is None else weight * s + (1.0 - weight) * x
    out[i] = s
  return out


def aggregate(values: np.ndarray, stat: str) -> float:
  """One number per series: its final (last finite), min, max or mean value (NaN if empty)."""
  finite = values[np.isfinite(values)]
  if not finite.size:
    return float('nan')
  if stat == 'final':
    return float(finite[-1])
  if stat in ('min', 'max', 'mean'):
    return float(getattr(np, stat)(finite))
  raise ValueError(f'stat must be one of {", ".join(STATS)}; got {stat!r}')


def lower_is_better(metric: str) -> bool:
  return any(w in metric.lower() for w in LOWER_IS_BETTER)


def first_crossing(epochs: np.ndarray, values: np.ndarray, threshold: float,
                   direction: str) -> float | None:
  """The first epoch whose value is >= threshold ('above') or <= threshold ('below')."""
  hit = values >= threshold if direction == 'above' else values <= threshold
  idx = np.flatnonzero(hit & np.isfinite(values))
  return float(epochs[idx[0]]) if idx.size else None


def normalise(values: np.ndarray) -> np.ndarray:
  """Min-max scaling to [0, 1] over the finite values (constant series -> 0)."""
  finite = values[np.isfinite(values)]
  if not finite.size:
    return values
  lo, hi = finite.min(), finite.max()
  return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
