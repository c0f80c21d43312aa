"""activation_probe: the reference transformer's activations over a sweep of a at fixed b.

``forward`` is the eval-mode forward pass (pre-LN, fused QKV, ReLU MLP, mean over the two
positions, untied decoder) in numpy on a reference ``state_dict``, recording every
intermediate the reference's tool shows. ``tests/test_analysis_tools.py`` checks its logits
against ``ordered_jax.models``.
"""

from __future__ import annotations

import numpy as np

from analysis import style
from analysis.readers import InputError

POSITIONS = ('0', '1', 'mean')


def _layer_norm(x, w, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def forward(sd: dict, x_Nx2: np.ndarray, num_heads: int) -> dict[str, np.ndarray]:
  """{name: activation} in forward order: embedding [N, 2, d]; per layer l
  ``L{l} attn-norm``, ``L{l} post-attn``, ``L{l} ffn-norm`` [N, 2, d], ``L{l} ffn-up``
  [N, 2, mlp], ``L{l} post-ffn`` [N, 2, d]; ``pooled`` [N, d]; ``logits`` [N, p]."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  h = sd['embedding.weight'][x_Nx2] + sd['pos_embedding']
  n, t, d = h.shape
  k = d // num_heads
  out = {'embedding': h}
  layers = sorted({int(name.split('.')[2]) for name in sd
                   if name.startswith('transformer.layers.')})
  for i in layers:
    w = lambda s: sd[f'transformer.layers.{i}.{s}']  # noqa: E731
    z = _layer_norm(h, w('norm1.weight'), w('norm1.bias'))
    q, kk, v = np.split(z @ w('self_attn.in_proj_weight').T + w('self_attn.in_proj_bias'), 3,
                        axis=-1)
    heads = lambda a: a.reshape(n, t, num_heads, k)  # noqa: E731
    s = np.einsum('nqhk,nthk->nhqt', heads(q), heads(kk)) / np.sqrt(k)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    att = np.einsum('nhqt,nthk->nqhk', s, heads(v)).reshape(n, t, d)
    h = h + att @ w('self_attn.out_proj.weight').T + w('self_attn.out_proj.bias')
    out[f'L{i} attn-norm'], out[f'L{i} post-attn'] = z, h
    z = _layer_norm(h, w('norm2.weight'), w('norm2.bias'))
    up = np.maximum(z @ w('linear1.weight').T + w('linear1.bias'), 0.0)
    h = h + up @ w('linear2.weight').T + w('linear2.bias')
    out[f'L{i} ffn-norm'], out[f'L{i} ffn-up'], out[f'L{i} post-ffn'] = z, up, h
  out['pooled'] = h.mean(axis=1)
  out['logits'] = out['pooled'] @ sd['decoder.weight'].T + sd['decoder.bias']
  return out


def sweep(p: int, b: int, subsample: int = 0) -> np.ndarray:
  """int [N, 2] inputs (a, b) for a = 0..p-1 (or ``subsample`` evenly spaced values)."""
  if not 0 <= b < p:
    raise InputError(f'--b must be in [0, {p}); got {b}')
  a = np.arange(p) if not subsample or subsample >= p else np.unique(
      np.linspace(0, p - 1, subsample).round().astype(int))
  return np.stack([a, np.full_like(a, b)], axis=1)


def activation_probe(sd: dict, num_heads: int, *, b: int, position='mean', skip_logits=False,
                     subsample=0, title='', labeller=None, task='add'):
  """Heatmaps (a on the vertical axis, units on the horizontal) of every activation; on
  the logits, dots at each pair's label (``labeller`` of the operands [N, 2]: the run's
  task, named ``task``; default (a + b) mod p)."""
  if position not in POSITIONS:
    raise InputError(f'--position must be one of {", ".join(POSITIONS)}; got {position!r}')
  p = sd['embedding.weight'].shape[0]
  x = sweep(p, b, subsample)
  acts = forward(sd, x, num_heads)
  if skip_logits:
    acts.pop('logits')
  fig, axes = style.panels(len(acts), ncols=4, size=(3.4, 3.0))
  for ax, (name, act) in zip(axes, acts.items()):
    if act.ndim == 3:
      act = act.mean(axis=1) if position == 'mean' else act[:, int(position)]
    vmax = float(np.percentile(np.abs(act), 99.5)) or 1.0
    im = ax.imshow(act, aspect='auto', interpolation='nearest', cmap='RdBu_r', vmin=-vmax,
                   vmax=vmax, extent=(-0.5, act.shape[1] - 0.5, x[-1, 0] + 0.5, x[0, 0] - 0.5))
    ax.set(title=f'{name} [{act.shape[1]}]', ylabel='a',
           xlabel=f'class (dots: the label, task {task})' if name == 'logits' else 'unit')
    if name == 'logits':
      y = labeller(x) if labeller is not None else (x[:, 0] + b) % p
      ax.plot(np.asarray(y), x[:, 0], '.', color='black', ms=2)
    ax.grid(False)
    fig.colorbar(im, ax=ax)
  fig.suptitle(title or f'activations for (a, b = {b}), position {position}')
  return fig
