"""configs/landscape.py (issue 18): the grid it plans and its step-matched epoch caps."""

import math

from configs import landscape
from ordered_jax import runs, sweeper


def test_landscape_plan_is_the_grid_in_step_matched_batches():
  config = landscape.get_config()
  items = sweeper.plan(config)
  assert len(items) == 4 * 2 * len(landscape.POINTS) == 96
  points = {(it.keys['p'], it.keys['train_fraction']) for it in items}
  assert points == {(p, f) for p in landscape.PRIMES for f in landscape.FRACTIONS}
  assert {it.keys['strategy'] for it in items} == {'stride', 'fixed-random', 'random', 'target'}
  assert {it.keys['seed'] for it in items} == {0, 1}
  batches = sweeper.batches(items)
  assert [len(b) for b in batches] == [8] * len(landscape.POINTS)
  for b in batches:  # one (p, fraction) per batch, in POINTS order
    assert len({(it.keys['p'], it.keys['train_fraction']) for it in b}) == 1
  assert [(b[0].keys['p'], b[0].keys['train_fraction']) for b in batches] == \
      list(landscape.POINTS)
  for it in items:
    c = it.config
    n_train, n_test = runs.sizes(c)
    assert n_train == round(c.train_fraction * c.p ** 2)
    steps = c.epochs * math.ceil(n_train / c.batch_size)  # a partial last batch is a step
    assert landscape.STEPS <= steps <= 1.11 * landscape.STEPS
    assert n_test == min(landscape.TEST, c.p ** 2 - n_train)
    assert c.weight_decay == 1.0 and c.embed_dim <= 128 and c.mlp_dim <= 512


# -- the map (analysis/landscape.py, python -m analysis landscape) -----------------------

import os  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from ordered_jax import results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, 'docs', 'landscape', 'results.parquet')


def synthetic_rows():
  """A small table with every case: grokked, never, mixed seeds, a missing cell."""
  rng = np.random.default_rng(0)
  rows = []
  for p in (7, 5, 11):
    for f in (0.5, 0.2):
      for s in ('target', 'random', 'fixed-random', 'stride'):
        if (p, f, s) == (11, 0.2, 'stride'):
          continue  # a cell without runs
        for seed in (0, 1):
          gen = None if rng.random() < 0.35 else int(rng.integers(5, 300))
          mem = None if rng.random() < 0.2 else int(rng.integers(1, 50))
          rows.append({'run_id': f'{p}-{f}-{s}-{seed}', 'p': p, 'train_fraction': f,
                       'strategy': s, 'seed': seed, 'generalization_epoch': gen,
                       'memorization_epoch': mem,
                       'final_validation_accuracy': float(rng.uniform(0, 100)),
                       'epoch': [0, 1, 2], 'validation_accuracy': list(rng.uniform(0, 100, 3))})
  return rows


def pivot(rows, metric, strategy):
  """Brute force: {(p, fraction): mean over the runs with a value}."""
  out = {}
  for p in sorted({r['p'] for r in rows}):
    for f in sorted({r['train_fraction'] for r in rows}):
      vals = []
      for r in rows:
        if (r['p'], r['train_fraction'], r['strategy']) != (p, f, strategy):
          continue
        g, m = r['generalization_epoch'], r['memorization_epoch']
        v = (None if g is None or m is None else g - m) if metric == 'gap' else r[metric]
        if v is not None:
          vals.append(v)
      out[(p, f)] = sum(vals) / len(vals) if vals else float('nan')
  return out


@pytest.mark.parametrize('metric', ['generalization_epoch', 'final_validation_accuracy', 'gap'])
def test_map_draws_the_tables_values(metric):
  from analysis import landscape
  rows = synthetic_rows()
  fig, grids = landscape.figure(rows, metric)
  ps, fs = [5, 7, 11], [0.2, 0.5]
  names = [ax.get_title() for ax in fig.axes if ax.images]
  assert names == ['stride', 'fixed-random', 'random', 'target', 'random - fixed-random']
  for ax in fig.axes:
    if not ax.images:
      continue
    drawn = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
    name = ax.get_title()
    if name == 'random - fixed-random':
      a, b = pivot(rows, metric, 'random'), pivot(rows, metric, 'fixed-random')
      want = np.array([[a[(p, f)] - b[(p, f)] for f in fs] for p in ps])
    else:
      c = pivot(rows, metric, name)
      want = np.array([[c[(p, f)] for f in fs] for p in ps])
    np.testing.assert_allclose(drawn, want, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(grids[name], want, rtol=1e-12, equal_nan=True)
    assert ax.images[0].origin == 'lower'  # p grows upwards
    assert [t.get_text() for t in ax.get_yticklabels()] == ['5', '7', '11']
    assert [t.get_text() for t in ax.get_xticklabels()] == ['0.2', '0.5']
  assert np.isnan(grids['stride'][2, 0])  # the cell without runs
  import matplotlib.pyplot as plt
  plt.close(fig)


def test_difference_cells_say_who_generalised():
  from analysis import landscape
  base = dict(p=5, train_fraction=0.5, memorization_epoch=1, final_validation_accuracy=1.0)
  rows = [dict(base, run_id='a', strategy='random', seed=0, generalization_epoch=None),
          dict(base, run_id='b', strategy='fixed-random', seed=0, generalization_epoch=40)]
  fig, grids = landscape.figure(rows, 'generalization_epoch')
  diff = [ax for ax in fig.axes if ax.get_title() == 'random - fixed-random'][0]
  assert [t.get_text() for t in diff.texts] == ['F only']
  assert [t.get_text() for t in fig.axes[0].texts] == ['40\n(1/1)']  # fixed-random
  assert [t.get_text() for t in fig.axes[1].texts] == ['never\n(0/1)']  # random


def test_landscape_cli_on_a_synthetic_table(tmp_path, capsys):
  from analysis import __main__ as cli
  table = str(tmp_path / 'results.parquet')
  pq.write_table(results.table_from_rows(synthetic_rows()), table)
  paths = cli.main(['landscape', '--results', table, '--out', str(tmp_path / 'out'),
                    '--dpi', '40'])
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ['landscape_cells.csv', 'landscape_curves.png',
                   'landscape_final_validation_accuracy.png', 'landscape_gap.png',
                   'landscape_generalization_epoch.png']
  assert all(os.path.getsize(p) > 0 for p in paths)
  import csv
  with open(str(tmp_path / 'out' / 'landscape_cells.csv')) as f:
    cells = list(csv.DictReader(f))
  assert len(cells) == 3 * 2 * 4 - 1
  rows = synthetic_rows()
  for c in cells:
    rs = [r for r in rows if (r['p'], r['train_fraction'], r['strategy']) ==
          (int(c['p']), float(c['train_fraction']), c['strategy'])]
    assert int(c['generalised']) == sum(r['generalization_epoch'] is not None for r in rs)
  with pytest.raises(SystemExit) as e:
    cli.main(['landscape', '--results', table, '--out', str(tmp_path / 'o2'), '--row', 'nope'])
  assert e.value.code == 2
  assert "'nope' is not a column" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists(COMMITTED), reason='no committed landscape table')
def test_landscape_cli_on_the_committed_table(tmp_path):
  from analysis import __main__ as cli
  paths = cli.main(['landscape', '--results', COMMITTED, '--out', str(tmp_path), '--dpi', '30'])
  assert len(paths) == 5 and all(os.path.getsize(p) > 0 for p in paths)


def test_landscape_probe_config_is_one_batch_at_its_point():
  from configs import landscape_probe
  c = landscape_probe.get_config()
  assert not sweeper.is_sweep(c)
  assert (c.p, c.train_fraction, c.seed, c.strategy) == (59, 0.6, 0, 'random,fixed-random')
  assert c.epochs == landscape.point_fields(59, 0.6)['epochs']
  assert set(c.probes.names.split(',')) == {'counterfactual', 'fourier'}
