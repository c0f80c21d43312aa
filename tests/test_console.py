"""Progress output (issue 14 A3): lines in logs and with --quiet, none with --silent, an ETA
without compilation, no carriage returns."""

import io
import os
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
