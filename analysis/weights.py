"""Final weights of runs (ours and the reference's) and the weight figures: weight_compare
(per-parameter norms, normalised singular value spectra, cosine similarity between runs)
and weight_heatmap (every 2-D weight; for the token matrices also their SVD views).

Weights are handled as the reference's ``state_dict``: {name: numpy array} with PyTorch
names and layouts (``embedding.weight`` [p, d], ``transformer.layers.0.linear1.weight``
[mlp, d], ...), whichever framework wrote them.
"""

from __future__ import annotations

import glob
import os
import re

import matplotlib.ticker as ticker
import numpy as np

from analysis import style
from analysis.readers import InputError, Run

VIEWS = ('norms', 'svd', 'similarity')
TOKEN_MATRICES = ('embedding.weight', 'decoder.weight')  # a row per token (p rows)


def model_config(run: Run, sd: dict | None = None):
  """The run's ``models.ModelConfig`` from its experiment_config.json (heads default 4)."""
  from ordered_jax import models, torch_import  # pylint: disable=g-import-not-at-top
  c = run.config
  if sd is not None:
    return torch_import.model_config(sd, num_heads=int(c.get('num_heads', 4)))
  kind = c.get('model', 'reference') or 'reference'
  if kind != 'reference':  # the views name the reference transformer's matrices
    raise InputError(f'run {run.name}: model {kind!r}; the weight tools read the reference '
                     "transformer (model 'reference') only")
  need = ('p', 'embed_dim', 'num_heads', 'layers')
  if not all(k in c for k in need):
    raise InputError(f'run {run.name}: experiment_config.json lacks the model shape '
                     f'({", ".join(need)})')
  t = run_task(run)
  return models.ModelConfig(vocab=t.order, n_ops=t.n_ops, embed_dim=int(c['embed_dim']),
                            num_heads=int(c['num_heads']), layers=int(c['layers']),
                            mlp_dim=int(c.get('mlp_dim', 2048)),
                            dropout=float(c.get('dropout', 0.1)))


def run_task(run: Run):
  """The run's task (``config.task`` over ``config.p``; the reference's runs: add), whose
  order is the model's vocabulary and classes."""
  from ordered_jax import tasks  # pylint: disable=g-import-not-at-top
  spec = str(run.config.get('task') or 'add')
  try:
    return tasks.parse_task(spec, int(run.config.get('p', 9973)), sections=run.config)
  except ValueError as e:
    raise InputError(f'run {run.name}: {e}') from None


def reference_weights_file(run: Run) -> str | None:
  """The reference's ``<strategy>_final.pt``, another ``*_final.pt``, or the latest
  ``checkpoints/checkpoint_<epoch>.pt`` (or ``emergency_<epoch>.pt``) of a run folder
  (None if there is none)."""
  own = os.path.join(run.path, f'{run.strategy}_final.pt')
  if os.path.isfile(own):
    return own
  finals = sorted(glob.glob(os.path.join(run.path, '*_final.pt')))
  if finals:
    return finals[0]
  ckpts = glob.glob(os.path.join(run.path, 'checkpoints', '*.pt'))
  numbered = [(int(m.group(1)), p) for p in ckpts
              if (m := re.search(r'(?:checkpoint|emergency)_(\d+)\.pt$', p))]
  return max(numbered)[1] if numbered else None


def state_dict(run: Run):
  """(state_dict of numpy arrays, ModelConfig) of a run's final weights."""
  from ordered_jax import checkpoint, models, torch_import  # pylint: disable=g-import-not-at-top
  pt = reference_weights_file(run)
  if pt is not None:
    try:
      sd = torch_import.state_dict(torch_import.load(pt))
      cfg = model_config(run, sd)
      torch_import.check_shapes(sd, cfg)
      return sd, cfg
    except ValueError as e:
      raise InputError(f'{pt}: {e}') from None
  if os.path.isdir(os.path.join(run.path, 'final_params')) or os.path.isdir(
      os.path.join(run.path, 'checkpoints')):
    cfg = model_config(run)
    try:
      params = checkpoint.load_params(run.path, models.Model(cfg))
    except (FileNotFoundError, ValueError) as e:
      raise InputError(f'run {run.name}: cannot read its weights ({str(e)[:120]})') from None
    return {k: np.asarray(v) for k, v in models.to_reference(params, cfg).items()}, cfg
  raise InputError(f'run {run.name}: no final weights (final_params/, checkpoints/ or '
                   '*_final.pt)')


def matrices(sd: dict) -> list[str]:
  """Names of the 2-D weights (``pos_embedding``, embedding, projections, decoder)."""
  return [k for k, v in sd.items() if v.ndim == 2 and 'bias' not in k]


def short(name: str) -> str:
  return name.replace('transformer.layers.', 'L').replace('self_attn.', '').replace(
      '.weight', '')


def cosine(u: np.ndarray, v: np.ndarray) -> float:
  return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))


def norms(sds: dict[str, dict]) -> tuple[list[str], np.ndarray]:
  """(parameter names shared by all runs, Frobenius norms [params, runs])."""
  names = [n for n in matrices(next(iter(sds.values()))) if all(n in sd for sd in sds.values())]
  return names, np.array([[np.linalg.norm(sd[n]) for sd in sds.values()] for n in names])


def weight_compare(sds: dict[str, dict], *, analyses=VIEWS, top_layers=0, svd_rank=50):
  """{view: figure} for the requested views (similarity needs two runs or more)."""
  names, norm_PxR = norms(sds)
  if not names:
    raise InputError('the runs share no 2-D weights')
  order = np.argsort(-norm_PxR.max(axis=1), kind='stable')
  keep = sorted(order[:top_layers] if top_layers else order)
  names, norm_PxR = [names[i] for i in keep], norm_PxR[keep]
  runs = list(sds)
  colors = style.colors()
  figs = {}
  if 'norms' in analyses:
    fig, (ax,) = style.panels(1, size=(7.5, 0.9 + 0.32 * len(names) * max(1, len(runs) / 2)))
    height = 0.8 / len(runs)
    for j, r in enumerate(runs):
      ax.barh(np.arange(len(names)) + j * height, norm_PxR[:, j], height,
              color=colors[j % len(colors)], label=r)
    ax.set_yticks(np.arange(len(names)) + 0.4 - height / 2, [short(n) for n in names])
    ax.invert_yaxis()
    ax.set(xlabel='Frobenius norm', title='final weight norms')
    ax.legend()
    figs['norms'] = fig
  if 'svd' in analyses:
    fig, axes = style.panels(len(names), ncols=4, size=(3.3, 2.6))
    for ax, n in zip(axes, names):
      for j, r in enumerate(runs):
        s = np.linalg.svd(np.asarray(sds[r][n], np.float64), compute_uv=False)[:svd_rank]
        ax.semilogy(np.arange(1, s.size + 1), s / s[0], color=colors[j % len(colors)],
                    label=r)
      ax.set(title=short(n), xlabel='index i', ylabel='$s_i / s_1$')
      ax.yaxis.set_minor_formatter(ticker.NullFormatter())
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    axes[0].legend()
    figs['svd'] = fig
  if 'similarity' in analyses and len(runs) > 1:
    flat = {r: np.concatenate([np.ravel(sds[r][n]) for n in names]) for r in runs}
    sim = np.array([[cosine(flat[a], flat[b]) for b in runs] for a in runs])
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]]
    per = np.array([[cosine(np.ravel(sds[a][n]), np.ravel(sds[b][n])) for n in names]
                    for a, b in pairs])
    fig, (ax1, ax2) = style.panels(2, ncols=2, size=(5.0, 0.9 + max(3.0, 0.3 * len(names))))
    im = ax1.imshow(sim, cmap='RdBu_r', vmin=-1, vmax=1)
    ax1.set_xticks(range(len(runs)), runs, rotation=30, ha='right')
    ax1.set_yticks(range(len(runs)), runs)
    for i in range(len(runs)):
      for j in range(len(runs)):
        ax1.text(j, i, f'{sim[i, j]:.2f}', ha='center', va='center', fontsize=7)
    ax1.set_title('cosine similarity, all weights')
    ax1.grid(False)
    im = ax2.imshow(per.T, cmap='RdBu_r', vmin=-1, vmax=1, aspect='auto')
    ax2.set_xticks(range(len(pairs)), [f'{a} vs {b}' for a, b in pairs], rotation=30,
                   ha='right')
    ax2.set_yticks(range(len(names)), [short(n) for n in names])
    ax2.set_title('per weight')
    ax2.grid(False)
    fig.colorbar(im, ax=ax2, label='cosine')
    figs['similarity'] = fig
  return figs


def svd_views(w: np.ndarray, k: int):
  """(projection [k, rows] = (U S)^T of the top k components, row order by phase).

  The phase of row i is atan2 of its coordinates on the top two components: for a
  grokked embedding, whose tokens sit on circles, sorting by it lays the circle out."""
  u, s, _ = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
  proj = (u[:, :k] * s[:k]).T
  phase = np.arctan2(proj[1], proj[0]) if proj.shape[0] > 1 else proj[0]
  return proj, np.argsort(phase, kind='stable')


def weight_heatmap(sd: dict, *, svd_components=8, title=''):
  """Heatmaps of every 2-D weight; the token matrices (embedding, decoder: a row per
  token) also as their projection onto the top singular directions and with the tokens
  sorted by phase."""
  cells = [(n, v) for n in matrices(sd) for v in (
      ('weights', 'svd projection', 'phase-sorted') if n in TOKEN_MATRICES else ('weights',))]
  fig, axes = style.panels(len(cells), ncols=3, size=(4.2, 3.2))
  for ax, (n, view) in zip(axes, cells):
    w = np.asarray(sd[n], np.float64)
    if view == 'svd projection':
      img, _ = svd_views(w, svd_components)
      ylabel, xlabel = 'component', 'row (token)'
    elif view == 'phase-sorted':
      img = w[svd_views(w, 2)[1]]
      ylabel, xlabel = 'row (sorted by phase)', 'column'
    else:
      img, ylabel, xlabel = w, 'row', 'column'
    vmax = float(np.percentile(np.abs(img), 99.5)) or 1.0
    im = ax.imshow(img, cmap='RdBu_r', vmin=-vmax, vmax=vmax, aspect='auto',
                   interpolation='nearest')
    ax.set(title=f'{short(n)} {list(sd[n].shape)}' + ('' if view == 'weights'
                                                      else f' — {view}'),
           xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(False)
    fig.colorbar(im, ax=ax)
  if title:
    fig.suptitle(title)
  return fig
