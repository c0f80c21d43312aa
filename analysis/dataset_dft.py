"""dataset_dft: how each ordering lays out the training set, seen as signals.

The training pairs are regenerated exactly as a run makes them (``ordered_jax.tasks``) and
put in each ordering's epoch-0 order (``ordered_jax.orderings``, any registered one that
does not read the model's losses: its ``prepare`` and ``order``, as a run calls them;
``random`` is our run's permutation of epoch 0). For each component (a, b,
c = (a + b) mod p) of the ordered sequence: its power spectrum, its autocorrelation, the
spectrum over Z/p of each batch's histogram (frequency index k as in the fourier probe:
power at k cycles over the p residues, averaged over batches), consecutive circular
differences, and the share of distinct values per batch (coverage).
"""

from __future__ import annotations

import numpy as np

from analysis import style, tables

COMPONENTS = ('a', 'b', 'c')
ORDERINGS = ('stride', 'target', 'fixed-random', 'random')
MAX_P = 46341  # a run's bound on p (its pairs are int32)


def memory_bytes(p: int, n: int, batch: int, n_orderings: int,
                 generator: str = 'reference') -> dict[str, int]:
  """Rough peak bytes: ``sequences`` (generating the pairs, the ordered tables, one
  component's spectra and autocorrelation) and ``histograms`` (one component's batch
  histograms [batches, p] with their DFT), checked before anything is computed."""
  from ordered_jax import budget  # pylint: disable=g-import-not-at-top
  per_train = budget.HOST_BYTES.get(generator, budget.HOST_BYTES['reference'])[0]
  n_batches = -(-n // batch)
  return {'sequences': per_train * n + n_orderings * n * 20 + 96 * n,
          'histograms': 40 * n_batches * p}


def _overlay(config, saved: dict) -> None:
  """``saved`` (a run's ``experiment_config.json``) over ``config``: its values, and the
  sections the defaults lack (an extension's, from the run's own config file)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  with config.unlocked():
    for k, v in saved.items():
      if k in ('environment', 'sweep'):
        continue
      if k not in config:
        config[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v
      elif isinstance(config[k], ml_collections.ConfigDict) and isinstance(v, dict):
        _overlay(config[k], v)
      elif not isinstance(config[k], ml_collections.ConfigDict):
        try:
          config[k] = tuple(v) if isinstance(config[k], tuple) and isinstance(v, list) else v
        except TypeError as e:
          raise ValueError(f'the run\'s config.{k} = {v!r} does not fit the defaults\' field '
                           f'({e})') from None


def ordered_sets(p: int, train_size: int, seed: int, *, stride: int = 0,
                 generator: str = 'reference', names=ORDERINGS,
                 batch_size: int = 256, saved: dict | None = None) -> dict[str, np.ndarray]:
  """{ordering: the training table [N, 3] in that ordering's epoch-0 row order}, each
  ordering built from a config of these values over the run's saved config ``saved``
  (its own sections included) or the defaults, and given the run's order key, as the
  trainer does. ``ValueError`` (one line) for an unknown ordering, one that reads the
  model's losses, or settings it cannot read."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from ordered_jax import orderings, tasks, train  # pylint: disable=g-import-not-at-top
  for name in names:
    if name not in orderings.REGISTRY:
      raise ValueError(f'unknown ordering {name!r}; one of {", ".join(orderings.REGISTRY)}')
    if orderings.REGISTRY[name].uses_losses:
      raise ValueError(f'ordering {name!r} orders by the losses of a model in training; '
                       'it has no order without one')
  train_Nx3, _ = tasks.make_mod_add(p, train_size, 0, seed, generator)
  config = default.get_config()
  if saved:
    _overlay(config, saved)
  config.update(dict(p=p, train_size=train_size, seed=seed, batch_size=batch_size,
                     stride=stride or orderings.default_stride(p), data_generator=generator))
  key = jax.random.fold_in(jax.random.key(seed), train.ORDER_STREAM)
  out = {}
  for name in names:
    try:
      o = orderings.get(name).from_config(config)
    except (KeyError, AttributeError) as e:
      field = str(e.args[0] if e.args else e).strip('\'"')
      raise ValueError(f'ordering {name!r} reads config.{field}, which the defaults lack '
                       '(give --workdir a run whose config has it)') from None
    prepared = jax.tree.map(jax.numpy.asarray, o.prepare(train_Nx3, config))
    order = o.order(prepared, key, 0, orderings.RunView(n=train_Nx3.shape[0]))
    out[name] = train_Nx3[np.asarray(order)]
  return out


def power_spectrum(x_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(frequency in cycles per row, power share) of the mean-removed sequence, DC dropped."""
  power = np.abs(np.fft.rfft(x_N - x_N.mean())) ** 2
  power = power[1:] / max(power[1:].sum(), 1e-300)
  return np.fft.rfftfreq(x_N.size)[1:], power


def autocorrelation(x_N: np.ndarray, max_lag: int) -> np.ndarray:
  """Normalised autocorrelation at lags 0..max_lag (via the FFT)."""
  z = x_N - x_N.mean()
  f = np.fft.rfft(z, 2 * z.size)
  acf = np.fft.irfft(np.abs(f) ** 2)[:max_lag + 1]
  return acf / acf[0] if acf[0] > 0 else np.zeros_like(acf)


def batch_histograms(x_N: np.ndarray, p: int, batch: int) -> np.ndarray:
  """Counts [batches, p] of the values of each consecutive batch (the last may be short)."""
  n_b = -(-x_N.size // batch)
  idx = np.repeat(np.arange(n_b), batch)[:x_N.size] * p + x_N
  return np.bincount(idx, minlength=n_b * p).reshape(n_b, p).astype(np.float64)


def batch_spectrum(hist_BxP: np.ndarray) -> np.ndarray:
  """Power share at k = 1..p//2 of the batch histograms' DFT over Z/p, mean over batches."""
  p = hist_BxP.shape[1]
  power = (np.abs(np.fft.fft(hist_BxP, axis=1)) ** 2)[:, 1:p // 2 + 1].mean(axis=0)
  return power / max(power.sum(), 1e-300)


def batch_coverage(hist_BxP: np.ndarray, batch: int) -> np.ndarray:
  """Distinct values per batch / the most a batch can hold (min(batch, p))."""
  return (hist_BxP > 0).sum(axis=1) / min(batch, hist_BxP.shape[1])


def flatness(power: np.ndarray) -> float:
  """Spectral flatness: geometric / arithmetic mean (1 = white noise, 0 = pure tones)."""
  pos = power[power > 0]
  return float(np.exp(np.mean(np.log(pos))) / np.mean(power)) if pos.size else 0.0


def stats(sets: dict[str, np.ndarray], p: int, batch: int, stride: int):
  """A ``pyarrow`` table: per (ordering, component) flatness, dominant period (rows), lag-1
  autocorrelation, batch-spectrum power at multiples of the stride, mean coverage."""
  from ordered_jax import orderings  # pylint: disable=g-import-not-at-top
  stride = stride or orderings.default_stride(p)
  names, cols = [], {k: [] for k in ('component', 'spectral_flatness', 'peak_period_rows',
                                     'acf_lag1', 'stride_harmonic_power', 'batch_coverage')}
  for name, abc in sets.items():
    for j, comp in enumerate(COMPONENTS):
      x = abc[:, j].astype(np.float64)
      freq, power = power_spectrum(x)
      hist = batch_histograms(abc[:, j], p, batch)
      spec = batch_spectrum(hist)
      harmonics = [m * stride for m in range(1, p // 2 // stride + 1) if m * stride <= p // 2]
      names.append(name)
      cols['component'].append(comp)
      cols['spectral_flatness'].append(flatness(power))
      cols['peak_period_rows'].append(float(1.0 / freq[np.argmax(power)]))
      cols['acf_lag1'].append(float(autocorrelation(x, 1)[1]))
      cols['stride_harmonic_power'].append(float(sum(spec[h - 1] for h in harmonics)))
      cols['batch_coverage'].append(float(batch_coverage(hist, batch).mean()))
  return tables.make('ordering', names, cols)


def _log_binned(freq: np.ndarray, power: np.ndarray, bins: int = 400):
  """Mean power in log-spaced frequency bins (keeps plots of long sequences light)."""
  edges = np.geomspace(freq[0], freq[-1] * (1 + 1e-9), bins + 1)
  total, _ = np.histogram(freq, edges, weights=power)
  count, _ = np.histogram(freq, edges)
  ok = count > 0
  return np.sqrt(edges[:-1] * edges[1:])[ok], total[ok] / count[ok]


def figure(sets: dict[str, np.ndarray], p: int, batch: int, *, max_lag: int = 500,
           title: str = ''):
  """Rows a, b, c; columns: sequence spectrum, autocorrelation, batch-histogram spectrum,
  consecutive circular differences, per-batch coverage; a line per ordering."""
  colors = style.colors()
  fig, axes = style.panels(15, ncols=5, size=(3.4, 2.6))
  n = next(iter(sets.values())).shape[0]
  lags = np.arange(1, min(max_lag, n - 1) + 1)
  for j, comp in enumerate(COMPONENTS):
    ax = axes[j * 5:(j + 1) * 5]
    for i, (name, abc) in enumerate(sets.items()):
      c = colors[i % len(colors)]
      x = abc[:, j].astype(np.float64)
      ax[0].loglog(*_log_binned(*power_spectrum(x)), color=c, label=name)
      ax[1].plot(lags, autocorrelation(x, lags[-1])[1:], color=c, label=name)
      hist = batch_histograms(abc[:, j], p, batch)
      spec = batch_spectrum(hist)
      ax[2].semilogy(np.arange(1, spec.size + 1), np.maximum(spec, 1e-12), color=c, lw=0.8,
                     label=name)
      diff = np.mod(np.diff(abc[:, j].astype(np.int64)), p)
      diff = np.minimum(diff, p - diff)
      ax[3].hist(diff, bins=min(50, p // 2 + 1), histtype='step', color=c, label=name,
                 density=True)
      ax[4].plot(batch_coverage(hist, batch), color=c, lw=0.8, label=name)
    ax[0].set(title=f'{comp}: sequence power spectrum', xlabel='cycles per row',
              ylabel='power share')
    ax[1].set(title=f'{comp}: autocorrelation', xlabel='lag (rows)', ylabel='ACF')
    ax[2].set(title=f'{comp}: batch histogram spectrum', xlabel='frequency k over Z/p',
              ylabel='power share')
    ax[3].set(title=f'{comp}: consecutive |difference| mod p', xlabel='circular difference',
              ylabel='density')
    ax[3].set_yscale('log')
    ax[4].set(title=f'{comp}: distinct values per batch', xlabel='batch',
              ylabel='coverage', ylim=(0, 1.05))
  axes[0].legend()
  fig.suptitle(title or f'orderings of the training set (p = {p}, N = {n}, batch {batch})')
  return fig
