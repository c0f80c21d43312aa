"""Issue 14's friction fixes: unknown-key messages, the `auto` data generator, size hints."""

import glob
import os

import numpy as np
import pytest

from ordered_jax import budget, keys, runs, tasks
from tests import tbevents
from tests.conftest import micro_config


KNOWN = ['strategy', 'epochs', 'probes', 'probes.names', 'probes.group', 'probes.curvature',
         'probes.curvature.k', 'probes.curvature.lanczos_steps']


@pytest.mark.parametrize('path,want', [
    ('stratgy', 'strategy'), ('probes.nmes', 'probes.names'), ('epoch', 'epochs'),
    ('probes.curvatur', 'probes.curvature'), ('probes.curvature.kk', 'probes.curvature.k'),
    ('nmes', 'probes.names'),  # a leaf at another depth
    ('bogus', None), ('probes.foo', None),  # never an ancestor ('probes')
])
def test_suggest(path, want):
  assert keys.suggest(path, KNOWN) == want


def test_unknown_key_message_names_the_full_path():
  config = micro_config()
  argv = ['main.py', '--config=configs/tiny.py', '--config.probes.nmes=x']
  assert keys.unknown_key_message(argv, 'nmes', config) == (
      'config.probes.nmes: unknown key; did you mean probes.names?')
  argv = ['main.py', '--config.probes.foo.bar=1']
  assert keys.unknown_key_message(argv, 'foo', config).startswith(
      'config.probes.foo: unknown key; see configs/default.py')


def test_missing_key_reads_ml_collections_errors():
  e = AttributeError(KeyError('\'nmes\'\nDid you mean "names" instead of "nmes"?'))
  assert keys.missing_key(e) == 'nmes'
  assert keys.missing_key(KeyError('bogus')) == 'bogus'


@pytest.mark.parametrize('task,test_size,want', [
    ('add', 40, 'reference'), ('poly:x^2+y', 40, 'reference'), ('add', 0, 'fast'),
    ('div', 40, 'fast'), ('sym:3', 0, 'fast'), ('add3', 40, 'fast'),
])
def test_auto_generator(task, test_size, want):
  config = micro_config(task=task, test_size=test_size,
                        train_size=20 if task == 'sym:3' else 60)
  assert config.data_generator == 'auto'  # the default
  assert runs.generator(config) == want
  runs.validate(config)
  resolved = runs.resolve(config)
  assert resolved.data_generator == want and config.data_generator == 'auto'
  # The same tables as naming the generator.
  t = runs.task(config)
  n_train, n_test = runs.sizes(config)
  for a, b in zip(tasks.make_task(t, n_train, n_test if test_size else 0, 3, 'auto'),
                  tasks.make_task(t, n_train, n_test if test_size else 0, 3, want)):
    np.testing.assert_array_equal(a, b)
  assert budget.estimate(config)['host_data'] == budget.estimate(
      micro_config(task=task, test_size=test_size, data_generator=want,
                   train_size=20 if task == 'sym:3' else 60))['host_data']


def test_explicit_generators_keep_their_checks():
  with pytest.raises(runs.ConfigError, match="config.data_generator: 'reference'.*'auto'"):
    runs.validate(micro_config(task='div', data_generator='reference'))
  with pytest.raises(runs.ConfigError, match='config.data_generator: must be one of auto'):
    runs.validate(micro_config(data_generator='slow'))
  with pytest.raises(runs.ConfigError, match='config.test_size: must be >= 1'):
    runs.validate(micro_config(data_generator='reference', test_size=0))


def test_sizes_too_big_for_a_small_group_say_what_to_set():
  with pytest.raises(runs.ConfigError) as info:
    runs.validate(micro_config(task='sym:4', p=97, train_size=3500, test_size=4000))
  assert str(info.value) == (
      "config.train_size: 3500 training + 4000 test examples exceed the 576 tuples of task "
      "'sym:4': set train_fraction (e.g. 0.5) and test_size=0 (the rest), or train_size "
      'and test_size to sum to at most 576')
  runs.validate(micro_config(task='sym:4', p=97, train_fraction=0.5, test_size=0))


def test_one_analysis_cli_lists_every_tool(capsys):
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    cli.main(['--help'])
  text = capsys.readouterr().out
  for tool in (*cli.TOOLS, 'sweep_map', 'merge'):
    assert f'    {tool} ' in text or f'    {tool}\n' in text, tool


def test_analysis_curves_through_the_cli(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  for name in ('stride', 'random'):
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / f'{name}.jsonl', 'w') as f:
      for e in range(5):
        f.write(json.dumps({'epoch': e, 'training_metrics/loss': 1.0 / (e + 1),
                            'training_metrics/training_accuracy': 20.0 * e,
                            'training_metrics/validation_accuracy': 10.0 * e}) + '\n')
  [out] = cli.main(['curves', '--workdir', str(tmp_path)])
  assert out == str(tmp_path / 'analysis' / 'curves' / 'curves.png')
  assert matplotlib.image.imread(out).std() > 0


def test_analysis_sweep_map_missing_table_is_one_line(tmp_path, capsys):
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    cli.main(['sweep_map', '--table', str(tmp_path / 'nope')])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == f'error: --table {tmp_path / "nope"}: no such file or folder'


def _tb_events(logdir):
  """[(tag, plugin name, plugin content bytes, text)] of every summary value."""
  out = []
  for ev in tbevents.events(logdir):
    for v in ev.summary.value:
      text = b''.join(v.tensor.string_val).decode() if v.HasField('tensor') else ''
      out.append((v.tag, v.metadata.plugin_data.plugin_name, v.metadata.plugin_data.content,
                  text))
  return out


def test_tensorboard_hparams_and_config_text(tmp_path):
  from ordered_jax import experiment, sinks  # pylint: disable=g-import-not-at-top
  config = micro_config(lr=0.003)
  cfg = experiment.run_config(config, runs.expand(config)[0], {'jax_version': 'x'})
  flat = sinks.hparam_values(cfg)
  assert flat['lr'] == 0.003 and flat['probes.group'] == 'none' and flat['seeds'] == '[]'
  assert not any(k.startswith('environment') for k in flat)
  sink = sinks.for_run(str(tmp_path), 'stride', tensorboard=True, csv_file=False, config=cfg)
  sink.write(0, {'training_metrics/validation_accuracy': 12.5})
  sink.close()
  events = _tb_events(str(tmp_path))
  hp = {tag: content for tag, plugin, content, _ in events if plugin == 'hparams'}
  assert set(hp) == {'_hparams_/experiment', '_hparams_/session_start_info',
                     '_hparams_/session_end_info'}
  from tensorboardX.proto import plugin_hparams_pb2  # pylint: disable=g-import-not-at-top
  start = plugin_hparams_pb2.HParamsPluginData()
  start.ParseFromString(hp['_hparams_/session_start_info'])
  assert start.session_start_info.hparams['lr'].number_value == pytest.approx(0.003)
  assert start.session_start_info.hparams['strategy'].string_value == 'stride'
  exp = plugin_hparams_pb2.HParamsPluginData()
  exp.ParseFromString(hp['_hparams_/experiment'])
  assert {m.name.tag for m in exp.experiment.metric_infos} == set(sinks.HPARAM_METRICS)
  [text] = [t for tag, plugin, _, t in events if plugin == 'text']
  assert '"lr": 0.003' in text and 'jax_version' not in text


def test_wandb_missing_package_is_one_line(monkeypatch, tmp_path, capsys):
  """Whether or not wandb is installed: without it, the option and the replay tool stop in
  one line naming the field (wandb is an optional extra)."""
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  from ordered_jax import wandb_sink  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(wandb_sink, 'available', lambda: False)
  with pytest.raises(runs.ConfigError, match='config.wandb.project: needs the wandb package'):
    runs.validate(_with_wandb('p'))
  runs.validate(_with_wandb(''))  # off: no package needed
  with pytest.raises(runs.ConfigError, match='config.wandb.mode: must be one of online'):
    runs.validate(_with_wandb('', mode='cloud'))
  os.makedirs(tmp_path / 'stride')
  (tmp_path / 'stride' / 'stride.jsonl').write_text('{"epoch": 0, "training_metrics/loss": 1}\n')
  with pytest.raises(SystemExit):
    cli.main(['wandb_replay', '--workdir', str(tmp_path), '--project', 'p'])
  assert capsys.readouterr().err.strip() == (
      'error: wandb_replay needs the wandb package, which is not installed: pip install wandb')


def _with_wandb(project, mode='offline'):
  c = micro_config()
  c.wandb.project, c.wandb.mode = project, mode
  return c


def test_wandb_offline_logs_the_same_keys(tmp_path, monkeypatch):
  """Skipped only without wandb: an offline run (no network) gets every scalar of every
  JSONL row at step = epoch, and the config with its environment."""
  wandb = pytest.importorskip('wandb')
  from ordered_jax import experiment, sinks  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  logged, configs = [], []
  real_log, real_init = wandb.sdk.wandb_run.Run.log, wandb.init

  def log(self, data, step=None, **kw):
    logged.append((step, dict(data)))
    return real_log(self, data, step=step, **kw)

  def init(*a, **kw):
    configs.append(kw['config'])
    return real_init(*a, **kw)

  monkeypatch.setattr(wandb.sdk.wandb_run.Run, 'log', log)
  monkeypatch.setattr(wandb, 'init', init)
  experiment.run(_with_wandb('ordered-jax-test'), str(tmp_path), quiet='silent')
  rows = sinks.read_jsonl(str(tmp_path / 'stride' / 'stride.jsonl'))
  assert logged == [(r['epoch'], {k: v for k, v in r.items() if k != 'epoch'}) for r in rows]
  assert configs[0]['lr'] == 1e-3 and 'jax_version' in configs[0]['environment']
  assert glob.glob(str(tmp_path / 'stride' / 'wandb' / '*' / '*.wandb'))


def test_report_has_a_section_per_probe_family_with_markers_for_sparse_series(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from analysis import readers, report  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / 'stride')
  with open(tmp_path / 'stride' / 'stride.jsonl', 'w') as f:
    for e in range(30):
      row = {'epoch': e, 'training_metrics/loss': 1.0 / (e + 1),
             'training_metrics/training_accuracy': 3.0 * e,
             'training_metrics/validation_accuracy': 2.0 * e,
             'path_length/path_length': 0.1 * e}
      if e % 10 == 0:
        row['parameter_delta/absolute_delta'] = 1.0 + e
      f.write(json.dumps(row) + '\n')
  runs = readers.load([str(tmp_path)], None)
  text = report.render(runs)
  assert '<h2>parameter_delta: ' in text and '<h2>path_length: ' in text
  fig = report.probe_figure(runs, ['parameter_delta/absolute_delta', 'path_length/path_length'])
  sparse, dense = fig.axes[0].lines[0], fig.axes[1].lines[0]
  assert sparse.get_marker() == 'o' and len(sparse.get_xdata()) == 3
  assert dense.get_marker() in ('None', None, '')
