"""Tables of runs x values as ``pyarrow.Table`` and their LaTeX, Markdown and CSV forms."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.csv as pa_csv

from analysis import series

FORMATS = ('latex', 'markdown', 'csv')
EXTENSIONS = {'latex': 'tex', 'markdown': 'md', 'csv': 'csv'}


def make(first: str, names: list[str], columns: dict[str, list]) -> pa.Table:
  """A table whose first column ``first`` holds ``names`` and then one column per entry
  (floats become float64 with NaN as null; other values are kept as given)."""
  data = {first: pa.array(names, pa.string())}
  for col, values in columns.items():
    if all(v is None or isinstance(v, (int, float)) for v in values):
      data[col] = pa.array([None if v is None or (isinstance(v, float) and math.isnan(v))
                            else float(v) for v in values], pa.float64())
    else:
      data[col] = pa.array([None if v is None else str(v) for v in values], pa.string())
  return pa.table(data)


def _fmt(v, precision: int, whole: bool) -> str:
  """Columns of whole numbers as integers; tiny or huge values in scientific notation."""
  if v is None:
    return '--'
  if isinstance(v, float):
    if whole:
      return str(int(v))
    if v and (abs(v) >= 1e6 or abs(v) < 10 ** -precision):
      return f'{v:.{precision}g}'
    return f'{v:.{precision}f}'
  return str(v)


def _whole(table: pa.Table, col: str) -> bool:
  vals = [v for v in table.column(col).to_pylist() if v is not None]
  return bool(vals) and all(isinstance(v, float) and math.isfinite(v) and v == int(v)
                            and abs(v) < 1e15 for v in vals)


def _best(table: pa.Table, col: str, lower: bool):
  vals = [v for v in table.column(col).to_pylist() if isinstance(v, float)]
  if len(vals) < 2:
    return None
  return min(vals) if lower else max(vals)


def _cells(table: pa.Table, precision: int, bold_best: bool, bold):
  header = table.column_names
  best = {c: _best(table, c, series.lower_is_better(c)) if bold_best else None
          for c in header[1:]}
  whole = {c: _whole(table, c) for c in header}
  rows = []
  for i in range(table.num_rows):
    row = []
    for c in header:
      v = table.column(c)[i].as_py()
      text = _fmt(v, precision, whole[c])
      if c in best and best[c] is not None and v == best[c]:
        text = bold(text)
      row.append(text)
    rows.append(row)
  return header, rows


_LATEX = {'\\': r'\textbackslash{}', '&': r'\&', '%': r'\%', '_': r'\_', '#': r'\#',
          '$': r'\$', '{': r'\{', '}': r'\}', '~': r'\textasciitilde{}', '^': r'\^{}'}


def _latex_escape(text: str) -> str:
  return ''.join(_LATEX.get(c, c) for c in text)


def to_latex(table: pa.Table, *, precision=4, bold_best=False, caption='') -> str:
  """A booktabs ``tabular`` (the best value per column in bold with ``bold_best``: the
  lowest for loss/error/perplexity columns, else the highest)."""
  header, rows = _cells(table, precision, bold_best, lambda t: r'\textbf{' + t + '}')
  esc = lambda t: t if t.startswith(r'\textbf') else _latex_escape(t)
  lines = [r'\begin{table}[t]', r'\centering']
  if caption:
    lines.append(r'\caption{' + _latex_escape(caption) + '}')
  lines += [r'\begin{tabular}{l' + 'r' * (len(header) - 1) + '}', r'\toprule',
            ' & '.join(_latex_escape(h) for h in header) + r' \\', r'\midrule']
  lines += [' & '.join(esc(c) for c in row) + r' \\' for row in rows]
  lines += [r'\bottomrule', r'\end{tabular}', r'\end{table}']
  return '\n'.join(lines) + '\n'


def to_markdown(table: pa.Table, *, precision=4, bold_best=False) -> str:
  """A GitHub Markdown table (``|`` in cells escaped)."""
  header, rows = _cells(table, precision, bold_best, lambda t: f'**{t}**')
  esc = lambda t: t.replace('|', r'\|')
  lines = ['| ' + ' | '.join(esc(h) for h in header) + ' |',
           '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
  lines += ['| ' + ' | '.join(esc(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def write(table: pa.Table, path: str, fmt: str, *, precision=4, bold_best=False,
          caption='') -> str:
  """Write ``table`` as ``fmt`` (latex, markdown or csv; CSV keeps full precision)."""
  from analysis import atomic  # pylint: disable=g-import-not-at-top
  if fmt not in FORMATS:
    raise ValueError(f'format must be one of {", ".join(FORMATS)}; got {fmt!r}')
  with atomic.replacing(path, 'wb' if fmt == 'csv' else 'w') as f:
    if fmt == 'csv':
      pa_csv.write_csv(table, f)
    elif fmt == 'latex':
      f.write(to_latex(table, precision=precision, bold_best=bold_best, caption=caption))
    else:
      f.write(to_markdown(table, precision=precision, bold_best=bold_best))
  return path
