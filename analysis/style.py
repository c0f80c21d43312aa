"""Figure style (``paper``: clean white; ``dark``: the reference's default look), panel
grids and saving. Styles apply through ``matplotlib.rc_context``, never globally."""

from __future__ import annotations

import contextlib
import io
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

STYLES = {
    'paper': {
        'figure.facecolor': 'white', 'axes.facecolor': 'white', 'savefig.facecolor': 'white',
        'axes.edgecolor': '#444444', 'axes.grid': True, 'grid.color': '#dddddd',
        'grid.linewidth': 0.6, 'axes.spines.top': False, 'axes.spines.right': False,
        'font.size': 9, 'axes.titlesize': 10, 'axes.labelsize': 9, 'legend.fontsize': 8,
        'legend.frameon': False, 'lines.linewidth': 1.5,
        'axes.prop_cycle': matplotlib.cycler(color=[
            '#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#F0E442',
            '#000000']),  # Okabe-Ito: distinguishable with colour-vision deficiency
    },
    'dark': {
        'figure.facecolor': '#1e1e1e', 'axes.facecolor': '#1e1e1e',
        'savefig.facecolor': '#1e1e1e', 'axes.edgecolor': '#bbbbbb', 'axes.labelcolor': '#dddddd',
        'text.color': '#dddddd', 'xtick.color': '#bbbbbb', 'ytick.color': '#bbbbbb',
        'axes.grid': True, 'grid.color': '#3a3a3a', 'grid.linewidth': 0.6,
        'axes.spines.top': False, 'axes.spines.right': False, 'font.size': 9,
        'axes.titlesize': 10, 'legend.fontsize': 8, 'legend.frameon': False,
        'lines.linewidth': 1.5,
        'axes.prop_cycle': matplotlib.cycler(color=[
            '#56B4E9', '#E69F00', '#009E73', '#F0E442', '#CC79A7', '#D55E00', '#0072B2',
            '#ffffff']),
    },
}
FORMATS = ('png', 'svg')


@contextlib.contextmanager
def use(style: str):
  """rcParams of ``style`` for the figures made (and saved) inside the block."""
  if style not in STYLES:
    raise ValueError(f'style must be one of {", ".join(STYLES)}; got {style!r}')
  with matplotlib.rc_context(STYLES[style]):
    yield


def colors() -> list[str]:
  return plt.rcParams['axes.prop_cycle'].by_key()['color']


def panels(n: int, *, ncols: int = 3, size=(4.2, 3.0), sharex=False, sharey=False,
           nrows: int | None = None):
  """(figure, flat list of n axes) on a grid; unused cells are removed."""
  ncols = max(1, min(ncols, n))
  nrows = nrows or math.ceil(n / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                           squeeze=False, sharex=sharex, sharey=sharey,
                           constrained_layout=True)
  flat = list(axes.ravel())
  for ax in flat[n:]:
    ax.remove()
  return fig, flat[:n]


def save(fig, path: str, *, dpi: int = 150) -> str:
  """Write ``fig`` (format from the extension; atomically), close it, return the path."""
  from analysis import atomic  # pylint: disable=g-import-not-at-top
  try:
    with atomic.replacing(path, 'wb') as f:
      fig.savefig(f, dpi=dpi, format=os.path.splitext(path)[1][1:] or 'png')
  finally:
    plt.close(fig)
  return path


def png_bytes(fig, *, dpi: int = 110) -> bytes:
  """``fig`` as PNG bytes (for embedding in a report); closes it."""
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=dpi)
  plt.close(fig)
  return buf.getvalue()
