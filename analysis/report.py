"""report: one self-contained HTML page (figures embedded as base64 PNG) on a set of runs.

Per run: the memorisation epoch (first evaluated epoch with train accuracy >= 99 %), the
generalisation epoch (first with test accuracy >= the run's target_acc) and the gap; loss
and accuracy curves overlaid by strategy; the embedding's Fourier spectrum at the end
(from the fourier probe's ``freq_powers`` when recorded, else from the final weights);
attention, curvature, counterfactual-split and Fourier curves when those probes ran; the summary table. Runs with a
summary.json but no metric rows (the paper's published summaries) appear in the table:
their generalisation epoch is the early-stop epoch (the reference stops at target_acc).
"""

from __future__ import annotations

import base64
import datetime
import html
import math

import numpy as np

from analysis import labels, style
from analysis.readers import TEST_ACC, TRAIN_ACC, LOSS, Run

MEMORIZATION_ACC = 99.0
ATTENTION = ('attention/attn_entropy', 'attention/attn_variance', 'attention/sv_concentration',
             'attention/effective_rank', 'attention/top5_explained_var')
CURVATURE = ('curvature/lambda_max', 'curvature/trace', 'curvature/edge_of_stability_ratio',
             'curvature/preconditioned_lambda_max', 'curvature/preconditioned_eos_ratio',
             'hessian/rayleigh_quotient', 'hessian/edge_of_stability',
             'hessian/entanglement_energy_ratio')
COUNTERFACTUAL = ('counterfactual/ordering_fraction', 'counterfactual/content_component_norm',
                  'counterfactual/ordering_component_norm', 'counterfactual/ordering_alignment')
FOURIER = ('fourier/spectral_entropy', 'fourier/n_significant_freqs', 'fourier/peak_power',
           'fourier/low_freq_power', 'fourier/neuron_fourier_entropy')
LINESTYLES = ('-', '--', ':', '-.')


def _first(epochs: np.ndarray, values: np.ndarray, threshold: float):
  idx = np.flatnonzero(values >= threshold)
  return int(epochs[idx[0]]) if idx.size else None


def grokking(run: Run, memorization=MEMORIZATION_ACC) -> dict:
  """{memorization_epoch, generalization_epoch, gap, source} of a run: from its rows, else
  from its summary (ours: the grokking block; the reference's: the early-stop epoch)."""
  e_tr, v_tr = run.series(TRAIN_ACC)
  e_te, v_te = run.series(TEST_ACC)
  if e_te.size:
    mem, gen, source = (_first(e_tr, v_tr, memorization), _first(e_te, v_te, run.target_acc),
                        'metrics')
  elif 'grokking' in run.summary:
    g = run.summary['grokking']
    mem, gen, source = g.get('memorization_epoch'), g.get('generalization_epoch'), 'summary'
  else:
    t = run.summary.get('training', {})
    final = run.summary.get('final_eval', {}).get('validation_accuracy')
    reached = t.get('early_stopped') and isinstance(final, (int, float)) and \
        final >= run.target_acc
    mem, gen, source = None, t.get('actual_epochs') if reached else None, 'summary'
  gap = gen - mem if mem is not None and gen is not None else None
  return {'memorization_epoch': mem, 'generalization_epoch': gen, 'gap': gap,
          'source': source}


def _final(run: Run, key: str):
  e, v = run.series(key)
  if v.size:
    return float(v[-1])
  return run.summary.get('final_eval', {}).get(key.split('/')[-1])


def summary_rows(runs: list[Run], memorization=MEMORIZATION_ACC) -> list[dict]:
  """One dict per run: the summary table's columns."""
  out = []
  for r in runs:
    g = grokking(r, memorization)
    t, timing = r.summary.get('training', {}), r.summary.get('timing', {})
    last = r.rows[-1]['epoch'] if r.rows else t.get('actual_epochs')
    out.append({
        'run': r.name, 'origin': r.origin, 'strategy': r.strategy,
        'seed': r.config.get('seed', t.get('seed')), 'last epoch': last,
        'final train acc (%)': _final(r, TRAIN_ACC), 'final test acc (%)': _final(r, TEST_ACC),
        'memorised at': g['memorization_epoch'], 'generalised at': g['generalization_epoch'],
        'gap': g['gap'], 'target acc (%)': r.target_acc,
        'duration (s)': timing.get('duration_seconds'),
        'steps/s': timing.get('steps_per_second'), 'epochs from': g['source']})
  return out


def _styles(runs: list[Run]):
  """{run name: (colour, linestyle)}: a colour per strategy, a line style per run in it."""
  colors = style.colors()
  strategies = list(dict.fromkeys(r.strategy for r in runs))
  seen: dict[str, int] = {}
  out = {}
  for r in runs:
    i = seen.get(r.strategy, 0)
    seen[r.strategy] = i + 1
    out[r.name] = (colors[strategies.index(r.strategy) % len(colors)],
                   LINESTYLES[i % len(LINESTYLES)])
  return out


def curves_figure(runs: list[Run], memorization=MEMORIZATION_ACC):
  """Loss, train accuracy and test accuracy over epochs, overlaid; dots mark the
  memorisation and generalisation epochs."""
  fig, (ax_loss, ax_tr, ax_te) = style.panels(3, ncols=3, size=(4.4, 3.2))
  looks = _styles(runs)
  for r in runs:
    color, ls = looks[r.name]
    g = grokking(r, memorization)
    e, v = r.series(LOSS)
    if e.size:
      ax_loss.plot(e, v, color=color, ls=ls, label=r.name)
    for ax, key, mark in ((ax_tr, TRAIN_ACC, g['memorization_epoch']),
                          (ax_te, TEST_ACC, g['generalization_epoch'])):
      e, v = r.series(key)
      if not e.size:
        continue
      ax.plot(e, v, color=color, ls=ls, label=r.name)
      if mark is not None and g['source'] == 'metrics':
        ax.plot([mark], [v[np.searchsorted(e, mark)]], 'o', color=color, ms=5)
  lo, hi = ax_loss.dataLim.intervaly
  ax_loss.set(yscale='log' if lo > 0 and hi / lo > 10 else 'linear', title='training loss',
              xlabel='epoch', ylabel='loss')
  ax_tr.set(title=f'train accuracy (dot: first >= {memorization:g} %)', xlabel='epoch',
            ylabel='accuracy (%)', ylim=(-2, 102))
  ax_te.set(title='test accuracy (dot: first >= target_acc)', xlabel='epoch',
            ylabel='accuracy (%)', ylim=(-2, 102))
  ax_loss.legend()
  return fig


def fourier_spectrum(run: Run):
  """(frequencies k, power shares, where from) of the embedding at the end, or None.

  From the last ``fourier/freq_powers`` (tracked frequencies only) when the probe ran,
  else the full spectrum (k = 1..p//2, normalised over all p bins as the probe does) of
  the final weights' embedding."""
  epochs, dicts = run.dict_series('fourier/freq_powers')
  if dicts and dicts[-1]:
    ks = np.array(sorted(int(k) for k in dicts[-1]))
    return ks, np.array([float(dicts[-1][str(k)]) for k in ks]), \
        f'fourier probe, epoch {int(epochs[-1])}'
  from analysis import weights  # pylint: disable=g-import-not-at-top
  try:
    sd, _ = weights.state_dict(run)
  except ValueError:
    return None
  from probes import fourier  # pylint: disable=g-import-not-at-top
  p_hat = np.asarray(fourier.spectrum(np.asarray(sd['embedding.weight'], np.float32)))
  p = p_hat.shape[0]
  return np.arange(1, p // 2 + 1), p_hat[1:p // 2 + 1], 'final weights'


def fourier_figure(runs: list[Run]):
  """A stem plot per run of the embedding's power share per frequency (None if no run
  has fourier metrics or weights)."""
  spectra = {r.name: (fourier_spectrum(r), r) for r in runs}
  spectra = {k: v for k, v in spectra.items() if v[0] is not None}
  if not spectra:
    return None
  fig, axes = style.panels(len(spectra), ncols=2, size=(5.2, 2.8))
  for ax, (name, ((ks, power, where), r)) in zip(axes, spectra.items()):
    ax.vlines(ks, 0, power, color=style.colors()[0], lw=1.0)
    p = int(r.config.get('p') or 2 * ks.max() + 1)
    ax.axhline(10.0 / p, color='grey', ls='--', lw=0.8, label='significance 10/p')
    for k in ks[np.argsort(-power)[:5]]:
      ax.annotate(str(k), (k, power[ks == k][0]), fontsize=7, ha='center', va='bottom')
    ax.set(title=f'{name} ({where})', xlabel='frequency k', ylabel='power share')
    ax.legend(loc='upper right')
  return fig


SPARSE = 20  # series with at most this many points are drawn with markers
PER_FAMILY = 9  # panels in a probe family's generic section


def family_keys(name: str) -> list[str]:
  """The scalar keys of probe ``name`` the catalog lists (no per-parameter, list or dict
  keys), for the report's generic section of that family."""
  from probes import catalog  # pylint: disable=g-import-not-at-top
  return [f"{name}/{m.key}" for m in catalog.entries()[name].metrics
          if '<' not in m.key and '{' not in m.key and not m.direction.startswith('- (a')]


def _present(runs: list[Run], keys) -> list[str]:
  have = {k for r in runs for k in r.keys()}
  return [k for k in keys if k in have]


def probe_figure(runs: list[Run], keys: list[str]):
  """A panel per metric over epochs (log scale for positive curvature values)."""
  fig, axes = style.panels(len(keys), ncols=3, size=(4.2, 3.0))
  looks = _styles(runs)
  for ax, k in zip(axes, keys):
    for r in runs:
      e, v = r.series(k)
      if e.size:
        # Sparse series (curvature fires rarely) get markers: one point is still seen.
        ax.plot(e, v, color=looks[r.name][0], ls=looks[r.name][1], label=r.name,
                marker='o' if e.size <= SPARSE else None, ms=4)
    if k.startswith('curvature/') and 'ratio' in k:  # log scale: 1 = the stability edge
      ax.axhline(1.0, color='grey', ls='--', lw=0.8)
      ax.set_yscale('log')
    ax.set(title=labels.label(k, with_probe=False), xlabel='epoch')
  axes[0].legend()
  return fig


def final_values(runs: list[Run], keys: list[str]) -> list[dict]:
  return [{'run': r.name, **{labels.label(k, with_probe=False): _final(r, k) for k in keys}}
          for r in runs]


def _cell(v) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return '—'
  if isinstance(v, float):
    return f'{v:,.0f}' if abs(v) >= 1e4 else f'{v:.4g}'
  return html.escape(str(v))


def html_table(rows: list[dict]) -> str:
  if not rows:
    return ''
  cols = list(rows[0])
  head = ''.join(f'<th>{html.escape(c)}</th>' for c in cols)
  body = ''.join('<tr>' + ''.join(f'<td>{_cell(r.get(c))}</td>' for c in cols) + '</tr>'
                 for r in rows)
  return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(fig) -> str:
  data = base64.b64encode(style.png_bytes(fig)).decode('ascii')
  return f'<img alt="figure" src="data:image/png;base64,{data}">'


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;
max-width:1400px;color:#222;padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;
margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:.85em;
margin:.5em 0}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#666;font-size:.85em}dt{font-weight:600}dd{margin:0 0 .4em 1em}"""


def render(runs: list[Run], *, title='Ordered-learning report', sources=(),
           memorization=MEMORIZATION_ACC) -> str:
  """The report's HTML (figures drawn in the current style)."""
  parts = [f'<h1>{html.escape(title)}</h1>',
           f'<p class="note">{len(runs)} run(s) from {html.escape(", ".join(sources))}; '
           f'generated {datetime.datetime.now().isoformat(timespec="seconds")}.</p>',
           '<h2>Memorisation and generalisation</h2>',
           f'<p class="note">Memorised: first evaluated epoch with train accuracy &ge; '
           f'{memorization:g} %. Generalised: first with test accuracy &ge; the run\'s '
           'target_acc. Epochs are 0-based indices; "summary" means the run has no metric '
           'rows and the epoch comes from its summary.json.</p>',
           html_table(summary_rows(runs, memorization))]
  with_rows = [r for r in runs if r.rows]
  if with_rows:
    parts += ['<h2>Loss and accuracy</h2>', _img(curves_figure(with_rows, memorization))]
  fig = fourier_figure(runs)
  parts.append('<h2>Embedding Fourier spectrum at the end</h2>')
  parts.append(_img(fig) if fig is not None else
               '<p class="note">No run has fourier probe metrics or final weights.</p>')
  shown = []
  for heading, keys in (('Attention', ATTENTION), ('Curvature', CURVATURE),
                        ('Counterfactual split (content vs ordering part of the gradient)',
                         COUNTERFACTUAL), ('Fourier structure over training', FOURIER)):
    present = _present(with_rows, keys)
    if present:
      shown += present
      parts += [f'<h2>{heading}</h2>', '<p class="note">Values at the last probe epoch.</p>',
                html_table(final_values(with_rows, present)),
                _img(probe_figure(with_rows, present))]
  from probes import catalog  # pylint: disable=g-import-not-at-top
  documented = catalog.entries()  # the built-in probes and those registered with a doc
  for name in documented:  # every other probe family present: its own section
    present = [k for k in _present(with_rows, family_keys(name)) if k not in shown]
    present = [k for k in present if any(r.series(k)[0].size for r in with_rows)]
    if not present or any(k.startswith(f'{name}/') for k in shown):
      continue
    present = present[:PER_FAMILY]
    shown += present
    parts += [f'<h2>{html.escape(name)}: {html.escape(documented[name].summary)}</h2>',
              f'<p class="note">Fires {html.escape(documented[name].cadence)}; values '
              'at the run\'s last firing; `python main.py --probes_describe='
              f'{name}` lists every key.</p>',
              html_table(final_values(with_rows, present)),
              _img(probe_figure(with_rows, present))]
  defs = [(labels.label(k), labels.describe(k)) for k in
          (LOSS, TRAIN_ACC, TEST_ACC, *shown) if labels.describe(k)]
  parts.append('<h2>Definitions</h2><dl>' + ''.join(
      f'<dt>{html.escape(a)}</dt><dd>{html.escape(b)}</dd>' for a, b in defs) + '</dl>'
      '<p class="note">Every metric is defined in docs/probes.md and docs/outputs.md.</p>')
  return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
          f'<title>{html.escape(title)}</title><style>{CSS}</style></head><body>'
          + '\n'.join(parts) + '</body></html>\n')
