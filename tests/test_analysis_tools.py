"""Every ``python -m analysis`` tool on small synthetic runs: ours (JSONL with probe metrics,
final_params) next to the reference's (paper-era JSONL with hook points, CSV, a
``<strategy>_final.pt``, a summary-only run). Figures must be non-blank and hold the
expected series; errors must be one line with exit code 2."""

import base64
import html.parser
import json
import os

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pyarrow.csv as pa_csv
import pytest

import ptfiles
from analysis import __main__ as cli
from analysis import activations, dataset_dft, plots, readers, report, series, style, weights
from ordered_jax import checkpoint, models
from tests import tbevents
from tests.conftest import ROOT

CFG = models.ModelConfig(vocab=11, embed_dim=8, num_heads=4, layers=2, mlp_dim=16)
PARAMS = ('embedding.weight', 'transformer.layers.0.linear1.weight',
          'transformer.layers.1.linear1.weight')
EPOCHS = 12
PROBE_EPOCHS = (0, 3, 6, 9, 11)
PAPER_SUMMARY = {  # ExperimentOneData's fixed-random/summary.json (paper-era names)
    'experiment': 'mod_arithmetic', 'strategy': 'fixed-random',
    'timing': {'duration_seconds': 11556.23, 'steps_per_second': 66.94},
    'model': {'parameters': 7746805},
    'training': {'planned_epochs': 5000, 'actual_epochs': 659, 'early_stopped': True,
                 'total_gradient_steps': 773520, 'seed': 199},
    'init_eval': {'val_acc': 0.0119}, 'final_eval': {'val_acc': 99.6318,
                                                     'train_acc': 99.69933333333333}}


def _our_rows(k: int) -> list[dict]:
  """Run k (0 stride, 1 random): memorises at epoch 10 / 9; stride generalises at 11."""
  rows = []
  for e in range(EPOCHS):
    r = {'epoch': e, 'training_metrics/loss': 3.0 * np.exp(-e / 4) + 0.1 * k,
         'training_metrics/perplexity': 20.0, 'training_metrics/learning_rate': 1e-3,
         'training_metrics/training_accuracy': min(100.0, (10 + 2 * k) * e),
         'training_metrics/validation_accuracy': 99.7 if (k == 0 and e == 11) else 1.0 + e / 10}
    if e in PROBE_EPOCHS:
      r.update({'fourier/spectral_entropy': 1.0 - e / 20,
                'fourier/freq_powers': {'3': 0.05 * e, '5': 0.01 * e, '2': 0.001},
                'attention/attn_entropy': 0.9 - 0.01 * e - 0.1 * k,
                'attention/attn_entropy/0': 0.8, 'attention/attn_entropy/1': 0.7,
                'attention/sv_concentration': 0.2,
                'curvature/lambda_max': 2.0 + e, 'curvature/trace': 30.0,
                'curvature/edge_of_stability_ratio': (2.0 + e) * 1e-3 / 2,
                'curvature/top_eigenvalues': [2.0 + e, 1.0],
                'hessian/rayleigh_quotient': [0.5, float('nan')]})
      for i, p in enumerate(PARAMS):
        r[f'weight_tracking/weight_norm/{p}'] = 10.0 * (i + 1) + e + k
    rows.append(r)
  return rows


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """Two workdirs: ``ours`` (stride, random) and ``paper`` (stride, target, fixed-random)."""
  root = tmp_path_factory.mktemp('analysis')
  ours, paper = str(root / 'ours'), str(root / 'paper')
  shape = dict(p=11, embed_dim=8, num_heads=4, layers=2, mlp_dim=16, dropout=0.1)
  sds = {}
  for k, name in enumerate(('stride', 'random')):
    d = os.path.join(ours, name)
    _write(os.path.join(d, f'{name}.jsonl'),
           ''.join(json.dumps(r) + '\n' for r in _our_rows(k)))
    _write(os.path.join(d, 'experiment_config.json'), json.dumps({
        **shape, 'strategy': name, 'seed': 3, 'target_acc': 99.5, 'batch_size': 8,
        'train_size': 40, 'environment': {'jax_version': '0.10.2'}}))
    _write(os.path.join(d, 'summary.json'), json.dumps({
        'strategy': name, 'run': name, 'timing': {'duration_seconds': 2.5},
        'final_eval': {'validation_accuracy': 50.0, 'training_accuracy': 100.0},
        'grokking': {'generalization_threshold': 99.5}}))
  sds['ours/stride'] = ptfiles.random_state_dict(CFG, seed=5)
  checkpoint.save_params(os.path.join(ours, 'stride'), models.from_reference(
      sds['ours/stride'], CFG))
  # The reference's paper-era JSONL (hook points, lists per POST_STEP line) and final .pt.
  lines = []
  for e in range(8):
    lines.append({'epoch': e, 'hook_point': 'POST_EPOCH', 'training_metrics/loss': 2.0 / (e + 1),
                  'training_metrics/train_acc': min(100.0, 20.0 * e),
                  'training_metrics/val_acc': 99.6 if e == 7 else 2.0 * e,
                  'training_metrics/lr': 1e-3})
    lines.append({'epoch': e, 'hook_point': 'POST_STEP',
                  'hessian/rayleigh_quotient': [0.1 * e, 0.3 * e]})
  d = os.path.join(paper, 'stride')
  _write(os.path.join(d, 'stride.jsonl'), ''.join(json.dumps(r) + '\n' for r in lines))
  _write(os.path.join(d, 'experiment_config.json'), json.dumps({
      **shape, 'strategy': 'stride', 'seed': 199, 'target_acc': 99.5, 'stride': None,
      'environment': {'torch_version': '2.4.1+cu124'}}))
  sds['paper/stride'] = ptfiles.random_state_dict(CFG, seed=6)
  st: list = []
  ptfiles.write_pt(os.path.join(d, 'stride_final.pt'),
                   {'model_state_dict': ptfiles.state_dict_pt(sds['paper/stride'], st),
                    'environment': {'torch_version': '2.4.1'}}, st, name='stride_final')
  _write(os.path.join(paper, 'target', 'target.csv'),
         'epoch,hook_point,training_metrics/loss,training_metrics/train_acc,'
         'training_metrics/val_acc\n'
         + ''.join(f'{e},POST_EPOCH,{5.0 - e / 10},{e / 10},{e / 100}\n' for e in range(8)))
  _write(os.path.join(paper, 'fixed-random', 'summary.json'), json.dumps(PAPER_SUMMARY))
  return {'ours': ours, 'paper': paper, 'root': str(root), 'sds': sds}


def _cli(capsys, *argv):
  paths = cli.main(list(argv))
  out = capsys.readouterr().out.split()
  assert out == paths and paths
  for p in paths:
    assert os.path.exists(p), p
  return paths


def _fails(capsys, *argv) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main(list(argv))
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1, err
  return err


def _nonblank(path):
  if path.endswith('.svg'):
    text = open(path).read()
    assert '<svg' in text and text.count('<path') > 10
    return
  img = matplotlib.image.imread(path)
  assert img.shape[0] > 80 and img.shape[1] > 80
  assert img[..., :3].std() > 0.02  # not a blank canvas


def _runs(data, *which):
  return readers.load([data[w] for w in which] if len(which) > 1 else [data[which[0]]])


def _out(data):
  return ['--output-dir', os.path.join(data['root'], 'out'), '--dpi', '40']


# -- every tool through the CLI ------------------------------------------------------------

TOOL_ARGS = {
    'metric_plot': ['--metrics', 'val_acc', 'training_metrics/loss', 'attention/attn_entropy/*',
                    '--smooth', '0.5', '--log-scale'],
    'compare': ['--metrics', 'loss', 'train_acc', '--stat', 'max'],
    'convergence': ['--metrics', 'train_acc', 'loss', '--normalize'],
    'correlation': ['--x', 'training_metrics/loss', '--y', 'train_acc', '--trend-line'],
    'export_table': ['--metrics', 'loss', 'val_acc', '--table-format', 'markdown'],
    'layer_dynamics': ['--metric', 'weight_tracking/weight_norm', '--aggregate-layers',
                       '--sort', 'variance', '--log-norm'],
    'area_plot': ['--metric', 'fourier/freq_powers', '--top-n', '2', '--normalize'],
    'weight_compare': ['--svd-rank', '5'],
    'weight_heatmap': ['--svd-components', '3'],
    'activation_probe': ['--b', '4', '--position', '1'],
    'report': [],
    'tensorboard': [],
}


@pytest.mark.parametrize('tool', sorted(TOOL_ARGS))
def test_every_tool_writes_and_prints_its_files(data, capsys, tool):
  wd = ['--workdir', data['ours'], '--workdir', data['paper']]
  if tool in ('weight_compare', 'weight_heatmap', 'activation_probe'):
    wd += ['--strategies', 'stride']  # the runs with weights (ours and the reference's)
  paths = _cli(capsys, tool, *wd, *TOOL_ARGS[tool], *_out(data))
  for p in paths:
    assert os.path.dirname(p).endswith(tool)
    if p.endswith(('.png', '.svg')):
      _nonblank(p)
  kinds = {os.path.splitext(p)[1] for p in paths}
  want = {'compare': {'.png', '.csv'}, 'convergence': {'.png', '.csv'},
          'export_table': {'.md'}, 'report': {'.html'}, 'tensorboard': {''},
          'weight_compare': {'.png'}}.get(tool, {'.png'})
  assert kinds == want
  n = {'weight_compare': 3, 'weight_heatmap': 2, 'activation_probe': 2, 'tensorboard': 4,
       'compare': 2, 'convergence': 2}.get(tool, 1)
  assert len(paths) == n


def test_svg_and_dark_style(data, capsys):
  path, = _cli(capsys, 'metric_plot', '--workdir', data['ours'], '--metrics', 'loss',
               '--format', 'svg', '--style', 'dark', '--layout', 'grid', *_out(data))
  assert path.endswith('.svg')
  _nonblank(path)
  assert '#1e1e1e' in open(path).read()  # the dark background


def test_dataset_dft_cli_and_stats(data, capsys):
  png, csv = _cli(capsys, 'dataset_dft', '--p', '13', '--train-size', '80', '--batch-size',
                  '8', '--seed', '1', '--max-lag', '20', *_out(data))
  _nonblank(png)
  t = pa_csv.read_csv(csv).to_pylist()
  assert [(r['ordering'], r['component']) for r in t][:4] == [
      ('stride', 'a'), ('stride', 'b'), ('stride', 'c'), ('target', 'a')]
  get = {(r['ordering'], r['component']): r for r in t}
  # Stride sorts by a: long runs of equal a (strong lag-1 correlation, few a per batch);
  # target sorts by c likewise; the random orders do neither.
  assert get['stride', 'a']['acf_lag1'] > 0.8 and get['target', 'c']['acf_lag1'] > 0.8
  assert abs(get['random', 'a']['acf_lag1']) < 0.5
  assert get['stride', 'a']['batch_coverage'] < 0.5 < get['random', 'a']['batch_coverage']
  # The figure's workdir defaults: p and sizes from the first run's config.
  png2, _ = _cli(capsys, 'dataset_dft', '--workdir', data['ours'], '--orderings', 'stride',
                 'random', *_out(data))
  assert 'p11_n40_b8_seed3' in png2


def test_dataset_dft_refuses_a_run_of_another_task(data, capsys, tmp_path):
  """It regenerates (a + b) mod p's training set: for a run of another task it would draw
  the spectra of data the run never saw."""
  import shutil  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'w' / 'stride'
  shutil.copytree(os.path.join(data['ours'], 'stride'), run)
  cfg = json.loads((run / 'experiment_config.json').read_text())
  (run / 'experiment_config.json').write_text(json.dumps({**cfg, 'task': 'sub'}))
  err = _fails(capsys, 'dataset_dft', '--workdir', str(tmp_path / 'w'), '--output-dir',
               str(tmp_path / 'out'))
  assert "the run trains task 'sub'" in err


def test_weight_tools_refuse_a_run_of_another_model(data, capsys, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'w' / 'stride'
  shutil.copytree(os.path.join(data['ours'], 'stride'), run)
  cfg = json.loads((run / 'experiment_config.json').read_text())
  (run / 'experiment_config.json').write_text(json.dumps({**cfg, 'model': 'mlp'}))
  for tool in ('weight_compare', 'weight_heatmap'):
    err = _fails(capsys, tool, '--workdir', str(tmp_path / 'w'), '--output-dir',
                 str(tmp_path / 'out'))
    assert "run stride: model 'mlp'; the weight tools read the reference" in err, err


def test_activation_probe_marks_the_runs_own_labels(data, capsys, tmp_path):
  """The logits panel's dots are the labels of the run's task ((a - b) mod p for sub),
  and a b the task has no pairs with (div's 0) is one line."""
  import shutil  # pylint: disable=g-import-not-at-top
  from ordered_jax import tasks  # pylint: disable=g-import-not-at-top
  sd, cfg = weights.state_dict(readers.load([os.path.join(data['ours'], 'stride')])[0])
  p = cfg.vocab
  sub = tasks.parse_task('sub', p)
  fig = activations.activation_probe(sd, cfg.num_heads, b=4, labeller=sub.labeller,
                                     task='sub')
  [ax] = [a for a in fig.axes if a.get_title().startswith('logits')]
  x, y = ax.lines[0].get_data()
  np.testing.assert_array_equal(x, (np.arange(p) - 4) % p)
  np.testing.assert_array_equal(y, np.arange(p))
  assert 'task sub' in ax.get_xlabel()
  run = tmp_path / 'w' / 'stride'
  shutil.copytree(os.path.join(data['ours'], 'stride'), run)
  c = json.loads((run / 'experiment_config.json').read_text())
  (run / 'experiment_config.json').write_text(json.dumps({**c, 'task': 'div'}))
  err = _fails(capsys, 'activation_probe', '--workdir', str(tmp_path / 'w'), '--b', '0',
               '--output-dir', str(tmp_path / 'out'))
  assert f"--b must be in [1, {p}) for task 'div'; got 0" in err


def test_weight_tools_read_a_run_of_a_group_task(capsys, tmp_path):
  """A run of sym:3 (6 elements, not p) and one of add3 (three operands): the weight
  tools size the model from the run's task; activation_probe refuses add3 in one line."""
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  for task, extra in (('sym:3', dict(train_size=20, test_size=10)), ('add3', {})):
    experiment.run(micro_config(task=task, epochs=1, **extra), str(tmp_path / task),
                   quiet='silent')
  run = readers.load([str(tmp_path / 'sym:3')])[0]
  sd, cfg = weights.state_dict(run)
  assert (cfg.vocab, cfg.n_ops, sd['embedding.weight'].shape[0]) == (6, 2, 6)
  png, = _cli(capsys, 'activation_probe', '--workdir', str(tmp_path / 'sym:3'), '--b', '3',
              '--output-dir', str(tmp_path / 'out'))
  _nonblank(png)
  heat, = _cli(capsys, 'weight_heatmap', '--workdir', str(tmp_path / 'add3'),
               '--output-dir', str(tmp_path / 'out'))
  _nonblank(heat)
  err = _fails(capsys, 'activation_probe', '--workdir', str(tmp_path / 'add3'),
               '--output-dir', str(tmp_path / 'out'))
  assert "task 'add3' has 3 operands" in err


def test_dataset_dft_orders_any_registered_ordering_as_a_run_does():
  """Each ordering's epoch-0 order comes from its own prepare/order: the built-ins match
  the reference's static orders and our run's random permutation, a user's ordering is
  accepted, one that reads the model's losses is refused in one line."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from ordered_jax import orderings, tasks, train  # pylint: disable=g-import-not-at-top
  train_Nx3, _ = tasks.make_mod_add(13, 60, 0, 2, 'reference')
  sets = dataset_dft.ordered_sets(13, 60, 2, names=('stride', 'target', 'fixed-random',
                                                    'random', 'alternating'))
  for name in ('stride', 'target', 'fixed-random', 'alternating'):
    want = orderings.static_order(name, train_Nx3, stride=3)
    np.testing.assert_array_equal(sets[name], train_Nx3[want])
  key = jax.random.fold_in(jax.random.key(2), train.ORDER_STREAM)
  np.testing.assert_array_equal(
      sets['random'], train_Nx3[np.asarray(orderings.random_order(key, 0, 60))])

  @dataclasses.dataclass(frozen=True)
  class Reverse(orderings.Ordering):
    name = 'reverse-test'

    def prepare(self, train_NxC, config):
      return np.arange(len(train_NxC))[::-1].astype(np.int32)

    def order(self, prepared, key, epoch, run):
      return prepared

  @dataclasses.dataclass(frozen=True)
  class Rolled(orderings.Ordering):  # reads a config section of its own
    name = 'rolled-test'
    shift: int = 0

    @classmethod
    def from_config(cls, config):
      return cls(shift=int(config.rolled.shift))

    def prepare(self, train_NxC, config):
      return np.roll(np.arange(len(train_NxC)), self.shift).astype(np.int32)

    def order(self, prepared, key, epoch, run):
      return prepared

  orderings.base.register(Reverse)
  orderings.base.register(Rolled)
  try:
    got = dataset_dft.ordered_sets(13, 60, 2, names=('reverse-test',))
    np.testing.assert_array_equal(got['reverse-test'], train_Nx3[::-1])
    saved = {'rolled': {'shift': 5}, 'seeds': [2], 'environment': {'jax_version': 'x'}}
    got = dataset_dft.ordered_sets(13, 60, 2, names=('rolled-test',), saved=saved)
    np.testing.assert_array_equal(got['rolled-test'], train_Nx3[np.roll(np.arange(60), 5)])
    with pytest.raises(ValueError, match="ordering 'rolled-test' reads config.rolled, which"):
      dataset_dft.ordered_sets(13, 60, 2, names=('rolled-test',))
  finally:
    orderings.REGISTRY.pop('reverse-test')
    orderings.REGISTRY.pop('rolled-test')
  with pytest.raises(ValueError, match="ordering 'curriculum' orders by the losses"):
    dataset_dft.ordered_sets(13, 60, 2, names=('curriculum',))
  with pytest.raises(ValueError, match="unknown ordering 'nope'; one of stride"):
    dataset_dft.ordered_sets(13, 60, 2, names=('nope',))


def test_dataset_dft_functions():
  sets = dataset_dft.ordered_sets(13, 60, 2, names=('stride', 'random'))
  assert sorted(map(tuple, sets['stride'])) == sorted(map(tuple, sets['random']))
  a = sets['stride'][:, 0]
  assert np.all(np.diff(np.lexsort((a, a % 3))) == 1)  # (a mod 3, a) order, s = floor(sqrt 13)
  hist = dataset_dft.batch_histograms(a, 13, 8)
  assert hist.shape == (8, 13) and hist.sum(axis=1).tolist() == [8] * 7 + [4]
  assert np.array_equal(hist[0], np.bincount(a[:8], minlength=13))
  x = np.random.default_rng(0).normal(size=50)
  z = x - x.mean()
  direct = np.array([z[:50 - k] @ z[k:] for k in range(6)]) / (z @ z)
  np.testing.assert_allclose(dataset_dft.autocorrelation(x, 5), direct, atol=1e-12)
  spec = dataset_dft.batch_spectrum(np.eye(13)[[2, 2, 5]])  # three one-token batches
  assert spec.shape == (6,) and spec.sum() == pytest.approx(1.0)
  np.testing.assert_allclose(spec, np.full(6, 1 / 6))  # a delta has a flat spectrum


# -- the expected series in each figure ----------------------------------------------------

def test_metric_plot_lines_are_the_runs_series(data):
  runs = _runs(data, 'ours', 'paper')
  with style.use('paper'):
    fig = plots.metric_plot(runs, [readers.TEST_ACC, readers.LOSS])
    ax = fig.axes[0]
    lines = [l for l in ax.get_lines() if not l.get_label().startswith('_')]
    with_rows = [r for r in runs if r.rows]
    assert [l.get_label() for l in lines] == [r.name for r in with_rows]
    for line, r in zip(lines, with_rows):
      e, v = r.series(readers.TEST_ACC)
      assert np.array_equal(line.get_xdata(), e) and np.array_equal(line.get_ydata(), v)
    smooth = plots.metric_plot(runs[:1], [readers.LOSS], smooth=0.6, epoch_range=(2, 8))
    raw, smoothed = smooth.axes[0].get_lines()
    e, v = runs[0].series(readers.LOSS, (2, 8))
    assert e.tolist() == list(range(2, 9))
    np.testing.assert_allclose(smoothed.get_ydata(), series.ema(v, 0.6))
    by_metric = plots.metric_plot(runs[:2], [readers.TEST_ACC, readers.LOSS], group_by='metric')
    assert [a.get_title() for a in by_metric.axes] == ['ours/random', 'ours/stride']
    assert len(by_metric.axes[0].get_lines()) == 2
    grid = plots.metric_plot(runs[:2], [readers.TEST_ACC, readers.LOSS], layout='grid',
                             log_scale=True)
    assert len(grid.axes) == 4 and grid.axes[0].get_yscale() == 'log'


def test_compare_and_tables_hold_the_aggregates(data, capsys):
  runs = _runs(data, 'ours', 'paper')
  with_rows = [r for r in runs if r.rows]
  with style.use('paper'):
    fig = plots.compare(with_rows, [readers.LOSS], stat='min')
  heights = [b.get_height() for b in fig.axes[0].patches]
  assert heights == pytest.approx([series.aggregate(r.series(readers.LOSS)[1], 'min')
                                   for r in with_rows])
  for fmt, ext in (('latex', 'tex'), ('csv', 'csv')):
    path, = _cli(capsys, 'export_table', '--workdir', data['ours'], '--workdir', data['paper'],
                 '--metrics', 'loss', 'val_acc', '--stat', 'final', '--table-format', fmt,
                 '--precision', '6', '--bold-best', *_out(data))
    assert path.endswith(ext)
    finals = [r.series(readers.LOSS)[1][-1] for r in with_rows]
    if fmt == 'csv':
      t = pa_csv.read_csv(path)
      assert t.column('run').to_pylist() == [r.name for r in with_rows]
      assert t.column(readers.LOSS).to_pylist() == pytest.approx(finals)
    else:
      body = open(path).read().split('\\midrule\n')[1].split('\\bottomrule')[0]
      cells = [line.rstrip(' \\').split(' & ') for line in body.strip().splitlines()]
      got = [float(c[1].replace(r'\textbf{', '').rstrip('}')) for c in cells]
      assert got == pytest.approx(finals, abs=1e-6)
      best = int(np.argmin(finals))
      assert cells[best][1].startswith(r'\textbf{')  # lowest loss in bold


def test_convergence_epochs(data, capsys):
  runs = _runs(data, 'ours', 'paper')
  with_rows = [r for r in runs if r.rows]
  hits = plots.crossings(with_rows, [readers.TRAIN_ACC], {readers.TRAIN_ACC: 99.0},
                         {readers.TRAIN_ACC: 'above'})
  assert dict(zip([r.name for r in with_rows], hits[readers.TRAIN_ACC])) == {
      'ours/random': 9.0, 'ours/stride': 10.0, 'paper/stride': 5.0, 'paper/target': None}
  png, csv = _cli(capsys, 'convergence', '--workdir', data['ours'], '--metrics', 'train_acc',
                  '--threshold', '99', *_out(data))
  t = pa_csv.read_csv(csv)
  assert t.column('training_metrics/training_accuracy >= 99').to_pylist() == [9, 10]
  best, worst = 3.0 * np.exp(-11 / 4), 5.0  # ours/stride at epoch 11, paper/target at 0
  assert plots.default_threshold(with_rows, readers.LOSS, 'below') == pytest.approx(
      worst - 0.9 * (worst - best))  # 90 % of the way from the worst to the best value


def test_correlation_points(data):
  runs = _runs(data, 'ours')
  with style.use('paper'):
    fig = plots.correlation(runs, readers.LOSS, ['curvature/lambda_max'], sample=3)
  sizes = [len(c.get_offsets()) for c in fig.axes[0].collections]
  assert sizes == [3, 3]  # 5 probe epochs per run, sampled down to 3
  with style.use('paper'):
    fig = plots.correlation(runs, readers.LOSS, ['curvature/lambda_max'])
  pts = fig.axes[0].collections[1].get_offsets()
  e, v = runs[1].series('curvature/lambda_max')
  assert np.allclose(pts[:, 1], v) and np.allclose(pts[:, 0], runs[1].series(readers.LOSS)[1][
      e.astype(int)])


def test_layer_dynamics_matrix(data):
  run = _runs(data, 'ours')[1]  # stride (k = 0)
  names, epochs, mat = plots.layer_matrix(run, 'weight_tracking/weight_norm')
  assert names == sorted(PARAMS) and epochs.tolist() == list(PROBE_EPOCHS)
  assert mat[names.index('embedding.weight')].tolist() == [10.0 + e for e in PROBE_EPOCHS]
  names, _, mat = plots.layer_matrix(run, 'weight_tracking/weight_norm', aggregate_layers=True,
                                     relative=True)
  assert names == ['embedding.weight', 'transformer.layers.*.linear1.weight']
  np.testing.assert_allclose(mat[1], [(25.0 + e) / 25.0 for e in PROBE_EPOCHS])
  assert plots.layer_matrix(run, 'attention/attn_entropy')[0] == ['0', '1']


def test_area_plot_stacks(data):
  run = _runs(data, 'ours')[1]
  keys, epochs, mat, other = plots.dict_matrix(run, 'fourier/freq_powers', top_n=2,
                                               sort_by='index')
  assert keys == ['3', '5'] and epochs.tolist() == list(PROBE_EPOCHS)
  assert mat[0].tolist() == pytest.approx([0.05 * e for e in PROBE_EPOCHS])
  assert other.tolist() == pytest.approx([0.001] * 5)  # '2' is outside the top 2
  keys, *_ = plots.dict_matrix(run, 'fourier/freq_powers', top_n=0, sort_by='acquired')
  assert keys == ['2', '3', '5']  # '2' is the only key present (non-zero) at epoch 0
  with style.use('paper'):
    fig = plots.area_plot([run], 'fourier/freq_powers', top_n=2)
  assert len(fig.axes[0].collections) == 3  # two frequencies and "other"


def test_weights_from_both_frameworks(data):
  runs = {r.name: r for r in _runs(data, 'ours', 'paper')}
  for name in ('ours/stride', 'paper/stride'):
    sd, cfg = weights.state_dict(runs[name])
    assert cfg == models.ModelConfig(vocab=11, embed_dim=8, num_heads=4, layers=2, mlp_dim=16)
    assert all(np.array_equal(sd[k], data['sds'][name][k]) for k in data['sds'][name])
  with pytest.raises(readers.InputError, match='no final weights'):
    weights.state_dict(runs['paper/target'])
  sds = {n: data['sds'][n] for n in ('ours/stride', 'paper/stride')}
  names, norm_PxR = weights.norms(sds)
  assert names[0] == 'pos_embedding' and len(names) == 11
  assert norm_PxR[1, 1] == pytest.approx(np.linalg.norm(sds['paper/stride']['embedding.weight']))
  with style.use('paper'):
    figs = weights.weight_compare(sds, svd_rank=4, top_layers=3)
    svd_lines = figs['svd'].axes[0].get_lines()
    first_kept = names[min(np.argsort(-norm_PxR.max(1))[:3])]  # panels in state-dict order
    s = np.linalg.svd(sds['ours/stride'][first_kept], compute_uv=False)
    assert list(figs) == ['norms', 'svd', 'similarity'] and len(figs['svd'].axes) == 3
    heat = weights.weight_heatmap(sds['ours/stride'], svd_components=3)
  assert np.allclose(svd_lines[0].get_ydata(), (s / s[0])[:4], rtol=1e-5)
  assert sum(1 for ax in heat.axes if ax.images) == 11 + 2 * 2  # + SVD views of E, decoder
  proj, order = weights.svd_views(sds['ours/stride']['embedding.weight'], 3)
  assert proj.shape == (3, 11) and sorted(order.tolist()) == list(range(11))


def test_reference_checkpoints_are_found(tmp_path):
  run = tmp_path / 'stride'
  os.makedirs(run / 'checkpoints')
  _write(str(run / 'stride.jsonl'), '{"epoch": 0}\n')
  late = ptfiles.random_state_dict(CFG, seed=8)
  ptfiles.write_layout(str(run / 'checkpoints' / 'checkpoint_50.pt'),
                       ptfiles.random_state_dict(CFG, seed=7), 'flat')
  ptfiles.write_layout(str(run / 'checkpoints' / 'checkpoint_100.pt'), late, 'components')
  sd, _ = weights.state_dict(readers.load([str(run)])[0])  # the latest, either layout
  assert all(np.array_equal(sd[k], late[k]) for k in late)


def test_activations_match_the_model(data):
  sd = data['sds']['paper/stride']
  x = activations.sweep(11, 4)
  acts = activations.forward(sd, x, num_heads=4)
  want = np.asarray(models.Model(CFG).apply(models.from_reference(sd, CFG), jnp.asarray(x)))
  np.testing.assert_allclose(acts['logits'], want, rtol=1e-4, atol=1e-5)
  assert list(acts)[:3] == ['embedding', 'L0 attn-norm', 'L0 post-attn']
  assert acts['L1 ffn-up'].shape == (11, 2, 16) and (acts['L1 ffn-up'] >= 0).all()
  np.testing.assert_allclose(acts['pooled'], acts['L1 post-ffn'].mean(1))
  assert activations.sweep(11, 4, subsample=4)[:, 0].tolist() == [0, 3, 7, 10]
  with pytest.raises(readers.InputError, match=r'--b must be in \[0, 11\)'):
    activations.sweep(11, 11)


# -- report ---------------------------------------------------------------------------------

class _Tables(html.parser.HTMLParser):
  """Collects the report's tables (lists of rows of cell texts) and image sources."""

  def __init__(self):
    super().__init__()
    self.tables, self.images, self._cell = [], [], None

  def handle_starttag(self, tag, attrs):
    if tag == 'table':
      self.tables.append([])
    elif tag == 'tr':
      self.tables[-1].append([])
    elif tag in ('td', 'th'):
      self._cell = ''
    elif tag == 'img':
      self.images.append(dict(attrs)['src'])

  def handle_endtag(self, tag):
    if tag in ('td', 'th'):
      self.tables[-1][-1].append(self._cell)
      self._cell = None

  def handle_data(self, text):
    if self._cell is not None:
      self._cell += text


def _report(capsys, *workdirs, out):
  args = [a for w in workdirs for a in ('--workdir', w)]
  path, = _cli(capsys, 'report', *args, '--output-dir', out)
  parser = _Tables()
  parser.feed(open(path).read())
  head, *rows = parser.tables[0]
  return [dict(zip(head, r)) for r in rows], parser


def test_report_grokking_table_figures_and_probes(data, capsys):
  rows, parser = _report(capsys, data['ours'], data['paper'], out=data['root'] + '/rep')
  by = {r['run']: r for r in rows}
  assert list(by) == ['ours/random', 'ours/stride', 'paper/fixed-random', 'paper/stride',
                      'paper/target']
  assert (by['ours/stride']['memorised at'], by['ours/stride']['generalised at'],
          by['ours/stride']['gap']) == ('10', '11', '1')
  assert (by['ours/random']['memorised at'], by['ours/random']['generalised at']) == ('9', '—')
  assert (by['paper/stride']['memorised at'], by['paper/stride']['generalised at'],
          by['paper/stride']['gap']) == ('5', '7', '2')  # from paper-era names
  assert by['paper/fixed-random']['generalised at'] == '659'  # summary only: early stop
  assert by['paper/fixed-random']['epochs from'] == 'summary'
  assert by['paper/fixed-random']['final test acc (%)'] == '99.63'
  assert by['paper/target']['generalised at'] == '—'
  # curves, Fourier spectra, attention, curvature, Fourier over training (the fixture has
  # fourier/spectral_entropy): five embedded PNGs, no external files
  assert len(parser.images) == 5
  fourier = [t for t in parser.tables if t[0][:1] == ['run'] and len(t[0]) == 2
             and 'entropy' in t[0][1] and 'attention' not in t[0][1]][0]
  assert fourier[1][0] == 'ours/random'
  for src in parser.images:
    assert src.startswith('data:image/png;base64,')
    assert base64.b64decode(src.split(',', 1)[1])[:8] == b'\x89PNG\r\n\x1a\n'
  attention = [t for t in parser.tables if t[0][:2] == ['run', 'attention entropy']][0]
  assert attention[1][:2] == ['ours/random', '0.69']  # final value: 0.9 - 0.11 - 0.1
  curvature = [t for t in parser.tables if 'Hessian lambda_max' in t[0]][0]
  assert curvature[2][1] == '13'  # ours/stride lambda_max at epoch 11


def test_report_fourier_sources(data):
  runs = {r.name: r for r in _runs(data, 'ours', 'paper')}
  ks, power, where = report.fourier_spectrum(runs['ours/stride'])
  assert ks.tolist() == [2, 3, 5] and power.tolist() == pytest.approx([0.001, 0.55, 0.11])
  assert where == 'fourier probe, epoch 11'
  ks, power, where = report.fourier_spectrum(runs['paper/stride'])  # from the .pt weights
  e = data['sds']['paper/stride']['embedding.weight'].astype(np.float64)
  full = np.mean(np.abs(np.fft.fft(e, axis=0)) ** 2, axis=1)
  assert where == 'final weights' and ks.tolist() == [1, 2, 3, 4, 5]
  np.testing.assert_allclose(power, (full / full.sum())[1:6], rtol=1e-4)
  assert report.fourier_spectrum(runs['paper/target']) is None


def test_report_on_the_published_summaries(capsys, tmp_path):
  shared = os.path.join(ROOT, '..', 'shared', 'data', 'experiment-one')
  if not os.path.isdir(shared):
    pytest.skip('the shared ExperimentOneData sample is not present')
  rows, _ = _report(capsys, shared, out=str(tmp_path))
  got = {r['run']: (r['generalised at'], r['final test acc (%)']) for r in rows}
  assert got == {'fixed-random': ('659', '99.63'), 'random': ('—', '0.2972'),
                 'stride': ('487', '99.56'), 'target': ('—', '0.0106')}


# -- TensorBoard -----------------------------------------------------------------------------

def _events(logdir):
  """{tag: [(step, value)]} of scalars and {tag: count} of histograms in event files."""
  scalars, histos = {}, {}
  for ev in tbevents.events(logdir):
    for v in ev.summary.value:
      if v.HasField('histo'):
        histos[v.tag] = histos.get(v.tag, 0) + 1
      elif v.HasField('simple_value'):
        scalars.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return scalars, histos


def test_tensorboard_replay(data, capsys):
  paths = _cli(capsys, 'tensorboard', '--workdir', data['paper'], '--strategies', 'stride',
               *_out(data))
  scalars, histos = _events(paths[0])
  acc = sorted(scalars[readers.TEST_ACC])  # renamed from the paper-era val_acc
  assert acc == [(e, pytest.approx(99.6 if e == 7 else 2.0 * e)) for e in range(8)]
  assert sorted(scalars['hessian/rayleigh_quotient_mean'])[3] == (3, pytest.approx(0.6))
  assert histos['hessian/rayleigh_quotient'] == 8
  paths = _cli(capsys, 'tensorboard', '--jsonl', os.path.join(data['ours'], 'stride',
                                                              'stride.jsonl'), *_out(data))
  scalars, _ = _events(paths[0])
  assert sorted(scalars['fourier/freq_powers/3'])[1] == (3, pytest.approx(0.15))
  assert len(scalars[readers.LOSS]) == EPOCHS
  again = _cli(capsys, 'tensorboard', '--jsonl', os.path.join(data['ours'], 'stride',
                                                              'stride.jsonl'), *_out(data))
  assert len(_events(again[0])[0][readers.LOSS]) == EPOCHS  # replaced, not appended
  ours, paper = (os.path.join(data[k], 'stride', 'stride.jsonl') for k in ('ours', 'paper'))
  both = _cli(capsys, 'tensorboard', '--jsonl', ours, paper, *_out(data))
  assert [os.path.basename(p) for p in both] == ['stride', 'stride-2']
  assert len(_events(both[0])[0][readers.LOSS]) == EPOCHS  # not overwritten by the second
  assert sorted(_events(both[1])[0][readers.TEST_ACC])[7][1] == pytest.approx(99.6)
  assert 'given twice' in _fails(capsys, 'tensorboard', '--jsonl', ours, ours, *_out(data))


# -- errors -------------------------------------------------------------------------------

def test_errors_are_one_line(data, capsys, tmp_path):
  out = ['--output-dir', str(tmp_path)]
  assert 'needs --workdir' in _fails(capsys, 'metric_plot', '--metrics', 'loss', *out)
  assert 'no such directory' in _fails(capsys, 'report', '--workdir', str(tmp_path / 'x'), *out)
  assert "no run has metric 'training_metrics/nope'" in _fails(
      capsys, 'metric_plot', '--workdir', data['ours'], '--metrics', 'training_metrics/nope',
      *out)
  assert 'START is after END' in _fails(capsys, 'compare', '--workdir', data['ours'],
                                        '--metrics', 'loss', '--range', '5', '2', *out)
  assert 'START is after END' in _fails(capsys, 'curves', '--workdir', data['ours'],
                                        '--range', '5', '2', *out)
  for tool, flag, value in (('export_table', '--precision', '-2'),
                            ('correlation', '--sample', '-1'),
                            ('layer_dynamics', '--top', '-2'),
                            ('convergence', '--threshold', 'nan'),
                            ('report', '--memorization-threshold', 'inf')):
    extra = {'export_table': ['--metrics', 'loss'], 'correlation': ['--x', 'loss', '--y', 'x'],
             'layer_dynamics': ['--metric', 'x'], 'convergence': ['--metrics', 'loss'],
             'report': []}[tool]
    err = _fails(capsys, tool, '--workdir', data['ours'], *extra, flag, value, *out)
    assert f'argument {flag}: must be' in err, err
  assert 'must be in [0, 1)' in _fails(capsys, 'metric_plot', '--workdir', data['ours'],
                                       '--metrics', 'loss', '--smooth', '1.5', *out)
  assert 'invalid choice' in _fails(capsys, 'no_such_tool', '--workdir', data['ours'])
  assert 'no final weights' in _fails(capsys, 'weight_heatmap', '--workdir', data['paper'],
                                      '--strategies', 'target', *out)
  assert 'no run has dict values' in _fails(capsys, 'area_plot', '--workdir', data['paper'],
                                            '--metric', 'fourier/freq_powers', *out)
  bad = tmp_path / 'bad'
  _write(str(bad / 'stride' / 'stride.jsonl'), '{"epoch": 0}\n{oops\n{"epoch": 1}\n')
  assert 'stride.jsonl:2: not a JSON object' in _fails(capsys, 'report', '--workdir', str(bad),
                                                       *out)
  corrupt = tmp_path / 'corrupt' / 'stride'
  _write(str(corrupt / 'stride.jsonl'), '{"epoch": 0}\n')
  _write(str(corrupt / 'stride_final.pt'), 'not a zip')
  assert 'not a torch zip archive' in _fails(capsys, 'weight_compare', '--workdir',
                                             str(corrupt), *out)


def test_report_has_a_section_for_a_registered_probe(data, capsys, tmp_path):
  """A probe registered in its own module with a ``doc`` (docs/extending.md) gets its own
  report section, like the built-in families."""
  import shutil  # pylint: disable=g-import-not-at-top
  from probes import catalog, registry  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'w' / 'stride'
  shutil.copytree(os.path.join(data['ours'], 'stride'), run)
  path = run / 'stride.jsonl'
  rows = [json.loads(line) for line in open(path)]
  for i, r in enumerate(rows):
    r['my_norm/value'] = 10.0 + i
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  registry.register('my_norm', lambda ctx, options: None, doc=catalog.Probe(
      'my_norm', 'a norm of my own', cadence='every epoch', cost='cheap',
      cost_detail='one pass', definition='value = |theta|',
      metrics=(catalog.Metric('value', '|theta|', 'higher = larger'),)))
  try:
    report_path, = _cli(capsys, 'report', '--workdir', str(tmp_path / 'w'), '--output-dir',
                        str(tmp_path / 'rep'))
  finally:
    registry.unregister('my_norm')
  text = open(report_path).read()
  assert '<h2>my_norm: a norm of my own</h2>' in text
  parser = _Tables()
  parser.feed(text)
  [table] = [t for t in parser.tables if t[0] == ['run', 'value']]
  assert table[1] == ['stride', f'{10.0 + len(rows) - 1:.4g}']
