"""Progress output of a run: a tqdm bar on a terminal, one plain line every N epochs in
logs and pipes (and with ``--quiet``), nothing with ``--silent``, and with ``--live`` a
full-screen Rich view (progress, then per run loss, train/test accuracy, grokking status
and the latest probe headline values). The ETA counts training time only: compilation
(``exclude``) is taken out of the rate."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Callable, Sequence

MODES = ('auto', 'lines', 'silent', 'live')  # auto: a bar on a terminal, lines otherwise

# The live view's probe headlines: the reference's live sidebar (its mod_arithmetic runner's
# ``live_metrics``) in our key names, plus curvature and progress measures. (group, label,
# key); a key shows once its probe has written it. tests/test_console.py checks every key
# against the probe catalog.
HEADLINES = (
    ('diagnostics', 'loss volatility', 'training_diagnostics/loss_volatility'),
    ('diagnostics', 'loss autocorr', 'training_diagnostics/loss_autocorrelation'),
    ('diagnostics', 'grad norm CV', 'training_diagnostics/grad_norm_cv'),
    ('gradients', 'total norm', 'norms/total_norm'),
    ('gradients', 'ordering fraction', 'counterfactual/ordering_fraction'),
    ('gradients', 'path efficiency', 'path_length/path_efficiency'),
    ('gradients', 'ordering -> solution', 'counterfactual/ordering_grad_cossim_to_solution'),
    ('gradients', 'content -> solution', 'counterfactual/content_grad_cossim_to_solution'),
    ('gradients', 'efficiency 10', 'batch_dynamics/efficiency_10'),
    ('frequency', 'peak frequency', 'fourier/peak_frequency'),
    ('frequency', 'spectral entropy', 'fourier/spectral_entropy'),
    ('frequency', 'significant freqs', 'fourier/n_significant_freqs'),
    ('frequency', 'decoder entropy', 'fourier/decoder_spectral_entropy'),
    ('frequency', 'neuron Fourier top1', 'fourier/neuron_fourier_top1'),
    ('progress', 'restricted loss', 'progress/restricted_loss'),
    ('progress', 'excluded loss', 'progress/excluded_loss'),
    ('curvature', 'lambda max', 'curvature/lambda_max'),
    ('curvature', 'edge of stability', 'curvature/edge_of_stability_ratio'),
    ('topology', 'entanglement ratio', 'hessian/entanglement_energy_ratio'),
    ('topology', 'entangle-content cos', 'hessian/entanglement_content_cossim'),
    ('topology', 'amplification', 'hessian/amplification_ratio'),
    ('topology', 'coherence', 'hessian/entanglement_coherence'),
    ('topology', 'edge of stability', 'hessian/edge_of_stability'),
    ('optimizer', 'mom-grad cos', 'adam_dynamics/momentum_grad_cossim'),
    ('optimizer', 'amplification', 'adam_dynamics/amplification_ratio'),
    ('optimizer', 'update deflection', 'adam_dynamics/update_deflection'),
    ('optimizer', 'LR CV', 'adam_dynamics/effective_lr_cv'),
    ('optimizer', 'update -> solution', 'adam_dynamics/update_solution_cossim'),
)


def headlines() -> tuple:
  """``HEADLINES``, then those the registered probes declare (``probes.registry``'s
  ``headlines=``: (label, key) pairs, grouped under the probe's name), once the registry
  is loaded (a probe registers itself there before it runs)."""
  import sys  # pylint: disable=g-import-not-at-top
  registry = sys.modules.get('probes.registry')
  if registry is None:
    return HEADLINES
  known = {k for _, _, k in HEADLINES}
  return HEADLINES + tuple((name, label, f'{name}/{key}')
                           for name, e in registry.entries().items()
                           for label, key in e.headlines if f'{name}/{key}' not in known)
MAX_ROWS = 24  # runs shown in the live view; a larger batch shows the best by test accuracy


def auto_every(total: int) -> int:
  """Epochs between lines when not given: about 50 lines per run, at least every epoch."""
  return max(1, total // 50)


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  return f'{h}:{rest // 60:02d}:{rest % 60:02d}' if h else f'{rest // 60:02d}:{rest % 60:02d}'


class _Timer:
  """Epochs done out of ``total`` and the training time they took (compilation excluded)."""

  def __init__(self, total: int, initial: int):
    self.total, self.n, self.initial = total, initial, initial
    self.start = time.perf_counter()
    self.excluded = 0.0

  def exclude(self, seconds: float) -> None:
    """Leave ``seconds`` (a compilation) out of the rate."""
    self.excluded += seconds

  def update(self, n: int = 1) -> None:
    self.n += n

  def clocks(self) -> str:
    """'00:31 training, ETA 04:39' (ETA '?' before the first epoch)."""
    spent = time.perf_counter() - self.start - self.excluded
    done = self.n - self.initial
    eta = spent / done * (self.total - self.n) if done else float('nan')
    return f'{_clock(spent)} training, ETA {_clock(eta) if eta == eta else "?"}'


class Lines(_Timer):
  """One line per ``every`` epochs (and at the last), e.g.
  ``stride: epoch 40/400 | stride loss 0.12 train 99.0 val 20.1 | 00:31 training, ETA 04:39``;
  no carriage returns, so a log file reads as text."""

  def __init__(self, desc: str, total: int, initial: int, every: int, stream=None):
    super().__init__(total, initial)
    self.desc = desc
    self.every = every or auto_every(total)
    self.stream = stream or sys.stderr

  def line(self, postfix: str) -> str:
    return f'{self.desc}: epoch {self.n}/{self.total} | {postfix} | {self.clocks()}'

  def set_postfix_str(self, postfix: str, refresh: bool = False) -> None:
    del refresh
    if self.n % self.every == 0 or self.n == self.total or self.n == self.initial + 1:
      print(self.line(postfix), file=self.stream, flush=True)

  def close(self) -> None:
    pass


# -- the live view ----------------------------------------------------------------------------

@dataclasses.dataclass
class RunStatus:
  """What the live view shows of one run (all read from host values the loop already has)."""

  name: str
  active: bool = True
  loss: float = math.nan
  train: float = math.nan      # accuracies in percent, NaN before the first evaluation
  test: float = math.nan
  memorized: int | None = None
  grokked: int | None = None   # the generalisation epoch (test accuracy >= target)
  stop: str = ''               # why a stopped run stopped ('' while it trains)
  probes: dict = dataclasses.field(default_factory=dict)  # headline key -> latest value


def headline_values(row: dict) -> dict:
  """The headline keys (``headlines``) of a metrics row as floats (a per-step list: the
  mean of its finite entries); keys without a finite value are left out."""
  out = {}
  for k in {k for _, _, k in headlines()} & row.keys():
    v = row[k]
    vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else
                               getattr(v, 'ravel', lambda v=v: [v])())]
    vals = [x for x in vals if math.isfinite(x)]
    if vals:
      out[k] = sum(vals) / len(vals)
  return out


def grokking_text(s: RunStatus) -> str:
  """'grokked at epoch 174', else 'memorised at 67, not yet' or 'not yet'; a stopped run
  that never grokked says why it stopped."""
  if s.grokked is not None:
    return f'grokked at epoch {s.grokked}'
  head = f'memorised at {s.memorized}, ' if s.memorized is not None else ''
  return head + (f'not yet ({s.stop})' if s.stop and not s.active else 'not yet')


def _num(v: float, percent: bool = False) -> str:
  if v is None or v != v:
    return '-'
  if percent:
    return f'{v:.1f}'
  return f'{v:.4g}'


def runs_table(statuses: Sequence[RunStatus]):
  """Rich table: one row per run (at most ``MAX_ROWS``, the best by test accuracy)."""
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  from rich import box  # pylint: disable=g-import-not-at-top
  shown = list(statuses)
  if len(shown) > MAX_ROWS:
    shown = sorted(shown, key=lambda s: -(s.test if s.test == s.test else -1.0))[:MAX_ROWS]
  t = Table(box=box.SIMPLE_HEAD, padding=(0, 1), title_justify='left',
            caption=(f'{len(statuses) - len(shown)} more runs not shown (best {MAX_ROWS} by '
                     'test accuracy)') if len(shown) < len(statuses) else None)
  for name, justify in (('run', 'left'), ('loss', 'right'), ('train %', 'right'),
                        ('test %', 'right'), ('grokking', 'left')):
    t.add_column(name, justify=justify, no_wrap=True)
  for s in shown:
    style = 'green' if s.grokked is not None else None if s.active else 'dim'
    t.add_row(s.name + ('' if s.active else ' (stopped)'), _num(s.loss),
              _num(s.train, True), _num(s.test, True), grokking_text(s), style=style)
  return t


def probes_table(statuses: Sequence[RunStatus]):
  """Rich table of the probe headlines written so far: a row per metric, a column per run
  (the first ``MAX_ROWS`` runs); None before any probe has fired."""
  present = [(g, label, k) for g, label, k in headlines()
             if any(k in s.probes for s in statuses)]
  if not present:
    return None
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  from rich import box  # pylint: disable=g-import-not-at-top
  shown = list(statuses)[:MAX_ROWS]
  t = Table(box=box.SIMPLE_HEAD, padding=(0, 1), title='latest probe values',
            title_justify='left')
  t.add_column('group', style='dim', no_wrap=True)
  t.add_column('metric', no_wrap=True)
  for s in shown:
    t.add_column(s.name, justify='right', no_wrap=True)
  for g, label, k in present:
    t.add_row(g, label, *[_num(s.probes.get(k, math.nan)) for s in shown])
  return t


def view(desc: str, timer: _Timer, statuses: Sequence[RunStatus]):
  """The whole live view as one Rich renderable: the bar and clocks, then the tables."""
  from rich.console import Group  # pylint: disable=g-import-not-at-top
  from rich.progress_bar import ProgressBar  # pylint: disable=g-import-not-at-top
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  head = Table.grid(padding=(0, 1))
  head.add_column(no_wrap=True)
  head.add_column(ratio=1)
  head.add_column(no_wrap=True)
  head.add_row(f'[bold]{desc}[/bold] epoch {timer.n}/{timer.total}',
               ProgressBar(total=max(timer.total, 1), completed=timer.n),
               timer.clocks())
  parts = [head, runs_table(statuses)]
  probes = probes_table(statuses)
  if probes is not None:
    parts.append(probes)
  return Group(*parts)


class Live(_Timer):
  """``--live``: the view above, full screen, redrawn in place after an epoch (at most
  every ``min_interval`` seconds, so fast epochs pay nothing for it: ``show`` calls its
  ``statuses`` function only when it redraws). The final view stays on the terminal."""

  live = True

  def __init__(self, desc: str, total: int, initial: int, *, console=None,
               screen: bool = True, min_interval: float = 0.1):
    super().__init__(total, initial)
    from rich.console import Console  # pylint: disable=g-import-not-at-top
    from rich.live import Live as RichLive  # pylint: disable=g-import-not-at-top
    from rich.text import Text  # pylint: disable=g-import-not-at-top
    self.desc, self.min_interval = desc, min_interval
    self.console = console or Console(stderr=True)
    self.last_draw = -math.inf
    self.current = None
    self.rich = RichLive(Text(f'{desc}: compiling ...'), console=self.console, screen=screen,
                         auto_refresh=False, redirect_stdout=True, redirect_stderr=True)
    self.rich.start(refresh=True)

  def show(self, statuses: Callable[[], Sequence[RunStatus]]) -> None:
    """Redraw with ``statuses()`` when due (and always at the last epoch)."""
    now = time.perf_counter()
    if now - self.last_draw < self.min_interval and self.n < self.total:
      return
    self.last_draw = now
    self.current = view(self.desc, self, statuses())
    self.rich.update(self.current, refresh=True)

  def close(self) -> None:
    self.rich.stop()
    if self.current is not None:
      self.console.print(self.current)


_NOTICED = []  # the non-terminal notice is printed once per process


def live_possible() -> bool:
  """A full-screen view needs a terminal on stdout and stderr (never frames in a log)."""
  return sys.stdout.isatty() and sys.stderr.isatty()


def bar(mode: str, desc: str, total: int, initial: int, every: int = 0):
  """The progress object for ``mode`` (``MODES``; or None for silent): tqdm on a terminal
  in 'auto', ``Live`` in 'live' (plain ``Lines`` with a one-line notice when stdout or
  stderr is not a terminal), ``Lines`` otherwise."""
  if mode == 'silent':
    return None
  if mode == 'live':
    if live_possible():
      return Live(desc, total, initial)
    if not _NOTICED:
      _NOTICED.append(True)
      print('--live: stdout or stderr is not a terminal; printing plain progress lines '
            'instead', file=sys.stderr, flush=True)
    return Lines(desc, total, initial, every)
  if mode == 'auto' and sys.stderr.isatty():
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    b = tqdm(total=total, initial=initial, unit='epoch', dynamic_ncols=True, desc=desc,
             smoothing=0)  # the average rate, from which exclude() removes compilation
    b.exclude = lambda seconds: setattr(b, 'start_t', b.start_t + seconds)
    return b
  return Lines(desc, total, initial, every)
