"""Progress output of a run: a tqdm bar on a terminal, one plain line every N epochs in
logs and pipes (and with ``--quiet``), nothing with ``--silent``. The ETA counts training
time only: compilation (``exclude``) is taken out of the rate."""

from __future__ import annotations

import sys
import time

MODES = ('auto', 'lines', 'silent')  # auto: a bar on a terminal, lines otherwise


def auto_every(total: int) -> int:
  """Epochs between lines when not given: about 50 lines per run, at least every epoch."""
  return max(1, total // 50)


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}' if h else f'{rest // 60:02d}:{rest % 60:02d}'


class Lines:
  """One line per ``every`` epochs (and at the last), e.g.
  ``stride: epoch 40/400 | stride loss 0.12 train 99.0 val 20.1 | 00:31 elapsed, ETA 04:39``;
  no carriage returns, so a log file reads as text."""

  def __init__(self, desc: str, total: int, initial: int, every: int, stream=None):
    self.desc, self.total, self.n, self.initial = desc, total, initial, initial
    self.every = every or auto_every(total)
    self.stream = stream or sys.stderr
    self.start = time.perf_counter()
    self.excluded = 0.0

  def exclude(self, seconds: float) -> None:
    """Leave ``seconds`` (a compilation) out of the rate."""
    self.excluded += seconds

  def update(self, n: int = 1) -> None:
    self.n += n

  def line(self, postfix: str) -> str:
    spent = time.perf_counter() - self.start - self.excluded
    done = self.n - self.initial
    eta = spent / done * (self.total - self.n) if done else float('nan')
    left = _clock(eta) if eta == eta else '?'
    return (f'{self.desc}: epoch {self.n}/{self.total} | {postfix} | {_clock(spent)} '
            f'training, ETA {left}')

  def set_postfix_str(self, postfix: str, refresh: bool = False) -> None:
    del refresh
    if self.n % self.every == 0 or self.n == self.total or self.n == self.initial + 1:
      print(self.line(postfix), file=self.stream, flush=True)

  def close(self) -> None:
    pass


def bar(mode: str, desc: str, total: int, initial: int, every: int = 0):
  """The progress object for ``mode`` (``MODES``; or None for silent): tqdm on a terminal
  in 'auto', ``Lines`` otherwise."""
  if mode == 'silent':
    return None
  if mode == 'auto' and sys.stderr.isatty():
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    b = tqdm(total=total, initial=initial, unit='epoch', dynamic_ncols=True, desc=desc,
             smoothing=0)  # the average rate, from which exclude() removes compilation
    b.exclude = lambda seconds: setattr(b, 'start_t', b.start_t + seconds)
    return b
  return Lines(desc, total, initial, every)
