"""Progress output (issue 14 A3): lines in logs and with --quiet, none with --silent, an ETA
without compilation, no carriage returns."""

import io
import os
import re
import subprocess
import sys

from ordered_jax import console
from tests.conftest import MICRO, ROOT


def test_lines_every_n_epochs_and_the_last(monkeypatch):
  clock = iter([0.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0])
  monkeypatch.setattr(console.time, 'perf_counter', lambda: next(clock))
  out = io.StringIO()
  b = console.Lines('stride', total=6, initial=0, every=2, stream=out)  # start at 0.0
  b.exclude(9.0)  # compiling the first epoch took 9 of its 10 s
  for _ in range(6):
    b.update(1)
    b.set_postfix_str('loss 1.0')
  lines = out.getvalue().splitlines()
  assert [l.split(' | ')[0] for l in lines] == ['stride: epoch 1/6', 'stride: epoch 2/6',
                                                'stride: epoch 4/6', 'stride: epoch 6/6']
  # epoch 1 at t = 10: 1 s of training, so 5 more epochs take 5 s (compilation excluded)
  assert lines[0].endswith('00:01 training, ETA 00:05')
  assert '\r' not in out.getvalue()


def test_modes():
  assert console.bar('silent', 'x', 5, 0) is None
  assert isinstance(console.bar('lines', 'x', 5, 0), console.Lines)
  assert console.auto_every(400) == 8 and console.auto_every(10) == 1


def test_main_prints_lines_in_a_log_and_nothing_when_silent(tmp_path):
  flags = [f'--config.{k}={v}' for k, v in MICRO.items()]
  run = lambda *a: subprocess.run(  # noqa: E731
      [sys.executable, os.path.join(ROOT, 'main.py'), '--config=configs/tiny.py', *flags, *a],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  proc = run(f'--workdir={tmp_path}/a', '--print_every=2')
  assert proc.returncode == 0, proc.stderr[-2000:]
  epochs = [l.split(' | ')[0] for l in proc.stderr.splitlines() if ': epoch ' in l]
  assert epochs == ['stride: epoch 1/6', 'stride: epoch 2/6', 'stride: epoch 4/6',
                    'stride: epoch 6/6'], proc.stderr[-2000:]
  assert '\r' not in proc.stderr
  proc = run(f'--workdir={tmp_path}/b', '--silent')
  assert proc.returncode == 0 and ': epoch ' not in proc.stderr, proc.stderr[-2000:]


# -- --live: the full-screen view -------------------------------------------------------------

def _render(renderable, width=160) -> str:
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  c = Console(file=io.StringIO(), width=width, record=True, color_system=None)
  c.print(renderable)
  return c.export_text()


def _statuses():
  return [
      console.RunStatus('stride', loss=0.0123, train=100.0, test=99.6, memorized=67,
                        grokked=174, active=False, stop='reached_target_acc',
                        probes={'fourier/spectral_entropy': 0.4321, 'norms/total_norm': 1.5}),
      console.RunStatus('target', loss=1.25, train=99.2, test=31.4, memorized=124,
                        probes={'fourier/spectral_entropy': 0.9}),
      console.RunStatus('random', loss=4.5),  # not evaluated yet
  ]


def test_live_view_shows_runs_grokking_and_probes():
  timer = console._Timer(total=400, initial=0)  # pylint: disable=protected-access
  timer.update(175)
  text = _render(console.view('3 runs', timer, _statuses()))
  assert '3 runs epoch 175/400' in text and 'ETA' in text
  rows = {l.split()[0]: l for l in text.splitlines() if l.strip()[:6] in ('stride', 'target',
                                                                         'random')}
  assert 'grokked at epoch 174' in rows['stride'] and '(stopped)' in rows['stride']
  assert '99.6' in rows['stride'] and '0.0123' in rows['stride']
  assert 'memorised at 124, not yet' in rows['target'] and '31.4' in rows['target']
  assert 'not yet' in rows['random'] and '-' in rows['random']  # no accuracy yet
  probe_rows = [l for l in text.splitlines() if 'spectral entropy' in l]
  assert probe_rows and '0.4321' in probe_rows[0] and '0.9' in probe_rows[0]
  assert any('total norm' in l and '1.5' in l for l in text.splitlines())
  assert 'loss volatility' not in text  # a headline no probe has written is left out
  assert console.probes_table(_statuses()[2:]) is None


def test_live_view_caps_a_large_batch():
  many = [console.RunStatus(f'seed{i}', test=float(i)) for i in range(console.MAX_ROWS + 6)]
  text = _render(console.runs_table(many))
  assert f'seed{console.MAX_ROWS + 5}' in text and 'seed0 ' not in text  # the best shown
  assert '6 more runs not shown' in text


def test_headlines_are_catalog_keys():
  from probes import catalog  # pylint: disable=g-import-not-at-top
  for _, _, key in console.HEADLINES:
    probe, metric = key.split('/', 1)
    patterns = [re.sub(r'<[^>]+>', lambda _: r'\w+', re.escape(m.key))
                for m in catalog.CATALOG[probe].metrics]
    assert any(re.fullmatch(p, metric) for p in patterns), key  # efficiency_<w>: efficiency_10


def test_headline_values_reduce_lists_and_drop_non_finite():
  import numpy as np  # pylint: disable=g-import-not-at-top
  row = {'hessian/amplification_ratio': [1.0, float('nan'), 3.0],
         'fourier/spectral_entropy': np.float32(0.5), 'norms/total_norm': float('nan'),
         'adam_dynamics/update_deflection': np.array([2.0, 4.0]),
         'fourier/freq_powers': {'3': 1.0}, 'training_metrics/loss': 1.0}
  assert console.headline_values(row) == {'hessian/amplification_ratio': 2.0,
                                          'fourier/spectral_entropy': 0.5,
                                          'adam_dynamics/update_deflection': 3.0}


def test_a_registered_probes_headlines_are_shown_live():
  """A probe registered with ``headlines=`` (label, key) gets its values into --live's
  table, under its name, like the built-in headlines."""
  from probes import registry  # pylint: disable=g-import-not-at-top
  registry.register('weight_rms', lambda ctx, o: None, headlines=(('rms', 'rms'),))
  try:
    row = {'weight_rms/rms': 0.25, 'weight_rms/relative': 0.5}
    assert console.headline_values(row) == {'weight_rms/rms': 0.25}
    text = _render(console.probes_table([console.RunStatus('stride', probes={
        'weight_rms/rms': 0.25})]))
    assert any(l.split()[:2] == ['weight_rms', 'rms'] and '0.25' in l
               for l in text.splitlines()), text
  finally:
    registry.unregister('weight_rms')
  assert console.headline_values(row) == {}


def test_live_redraws_only_when_due_and_keeps_the_last_view(monkeypatch):
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  term = Console(file=out, force_terminal=True, width=120, color_system=None)
  calls = []

  def statuses():
    calls.append(1)
    return _statuses()

  b = console.Live('3 runs', total=5, initial=0, console=term, screen=False,
                   min_interval=1e9)
  for _ in range(5):
    b.update(1)
    b.show(statuses)
  assert len(calls) == 2  # the first epoch, then not before the last: no cost in between
  b.close()
  assert 'grokked at epoch 174' in out.getvalue().split('3 runs epoch 5/5')[-1]


def test_live_falls_back_to_lines_off_a_terminal(capsys):
  console._NOTICED.clear()  # pylint: disable=protected-access
  b = console.bar('live', 'stride', 4, 0, every=1)
  assert isinstance(b, console.Lines)
  console.bar('live', 'stride', 4, 0)
  err = capsys.readouterr().err
  assert err.count('--live: stdout or stderr is not a terminal') == 1  # once per process
  b.update(1)
  b.set_postfix_str('loss 1.0')
  assert capsys.readouterr().err.startswith('stride: epoch 1/4 | loss 1.0 |')


def test_live_in_a_run_shows_probe_values(monkeypatch, tmp_path):
  """experiment.run with quiet='live': the view (on a fake terminal) ends with the run's
  row and the probe's headline; off a terminal it is plain lines (the test above)."""
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  import probes  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  term = Console(file=out, force_terminal=True, width=150, color_system=None)
  made = []

  def live_bar(mode, desc, total, initial, every=0):
    assert mode == 'live'
    made.append(console.Live(desc, total, initial, console=term, screen=False,
                             min_interval=0.0))
    return made[-1]

  monkeypatch.setattr(console, 'bar', live_bar)
  config = micro_config(epochs=3)
  config.probes.names = 'norms'
  config.probe_every = 1
  experiment.run(config, str(tmp_path), quiet='live', probes=probes.build(config))
  assert made
  final = out.getvalue().split('stride epoch 3/3')[-1]
  assert 'stride' in final and 'not yet' in final and 'total norm' in final
