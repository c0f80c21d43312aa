"""python -m analysis <tool> --workdir DIR [options]: figures, tables and reports from runs.

Tools (``python -m analysis --help`` lists them all): curves, metric_plot, compare,
convergence, correlation, export_table, layer_dynamics, area_plot, weight_compare,
weight_heatmap, activation_probe, dataset_dft, report, tensorboard, wandb_replay,
trajectory;
``sweep_map --table DIR`` and ``scaling --table DIR`` draw a sweep's results table;
``dln_sgd_gd --sweep DIR`` a teacher sweep's test-loss curves by batch size;
``merge A B ... -o OUT`` combines sweeps'
results.parquet tables.
``--workdir`` (repeatable) is a folder of runs, ours or the reference's
(ExperimentOneData layout), or one run folder. Every tool writes its files under
``--output-dir`` (default ``<first workdir>/analysis``) in ``<tool>/`` and prints each
path; missing or malformed input is one line on stderr and exit code 2. See
docs/analysis.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import readers, series, style, tables  # noqa: E402
from analysis.readers import InputError  # noqa: E402


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (exit code 2)."""

  def error(self, message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def _unit_interval(text: str) -> float:
  v = float(text)
  if not 0.0 <= v < 1.0:
    raise argparse.ArgumentTypeError(f'must be in [0, 1); got {text}')
  return v


def _positive(text: str) -> int:
  v = int(text)
  if v < 1:
    raise argparse.ArgumentTypeError(f'must be >= 1; got {text}')
  return v


def _count(text: str) -> int:
  """An integer >= 0 (0: the option's 'all' or 'none')."""
  v = int(text)
  if v < 0:
    raise argparse.ArgumentTypeError(f'must be >= 0; got {text}')
  return v


def _finite(text: str) -> float:
  v = float(text)
  if v != v or v in (float('inf'), float('-inf')):
    raise argparse.ArgumentTypeError(f'must be a finite number; got {text}')
  return v


def _common() -> argparse.ArgumentParser:
  """The reference's common options."""
  p = _Parser(add_help=False)
  p.add_argument('--workdir', action='append', default=[],
                 help='folder of runs (ours or the reference\'s) or one run folder; repeatable')
  p.add_argument('--output-dir', default='',
                 help='where files go (default <first workdir>/analysis); each tool writes '
                      'into <output-dir>/<tool>/')
  p.add_argument('--strategies', nargs='+', default=None,
                 help='only these runs (strategy names or run labels)')
  p.add_argument('--range', nargs=2, type=int, metavar=('START', 'END'), default=None,
                 help='epochs START..END (inclusive)')
  p.add_argument('--smooth', type=_unit_interval, default=0.0,
                 help='EMA weight in [0, 1) for curves (NaN-aware; 0 = none)')
  p.add_argument('--format', choices=style.FORMATS, default='png')
  p.add_argument('--dpi', type=_positive, default=300)
  p.add_argument('--style', choices=tuple(style.STYLES), default='paper')
  p.add_argument('--title', '--experiment-title', dest='title', default='',
                 help='figure title')
  p.add_argument('--layout', choices=('overlay', 'grid'), default='overlay')
  p.add_argument('--group-by', choices=('strategy', 'metric'), default='strategy')
  return p


def build_parser() -> argparse.ArgumentParser:
  ap = _Parser(prog='python -m analysis', description=__doc__.splitlines()[0])
  sub = ap.add_subparsers(dest='tool', required=True, metavar='TOOL')
  common = _common()

  def tool(name, help_text):
    return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

  p = tool('curves', 'train/test accuracy and training loss of every run, one figure')
  p.add_argument('--out', default='', help='the figure (default <output-dir>/curves/'
                 'curves.<format>)')

  p = tool('metric_plot', 'metric series over epochs, per run')
  p.add_argument('--metrics', nargs='+', required=True,
                 help='metric keys, paper-era names or globs (e.g. "attention/attn_entropy/*")')
  p.add_argument('--log-scale', action='store_true')
  p.add_argument('--share-y', action='store_true')

  for name, help_text in (('compare', 'bar charts and a CSV table of an aggregate per run'),
                          ('export_table', 'a LaTeX, Markdown or CSV table of an aggregate '
                                           'per run')):
    p = tool(name, help_text)
    p.add_argument('--metrics', nargs='+', required=True)
    p.add_argument('--stat', choices=series.STATS, default='final')
    if name == 'export_table':
      p.add_argument('--table-format', choices=tables.FORMATS, default='latex')
      p.add_argument('--precision', type=_count, default=4)
      p.add_argument('--bold-best', action='store_true',
                     help='bold the best value per column (lowest for loss/error/perplexity)')

  p = tool('convergence', 'first epoch reaching a threshold: table, bars and curves')
  p.add_argument('--metrics', nargs='+', required=True)
  p.add_argument('--threshold', type=_finite, default=None,
                 help='default: 90%% of the way from the worst to the best value of any run')
  p.add_argument('--direction', choices=('auto', 'above', 'below'), default='auto',
                 help='auto: below for names with loss/error/perplexity, else above')
  p.add_argument('--normalize', action='store_true', help='also curves scaled to [0, 1]')

  p = tool('correlation', 'scatter of one metric against others, coloured by run')
  p.add_argument('--x', required=True)
  p.add_argument('--y', nargs='+', required=True)
  p.add_argument('--trend-line', action='store_true')
  p.add_argument('--sample', type=_count, default=0, help='at most N points per run')

  p = tool('layer_dynamics', 'heatmap parameter x epoch of a per-parameter metric')
  p.add_argument('--metric', required=True,
                 help='prefix of <prefix>/<param> keys, e.g. weight_tracking/weight_norm')
  p.add_argument('--aggregate-layers', action='store_true')
  p.add_argument('--log-norm', action='store_true')
  p.add_argument('--sort', choices=('name', 'variance'), default='name')
  p.add_argument('--top', type=_count, default=0)
  p.add_argument('--relative', action='store_true',
                 help='divide each row by its first value (shows changes over time)')

  p = tool('area_plot', 'stacked areas of a dict metric (e.g. fourier/freq_powers)')
  p.add_argument('--metric', required=True)
  p.add_argument('--top-n', type=_count, default=10, help='0 = all')
  p.add_argument('--sort-by', choices=('index', 'power', 'acquired'), default='power')
  p.add_argument('--normalize', action='store_true')
  p.add_argument('--share-y', action='store_true')

  p = tool('weight_compare', 'final weights across runs: norms, SVD spectra, similarity')
  p.add_argument('--analyses', nargs='+', choices=('norms', 'svd', 'similarity'),
                 default=['norms', 'svd', 'similarity'])
  p.add_argument('--top-layers', type=_count, default=0)
  p.add_argument('--svd-rank', type=_positive, default=50)

  p = tool('weight_heatmap', 'heatmaps of every 2-D weight of each run')
  p.add_argument('--svd-components', type=_positive, default=8)

  p = tool('activation_probe', 'activations over a in [0, p) at fixed b, per run')
  p.add_argument('--b', type=int, default=None, help='default: drawn with --seed')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--position', choices=('0', '1', 'mean'), default='mean')
  p.add_argument('--skip-logits', action='store_true')
  p.add_argument('--subsample', type=_count, default=0, help='N evenly spaced values of a')

  p = tool('dataset_dft', 'spectra of the orderings of the training set')
  p.add_argument('--p', type=int, default=None, help='default: the first run\'s, else 9973')
  p.add_argument('--train-size', type=int, default=None)
  p.add_argument('--batch-size', type=int, default=None)
  p.add_argument('--seed', type=int, default=None)
  p.add_argument('--stride', type=int, default=None, help='0 = floor(sqrt p)')
  p.add_argument('--generator', choices=('reference', 'fast'), default=None)
  p.add_argument('--orderings', nargs='+', default=['stride', 'target', 'fixed-random',
                                                     'random'],
                 help='any registered ordering (python main.py --list) but those that '
                 'read the losses of a model in training')
  p.add_argument('--max-lag', type=_positive, default=500)

  p = tool('trajectory', 'PCA of every run\'s parameter trajectory (config.trajectory.every): '
           'the runs of a batch in one plane, start and end marked')
  p.add_argument('--out', default='', help='the figure (default <output-dir>/trajectory/'
                 'trajectory.<format>)')
  p.add_argument('--basis', choices=('joint', 'run'), default='joint',
                 help='joint: one PCA of all runs\' points, one plot; run: a PCA and a panel '
                      'per run')

  p = tool('report', 'one self-contained HTML report')
  p.add_argument('--memorization-threshold', type=_finite, default=99.0)

  p = tool('tensorboard', 'replay metrics JSONL into TensorBoard event files')
  p.add_argument('--jsonl', nargs='+', default=[], help='JSONL files (instead of runs)')
  p.add_argument('--config', default='', help='experiment_config.json for a --jsonl file')

  p = tool('wandb_replay', 'upload runs\' metric rows, config and environment to Weights & '
           'Biases (pip install wandb)')
  p.add_argument('--project', required=True, help='the W&B project')
  p.add_argument('--entity', default='', help='W&B team or user (default: yours)')
  p.add_argument('--mode', choices=('online', 'offline'), default='online',
                 help='offline: write wandb/ folders for `wandb sync`, no network')

  def figure(name, source, source_help, help_text, extra=''):
    """A tool drawing one figure from a sweep: --<source>, --out, --title."""
    q = sub.add_parser(name, help=help_text, description=f'python -m analysis {name} '
                       f'--{source} DIR {extra}[--out FILE]')
    q.add_argument(f'--{source}', required=True, help=source_help)
    q.add_argument('--out', default='', help=f'the figure (default <{source} dir>/analysis/'
                   f'{name}/{name}.png)')
    q.add_argument('--title', default='')
    return q

  table_help = 'a sweep folder or its results.parquet'
  p = figure('sweep_map', 'table', table_help, 'where each ordering groks: a sweep\'s results '
             'table as a strategy x key grid and every run\'s test curve', '[--column KEY] ')
  p.add_argument('--column', default='weight_decay', help='the swept key on the x axis')
  figure('scaling', 'table', table_help, 'Tian\'s scaling law: final test accuracy against the '
         'critical multiplier, a line per modulus (configs/tian_scaling.py)')
  figure('dln_sgd_gd', 'sweep', 'the sweep folder (its runs/ are read)', 'test loss against '
         'optimiser steps per batch size, from a teacher sweep (configs/dln_teacher.py)')

  p = sub.add_parser('merge', help='combine sweeps\' results tables into one',
                     description='python -m analysis merge A B ... -o OUT [--keep last|first]: '
                                 'the results.parquet of several sweeps (dirs or files) as one')
  p.add_argument('inputs', nargs='+', help='sweep dirs or .parquet files')
  p.add_argument('-o', '--output', required=True, help='a dir (gets results.parquet) or a '
                                                       '.parquet path')
  p.add_argument('--keep', choices=('last', 'first'), default='last',
                 help='which input\'s row a run found in several inputs keeps')

  p = sub.add_parser('landscape', help='maps of a sweep\'s results table (p x fraction, a '
                     'panel per ordering, random minus fixed-random)',
                     description='python -m analysis landscape --results T --out DIR: one '
                                 'figure per metric laid out --row x --col, a panel per '
                                 'ordering plus random minus fixed-random (docs/landscape.md)')
  p.add_argument('--results', required=True, help='a sweep dir or its results.parquet')
  p.add_argument('--out', required=True, help='folder for the figures and landscape_cells.csv')
  p.add_argument('--row', default='p', help='the table column along the rows')
  p.add_argument('--col', default='train_fraction', help='the table column along the columns')
  p.add_argument('--dpi', type=_positive, default=130)
  return ap


# -- helpers -----------------------------------------------------------------------------

def _slug(parts) -> str:
  text = '+'.join(re.sub(r'[^A-Za-z0-9._=-]+', '-', p).strip('-') for p in parts) or 'all'
  if len(text) > 80:
    text = text[:60] + '-' + hashlib.sha1(text.encode()).hexdigest()[:8]
  return text


def _tool_dir(args) -> str:
  base = args.output_dir or (os.path.join(args.workdir[0], 'analysis') if args.workdir
                             else 'analysis_output')
  folder = os.path.join(base, args.tool)
  os.makedirs(folder, exist_ok=True)
  return folder


def _out(args, name: str, ext: str = '') -> str:
  """``<output-dir>/<tool>/<name>.<ext>`` (ext: the figure format unless given)."""
  return os.path.join(_tool_dir(args), f'{name}.{ext or args.format}')


def _runs(args):
  return readers.load(args.workdir, args.strategies)


def _with_rows(runs):
  got = [r for r in runs if r.rows]
  if not got:
    raise InputError('no run has metric rows (<run>.jsonl or *.csv)')
  return got


def _save(args, fig, name) -> list[str]:
  return [style.save(fig, _out(args, name), dpi=args.dpi)]


def _range(args):
  if args.range and args.range[0] > args.range[1]:
    raise InputError(f'--range {args.range[0]} {args.range[1]}: START is after END')
  return tuple(args.range) if args.range else None


# -- tools -------------------------------------------------------------------------------

def _metric_plot(args):
  from analysis import plots  # pylint: disable=g-import-not-at-top
  runs = _with_rows(_runs(args))
  metrics = readers.expand_metrics(runs, args.metrics)
  fig = plots.metric_plot(runs, metrics, layout=args.layout, group_by=args.group_by,
                          log_scale=args.log_scale, share_y=args.share_y, smooth=args.smooth,
                          epoch_range=_range(args), title=args.title)
  return _save(args, fig, f'metric_plot_{_slug(metrics)}')


def _aggregate_table(args, runs, metrics):
  values = {m: [series.aggregate(r.series(m, _range(args))[1], args.stat) for r in runs]
            for m in metrics}
  return tables.make('run', [r.name for r in runs], values)


def _compare(args):
  from analysis import plots  # pylint: disable=g-import-not-at-top
  runs = _with_rows(_runs(args))
  metrics = readers.expand_metrics(runs, args.metrics)
  fig = plots.compare(runs, metrics, stat=args.stat, epoch_range=_range(args),
                      title=args.title)
  name = f'compare_{args.stat}_{_slug(metrics)}'
  table = _aggregate_table(args, runs, metrics)
  return _save(args, fig, name) + [tables.write(table, _out(args, name, 'csv'), 'csv')]


def _export_table(args):
  runs = _with_rows(_runs(args))
  metrics = readers.expand_metrics(runs, args.metrics)
  table = _aggregate_table(args, runs, metrics)
  path = _out(args, f'table_{args.stat}_{_slug(metrics)}',
              tables.EXTENSIONS[args.table_format])
  return [tables.write(table, path, args.table_format, precision=args.precision,
                       bold_best=args.bold_best, caption=args.title or f'{args.stat} values')]


def _convergence(args):
  from analysis import plots  # pylint: disable=g-import-not-at-top
  runs = _with_rows(_runs(args))
  metrics = readers.expand_metrics(runs, args.metrics)
  directions = {m: args.direction if args.direction != 'auto' else
                ('below' if series.lower_is_better(m) else 'above') for m in metrics}
  thresholds = {m: args.threshold if args.threshold is not None else
                plots.default_threshold(runs, m, directions[m]) for m in metrics}
  fig = plots.convergence(runs, metrics, thresholds, directions, normalize=args.normalize,
                          smooth=args.smooth, epoch_range=_range(args), title=args.title)
  name = f'convergence_{_slug(metrics)}'
  hits = plots.crossings(runs, metrics, thresholds, directions, _range(args))
  table = tables.make('run', [r.name for r in runs],
                      {f'{m} {"<=" if directions[m] == "below" else ">="} '
                       f'{thresholds[m]:.6g}': hits[m] for m in metrics})
  return _save(args, fig, name) + [tables.write(table, _out(args, name, 'csv'), 'csv')]


def _correlation(args):
  from analysis import plots  # pylint: disable=g-import-not-at-top
  runs = _with_rows(_runs(args))
  x = readers.expand_metrics(runs, [args.x])[0]
  ys = readers.expand_metrics(runs, args.y)
  fig = plots.correlation(runs, x, ys, trend_line=args.trend_line, sample=args.sample,
                          epoch_range=_range(args), title=args.title)
  return _save(args, fig, f'correlation_{_slug([x])}_vs_{_slug(ys)}')


def _layer_dynamics(args):
  from analysis import plots  # pylint: disable=g-import-not-at-top
  runs = _with_rows(_runs(args))
  fig = plots.layer_dynamics(runs, args.metric.rstrip('/'),
                             aggregate_layers=args.aggregate_layers, log_norm=args.log_norm,
                             sort=args.sort, top=args.top, relative=args.relative,
                             epoch_range=_range(args),
                             title=args.title)
  return _save(args, fig, f'layer_dynamics_{_slug([args.metric])}')


def _area_plot(args):
  from analysis import plots  # pylint: disable=g-import-not-at-top
  runs = _with_rows(_runs(args))
  fig = plots.area_plot(runs, readers.canonical(args.metric), top_n=args.top_n,
                        sort_by=args.sort_by, normalize=args.normalize, share_y=args.share_y,
                        epoch_range=_range(args), title=args.title)
  return _save(args, fig, f'area_plot_{_slug([args.metric])}')


def _state_dicts(args):
  from analysis import weights  # pylint: disable=g-import-not-at-top
  return {r.name: weights.state_dict(r) for r in _runs(args)}


def _weight_compare(args):
  from analysis import weights  # pylint: disable=g-import-not-at-top
  sds = {k: sd for k, (sd, _) in _state_dicts(args).items()}
  if args.analyses == ['similarity'] and len(sds) < 2:
    raise InputError('weight_compare --analyses similarity needs two runs or more')
  figs = weights.weight_compare(sds, analyses=args.analyses, top_layers=args.top_layers,
                                svd_rank=args.svd_rank)
  return [p for view, fig in figs.items() for p in _save(args, fig, f'weight_compare_{view}')]


def _weight_heatmap(args):
  from analysis import weights  # pylint: disable=g-import-not-at-top
  paths = []
  for name, (sd, _) in _state_dicts(args).items():
    fig = weights.weight_heatmap(sd, svd_components=args.svd_components,
                                 title=args.title or f'{name}: final weights')
    paths += _save(args, fig, f'weight_heatmap_{_slug([name])}')
  return paths


def _activation_probe(args):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from analysis import activations, weights  # pylint: disable=g-import-not-at-top
  paths = []
  if args.subsample < 0:
    raise InputError(f'--subsample must be >= 0 (0 = every a); got {args.subsample}')
  for run in _runs(args):
    name, task, spec = run.name, weights.run_task(run), str(run.config.get('task') or 'add')
    if task.n_ops != 2:
      raise InputError(f'run {name}: task {spec!r} has {task.n_ops} operands; '
                       'activation_probe sweeps pairs (a, b)')
    lo, hi = task.offsets[1], task.offsets[1] + task.radices[1]
    b = args.b if args.b is not None else int(np.random.default_rng(args.seed).integers(
        lo, hi))
    if not lo <= b < hi:
      raise InputError(f'--b must be in [{lo}, {hi}) for task {spec!r}; got {b}')
    sd, cfg = weights.state_dict(run)
    if cfg.vocab != task.order:
      raise InputError(f'run {name}: its weights have {cfg.vocab} classes, its task {spec!r} '
                       f'{task.order}')
    fig = activations.activation_probe(sd, cfg.num_heads, b=b, position=args.position,
                                       skip_logits=args.skip_logits,
                                       subsample=args.subsample, task=spec,
                                       labeller=task.labeller,
                                       title=args.title or f'{name}: activations for (a, '
                                       f'b = {b}), position {args.position}')
    paths += _save(args, fig, f'activation_probe_{_slug([name])}_b{b}')
  return paths


def _dataset_dft(args):
  from analysis import dataset_dft  # pylint: disable=g-import-not-at-top
  cfg = _runs(args)[0].config if args.workdir else {}
  pick = lambda v, key, default: v if v is not None else cfg.get(key, default)  # noqa: E731
  p = int(pick(args.p, 'p', 9973))
  n = int(pick(args.train_size, 'train_size', 300_000))
  batch = int(pick(args.batch_size, 'batch_size', 256))
  seed = int(pick(args.seed, 'seed', 199))
  stride = int(pick(args.stride, 'stride', 0) or 0)
  generator = pick(args.generator, 'data_generator', 'reference')
  task = str(cfg.get('task', 'add') or 'add')
  if task != 'add':  # its pairs and labels are (a + b) mod p's: another task's would differ
    raise InputError(f'dataset_dft --workdir: the run trains task {task!r}; the tool '
                     'regenerates the training set of (a + b) mod p only')
  for flag, ok, allowed in (
      ('--p', 3 <= p < dataset_dft.MAX_P, f'3 <= p < {dataset_dft.MAX_P} (as a run\'s config.p)'),
      ('--train-size', 2 <= n <= p * p, '2 <= train_size <= p*p'),
      ('--batch-size', batch >= 1, 'batch_size >= 1'),
      ('--stride', stride >= 0, 'stride >= 0 (0 = floor(sqrt p))'),
      ('--seed', 0 <= seed < 2**32, '0 <= seed < 2^32')):
    if not ok:
      raise InputError(f'dataset_dft {flag}: need {allowed}; got p={p}, train_size={n}, '
                       f'batch_size={batch}, stride={stride}, seed={seed}')
  from ordered_jax import budget  # pylint: disable=g-import-not-at-top
  need = dataset_dft.memory_bytes(p, n, batch, len(args.orderings), generator)
  have = budget.host_available()
  if sum(need.values()) > have:  # p is bounded: the size comes from the rows and batches
    raise InputError(f'dataset_dft --train-size: p={p}, train_size={n}, batch_size={batch} '
                     f'(histograms of {-(-n // batch)} batches over p values) needs about '
                     f'{sum(need.values()) / 2**30:.1f} GiB of memory, the host has '
                     f'{have / 2**30:.1f} GiB available')
  try:
    sets = dataset_dft.ordered_sets(p, n, seed, stride=stride, generator=generator,
                                    names=args.orderings, batch_size=batch, saved=cfg)
  except ValueError as e:
    raise InputError(f'dataset_dft --orderings: {e}') from None
  name = f'dataset_dft_p{p}_n{n}_b{batch}_seed{seed}'
  fig = dataset_dft.figure(sets, p, batch, max_lag=args.max_lag, title=args.title)
  return _save(args, fig, name) + [tables.write(dataset_dft.stats(sets, p, batch, stride),
                                                _out(args, name, 'csv'), 'csv')]


def _report(args):
  from analysis import report  # pylint: disable=g-import-not-at-top
  runs = _runs(args)
  text = report.render(runs, title=args.title or 'Ordered-learning report',
                       sources=args.workdir, memorization=args.memorization_threshold)
  path = _out(args, 'report', 'html')
  from analysis import atomic  # pylint: disable=g-import-not-at-top
  with atomic.replacing(path) as f:  # a full disk leaves no partial page
    f.write(text)
  return [path]


def _tensorboard(args):
  from analysis import export  # pylint: disable=g-import-not-at-top
  paths = []
  if args.jsonl:
    if args.config and not os.path.isfile(args.config):
      raise InputError(f'--config {args.config}: no such file')
    config = readers.read_json(args.config) if args.config else None
    seen: dict[str, int] = {}
    for f in args.jsonl:
      if not os.path.isfile(f):
        raise InputError(f'--jsonl {f}: no such file')
      if sum(os.path.realpath(g) == os.path.realpath(f) for g in args.jsonl) > 1:
        raise InputError(f'--jsonl {f}: given twice')
      name = os.path.splitext(os.path.basename(f))[0]
      seen[name] = seen.get(name, 0) + 1  # files of one name: <name>, <name>-2, ...
      name = name if seen[name] == 1 else f'{name}-{seen[name]}'
      paths.append(export.replay(readers.read_raw(f), os.path.join(_tool_dir(args), name),
                                 config=config))
    return paths
  for r in _runs(args):
    f = readers.metrics_file(r.path)
    if f is None:
      continue
    paths.append(export.replay(readers.read_raw(f),
                               os.path.join(_tool_dir(args), _slug([r.name])),
                               config=r.config or None))
  if not paths:
    raise InputError('no run has a metrics file to replay')
  return paths


def _curves(args):
  from analysis import curves  # pylint: disable=g-import-not-at-top
  runs = _with_rows(_runs(args))
  rows = {r.name: r.rows for r in runs}
  return [curves.plot(rows, args.out or _out(args, 'curves'), args.title,
                      epoch_range=_range(args), smooth=args.smooth, dpi=args.dpi)]


def _trajectory(args):
  from analysis import trajectory  # pylint: disable=g-import-not-at-top
  runs = trajectory.read(_runs(args))
  span = _range(args)
  if span:  # records of epochs START..END only
    runs = {n: (e[(e >= span[0]) & (e <= span[1])], p[(e >= span[0]) & (e <= span[1])])
            for n, (e, p) in runs.items()}
    runs = {n: v for n, v in runs.items() if len(v[0])}
    if not runs:
      raise InputError(f'--range {span[0]} {span[1]}: no trajectory record in it')
  return [trajectory.plot(runs, args.out or _out(args, 'trajectory'), basis=args.basis,
                          title=args.title, dpi=args.dpi)]


def _table_figure(args, name: str, draw) -> list[str]:
  """A figure drawn from a sweep's results table (``--table``, ``--out``)."""
  from ordered_jax import results  # pylint: disable=g-import-not-at-top
  table = args.table
  if not os.path.exists(table):
    _fail(f'--table {table}: no such file or folder')
  folder = table if os.path.isdir(table) else os.path.dirname(table) or '.'
  out = args.out or os.path.join(folder, 'analysis', name, f'{name}.png')
  try:
    path = draw(results.load(table).to_pylist(), out)
  except (ValueError, OSError) as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  print(path)
  return [path]


def _sweep_map(args) -> list[str]:
  """``sweep_map``: ordered_jax.results' table drawn by analysis.sweep_map."""
  from analysis import sweep_map  # pylint: disable=g-import-not-at-top
  return _table_figure(args, 'sweep_map',
                       lambda rows, out: sweep_map.plot(rows, out, args.column, args.title))


def _scaling(args) -> list[str]:
  """``scaling``: Tian's scaling law from a results table (analysis.scaling)."""
  from analysis import scaling  # pylint: disable=g-import-not-at-top
  return _table_figure(args, 'scaling', lambda rows, out: scaling.plot(rows, out, args.title))


def _dln_sgd_gd(args) -> list[str]:
  """``dln_sgd_gd``: a teacher sweep's test-loss curves by batch size (analysis.dln)."""
  from analysis import dln  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(args.sweep):
    _fail(f'--sweep {args.sweep}: no such folder')
  out = args.out or os.path.join(args.sweep, 'analysis', 'dln_sgd_gd', 'dln_sgd_gd.png')
  try:
    path = dln.plot(args.sweep, out, args.title)
  except (ValueError, OSError, KeyError) as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  print(path)
  return [path]


def _wandb_replay(args):
  from ordered_jax import wandb_sink  # pylint: disable=g-import-not-at-top
  if not wandb_sink.available():
    raise InputError(f'wandb_replay {wandb_sink.MISSING}')
  paths = []
  for r in _with_rows(_runs(args)):
    paths.append(wandb_sink.replay(r.rows, _tool_dir(args), r.name,
                                   {**(r.config or {}), 'run': r.name},
                                   project=args.project, entity=args.entity, mode=args.mode))
  return paths


TOOLS = {
    'curves': _curves, 'metric_plot': _metric_plot, 'compare': _compare, 'convergence': _convergence,
    'correlation': _correlation, 'export_table': _export_table,
    'layer_dynamics': _layer_dynamics, 'area_plot': _area_plot,
    'weight_compare': _weight_compare, 'weight_heatmap': _weight_heatmap,
    'activation_probe': _activation_probe, 'dataset_dft': _dataset_dft, 'report': _report,
    'tensorboard': _tensorboard, 'wandb_replay': _wandb_replay, 'trajectory': _trajectory,
}
NEEDS_WORKDIR = set(TOOLS) - {'dataset_dft', 'tensorboard'}


def main(argv=None) -> list[str]:
  """Run one tool; prints and returns the written paths. Input problems exit with code 2
  and one line on stderr."""
  args = build_parser().parse_args(argv)
  if args.tool == 'merge':
    return _merge(args)
  if args.tool == 'landscape':
    return _landscape(args)
  if args.tool == 'sweep_map':
    return _sweep_map(args)
  if args.tool == 'scaling':
    return _scaling(args)
  if args.tool == 'dln_sgd_gd':
    return _dln_sgd_gd(args)
  try:
    if args.tool in NEEDS_WORKDIR and not args.workdir:
      raise InputError(f'{args.tool} needs --workdir')
    if args.tool == 'tensorboard' and not (args.workdir or args.jsonl):
      raise InputError('tensorboard needs --workdir or --jsonl')
    with style.use(args.style):
      paths = TOOLS[args.tool](args)
  except InputError as e:
    _fail(str(e))
  except PermissionError as e:
    _fail(f'cannot write {e.filename}: permission denied (choose another --output-dir)')
  except OSError as e:
    _fail(f'{e.strerror or e}: {e.filename}' if e.filename else str(e))
  except ValueError as e:  # malformed values inside otherwise readable files
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  for p in paths:
    print(p)
  return paths


def _merge(args) -> list[str]:
  """``merge``: one results table from several sweeps (ordered_jax.results.merge)."""
  from ordered_jax import results  # pylint: disable=g-import-not-at-top
  try:
    path = results.merge(args.inputs, args.output, keep=args.keep)
  except (ValueError, OSError) as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  print(path)
  return [path]


def _landscape(args) -> list[str]:
  """``landscape``: the maps of a results table (analysis.landscape)."""
  from analysis import landscape  # pylint: disable=g-import-not-at-top
  from ordered_jax import results  # pylint: disable=g-import-not-at-top
  try:
    rows = results.load(args.results).to_pylist()
    with style.use('paper'):
      paths = landscape.write(rows, args.out, args.row, args.col, dpi=args.dpi)
  except (ValueError, OSError) as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  for p in paths:
    print(p)
  return paths


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  from ordered_jax import workdir as _workdir  # pylint: disable=g-import-not-at-top
  _workdir.quiet_orbax_leftovers()
  main()
