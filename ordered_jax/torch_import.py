"""The reference's ``.pt`` files as our parameters, optimiser moments and epoch, without torch.

Reading an archive safely (no code run, bounded memory) is ``torch_pickle``'s job; this
module knows what the reference puts in it (section 3.7 of the reference sheet):

* ``<strategy>_final.pt``: ``{model_state_dict, environment}`` (weights only);
* a checkpoint at HEAD: ``{step, components: {model, optimizer, scheduler}, rng_states,
  training_state, environment}``; at paper-data-v3 the same flat: ``{step,
  model_state_dict, optimizer_state_dict, scheduler_state_dict, rng_states, ...}``;
* a bare state dict ``{name: tensor}`` (also under ``state_dict`` or ``model``).

``contents`` finds the model, optimiser and scheduler state in any of them; ``adam_state``
reads torch's Adam/AdamW ``state_dict`` by parameter name (``continuation`` maps it onto
optax); ``load_params`` gives our parameter pytree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from absl import logging

from ordered_jax import torch_pickle

UnsafeFileError = torch_pickle.UnsafeFileError
load = torch_pickle.load
PREFIXES = ('_orig_mod.', 'module.')  # torch.compile / DataParallel wrappers


@dataclasses.dataclass(frozen=True)
class Contents:
  """What a reference ``.pt`` file holds, in the reference's names and layouts."""

  model: dict[str, np.ndarray]  # the state dict, wrapper prefixes stripped, file order
  kind: str                     # final weights | HEAD checkpoint | paper-data-v3 ... | ...
  step: int | None = None       # a checkpoint's epoch (written after that epoch)
  optimizer: dict | None = None
  scheduler: dict | None = None

  @property
  def next_epoch(self) -> int | None:
    """The epoch a continuation runs first: the scheduler's ``last_epoch`` (it counts the
    epochs stepped, so e + 1 after epoch e, and e for an emergency snapshot taken before
    epoch e), else step + 1."""
    last = (self.scheduler or {}).get('last_epoch')
    if isinstance(last, int) and not isinstance(last, bool) and last >= 0:
      return last
    return None if self.step is None else self.step + 1

  def describe(self) -> str:
    parts = ['weights']
    if self.optimizer is not None:
      parts.append('optimizer state')
    if self.step is not None:
      parts.append(f'epoch {self.step}')
    return f'{self.kind} ({" + ".join(parts)})'


def _tensors(obj) -> bool:
  return isinstance(obj, dict) and bool(obj) and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _step(obj: dict) -> int | None:
  step = obj.get('step')
  return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def contents(obj: Any) -> Contents:
  """The model (and, for checkpoints, optimiser, scheduler and epoch) in ``obj``."""
  if isinstance(obj, dict) and isinstance(obj.get('components'), dict):
    comp = obj['components']
    found = Contents(comp.get('model'), 'HEAD checkpoint', _step(obj), comp.get('optimizer'),
                     comp.get('scheduler'))
  elif isinstance(obj, dict) and 'optimizer_state_dict' in obj:
    found = Contents(obj.get('model_state_dict'), 'paper-data-v3 checkpoint', _step(obj),
                     obj.get('optimizer_state_dict'), obj.get('scheduler_state_dict'))
  elif isinstance(obj, dict) and 'model_state_dict' in obj:
    found = Contents(obj['model_state_dict'], 'final weights')
  elif isinstance(obj, dict) and not _tensors(obj) and any(
      _tensors(obj.get(k)) for k in ('state_dict', 'model')):
    found = Contents(next(obj[k] for k in ('state_dict', 'model') if _tensors(obj.get(k))),
                     'state dict')
  else:
    found = Contents(obj, 'bare state dict')
  if not _tensors(found.model):
    raise UnsafeFileError('no model state_dict found (expected model_state_dict, '
                          'components.model or a dict of tensors)')
  model = {}
  for name, value in found.model.items():
    for pre in PREFIXES:
      if name.startswith(pre):
        name = name[len(pre):]
    model[name] = value
  opt = found.optimizer if isinstance(found.optimizer, dict) else None
  sched = found.scheduler if isinstance(found.scheduler, dict) else None
  return dataclasses.replace(found, model=model, optimizer=opt, scheduler=sched)


def state_dict(obj: Any) -> dict[str, np.ndarray]:
  """The model ``state_dict`` inside any of the reference's envelopes, prefixes stripped."""
  return contents(obj).model


@dataclasses.dataclass(frozen=True)
class AdamState:
  """torch's Adam/AdamW ``state_dict`` by parameter name (the reference's one group)."""

  step: int                        # optimiser steps taken (torch's per-parameter ``step``)
  exp_avg: dict[str, np.ndarray]   # first moments, reference names and layouts
  exp_avg_sq: dict[str, np.ndarray]
  group: dict                      # lr, initial_lr, betas, eps, weight_decay, ...
  kind: str | None                 # 'adamw' | 'adam' | None: the file does not say


def adam_state(c: Contents) -> AdamState:
  """Reads ``c.optimizer`` (torch Adam/AdamW: ``state`` {index: {step, exp_avg,
  exp_avg_sq}}, ``param_groups`` [{..., params: [index]}]); index i is the i-th parameter
  of ``model.named_parameters()``, which for the reference's model (no buffers) is the
  state dict's order. Raises ValueError naming what does not fit."""
  opt = c.optimizer
  if opt is None:
    raise ValueError(f'the file is {c.describe()}: it has no optimizer state')
  state, groups = opt.get('state'), opt.get('param_groups')
  if not (isinstance(state, dict) and isinstance(groups, list) and groups
          and all(isinstance(g, dict) for g in groups)):
    raise ValueError('its optimizer state has no state/param_groups')
  if len(groups) != 1:
    raise ValueError(f'its optimizer has {len(groups)} parameter groups; the reference '
                     'uses one')
  group, names = groups[0], list(c.model)
  if group.get('params') != list(range(len(names))):
    raise ValueError(f'its optimizer holds parameters {str(group.get("params"))[:60]}, the '
                     f'model has {len(names)}')
  if any(isinstance(s, dict) and 'momentum_buffer' in s for s in state.values()):
    raise ValueError('its optimizer is SGD (momentum_buffer), not Adam/AdamW')
  if group.get('amsgrad') or group.get('maximize'):
    raise ValueError('its optimizer uses amsgrad or maximize, which ours does not')
  if not state:  # a fresh optimizer (an emergency file before epoch 0's first step)
    return AdamState(0, {k: np.zeros_like(x) for k, x in c.model.items()},
                     {k: np.zeros_like(x) for k, x in c.model.items()},
                     {k: val for k, val in group.items() if k != 'params'},
                     _kind(group))
  steps, m, v = set(), {}, {}
  for i, name in enumerate(names):
    s = state.get(i)
    if not (isinstance(s, dict) and {'step', 'exp_avg', 'exp_avg_sq'} <= set(s)):
      raise ValueError(f'its optimizer state for parameter {i} ({name}) is not Adam/AdamW\'s '
                       '(step, exp_avg, exp_avg_sq)')
    for key, out in (('exp_avg', m), ('exp_avg_sq', v)):
      x = s[key]
      if not isinstance(x, np.ndarray) or x.shape != c.model[name].shape:
        raise ValueError(f'its optimizer {key} of {name} has shape '
                         f'{getattr(x, "shape", None)}, the parameter {c.model[name].shape}')
      out[name] = x
    step = float(np.asarray(s['step'], np.float64))
    if not (step >= 0 and step == int(step)):
      raise ValueError(f'its optimizer step of {name} is {step}')
    steps.add(int(step))
  if len(steps) != 1:
    raise ValueError(f'its parameters have taken different numbers of steps {sorted(steps)}')
  return AdamState(steps.pop(), m, v, {k: val for k, val in group.items() if k != 'params'},
                   _kind(group))


def _kind(group: dict) -> str | None:
  dwd = group.get('decoupled_weight_decay')  # torch >= 2.8
  return None if dwd is None else ('adamw' if dwd else 'adam')


def model_config(sd: dict[str, np.ndarray], *, num_heads: int = 4, dropout: float = 0.1):
  """The ``models.ModelConfig`` of a reference state dict (heads cannot be read off it)."""
  from ordered_jax import models  # pylint: disable=g-import-not-at-top
  for key in ('embedding.weight', 'transformer.layers.0.linear1.weight'):
    if key not in sd:
      raise UnsafeFileError(f'state_dict has no {key!r}: not the reference transformer')
  vocab, d = sd['embedding.weight'].shape
  layers = len({k.split('.')[2] for k in sd if k.startswith('transformer.layers.')})
  return models.ModelConfig(vocab=int(vocab), embed_dim=int(d), num_heads=num_heads,
                            layers=layers,
                            mlp_dim=int(sd['transformer.layers.0.linear1.weight'].shape[0]),
                            dropout=dropout)


def check_shapes(sd: dict[str, np.ndarray], cfg) -> None:
  """Every parameter of ``cfg``'s model is in ``sd`` with the reference's shape (one line
  naming the first parameter that differs and both shapes)."""
  from ordered_jax import models  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  want = jax.eval_shape(lambda p: models.to_reference(p, cfg),
                        models.Model(cfg).abstract_params())
  layers = lambda names: len({n.split('.')[2] for n in names
                              if n.startswith('transformer.layers.')})
  if layers(sd) != layers(want):
    raise UnsafeFileError(f'transformer.layers has {layers(sd)} layers, the config needs '
                          f'{layers(want)}')
  for name, value in sd.items():  # the file's (the reference's) order
    if name in want and tuple(value.shape) != tuple(want[name].shape):
      raise UnsafeFileError(f'{name} has shape {tuple(value.shape)}, the config needs '
                            f'{tuple(want[name].shape)}')
  missing = [n for n in want if n not in sd]
  if missing:
    raise UnsafeFileError(f'state_dict has no {missing[0]!r}')
  extra = sorted(set(sd) - set(want))
  if extra:
    raise UnsafeFileError(f'state_dict has parameters the config lacks, e.g. {extra[0]!r}')


def to_params(tensors: dict[str, np.ndarray], cfg):
  """Reference-named arrays (weights, or optimiser moments: same names and layouts) as our
  float32 parameter pytree for ``cfg``."""
  from ordered_jax import models  # pylint: disable=g-import-not-at-top
  return models.from_reference({k: np.asarray(v, np.float32) for k, v in tensors.items()}, cfg)


def read(path: str, cfg=None, *, num_heads: int = 4):
  """(Contents, cfg) of a reference ``.pt`` file, its shapes checked against ``cfg`` (a
  ``models.ModelConfig``; without it the shape is read off the file with ``num_heads``)."""
  c = contents(load(path))
  cfg = cfg or model_config(c.model, num_heads=num_heads)
  check_shapes(c.model, cfg)
  return c, cfg


def load_params(path: str, cfg=None, *, num_heads: int = 4):
  """(params, cfg): a reference ``.pt`` file's weights as our parameter pytree (float32).

  ``cfg`` (a ``models.ModelConfig``) is checked against the file; without it the shape is
  read off the file (with ``num_heads``). Logs what the file holds and that only its weights
  are taken."""
  c, cfg = read(path, cfg, num_heads=num_heads)
  logging.info('%s: %s; taking its weights only', path, c.describe())
  return to_params(c.model, cfg), cfg
