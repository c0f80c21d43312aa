"""Continue a reference run from its checkpoint: ``init_from=<checkpoint>.pt`` with
``init_optimizer=true`` (docs/analysis.md, "Continuing a reference run").

A reference ``checkpoint_<e>.pt`` is written after epoch e. Beside the weights it holds
torch's AdamW ``state_dict`` and the cosine scheduler's. They map onto our state
(``train.RunState``, optimiser from ``optim.make_optimizer``) as follows:

* ``state[i] = {step, exp_avg, exp_avg_sq}`` with i the position of the parameter in
  ``model.named_parameters()`` (= the state dict's order: pos_embedding, embedding.weight,
  transformer.layers.0.*, ..., decoder.*): ``exp_avg`` and ``exp_avg_sq`` become optax's
  ``ScaleByAdamState.mu`` and ``.nu`` of that parameter, in our layout
  (``models.from_reference``, as for the weights: same names, same transposes); ``step``
  becomes ``ScaleByAdamState.count`` (and the count of the ``inject_hyperparams`` state
  around it). torch's update (step += 1; m, v updated; bias corrections 1 - beta^step;
  p *= 1 - lr wd; p -= lr m^ / (sqrt(v^) + eps)) is optax's adamw from that state.
* ``param_groups[0]``: ``initial_lr`` is the peak rate (``lr``), ``lr`` the rate of the
  next epoch, ``betas``, ``eps``, ``weight_decay``; ``decoupled_weight_decay`` (torch >=
  2.8) tells AdamW (true) from Adam (false). They must equal the config's (below).
* the scheduler's ``last_epoch`` is the next epoch (e + 1): the run continues there, so
  the learning rate (the closed form of CosineAnnealingLR at that epoch, with ``T_max`` =
  ``epochs`` and ``eta_min`` = ``min_lr``), the fixed orders (by epoch parity) and the
  epoch numbers of every output carry on where the reference stopped.

Hyper-parameters in the file that differ from the config are refused, one line naming the
config field: the moments were accumulated under the file's betas, and a continuation is
only the reference's run continued if lr, weight decay and schedule are its own (change
them deliberately with ``interventions.lr`` or a fresh run). RNG states are not used (our
dropout and random orders come from JAX keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging

from ordered_jax import runs, torch_import

NAMES = {'adamw': 'AdamW', 'adam': 'Adam'}


@dataclasses.dataclass(frozen=True)
class Continuation:
  """What a continued run takes from the checkpoint beside its weights."""

  next_epoch: int  # the first epoch to train (e + 1 for checkpoint_e.pt)
  step: int        # optimiser steps the reference took
  mu: Any          # first moments, our parameter layout
  nu: Any          # second moments


def _same(a, b) -> bool:
  return isinstance(a, (int, float)) and math.isclose(float(a), float(b), rel_tol=1e-9,
                                                      abs_tol=0.0)


def _sibling_optimizer(path: str) -> str | None:
  """``optimizer`` of the run's experiment_config.json (``<run>/checkpoints/x.pt``)."""
  cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                     'experiment_config.json')
  try:
    with open(cfg) as f:
      value = json.load(f).get('optimizer')
  except (OSError, ValueError, AttributeError):
    return None
  return value if value in NAMES else None


def _check_hyper(config, adam: torch_import.AdamState, sched: dict | None, path: str):
  g = adam.group
  kind = adam.kind or _sibling_optimizer(path)
  if kind is None:
    logging.warning('%s does not say whether its optimizer was Adam or AdamW (torch < 2.8 '
                    'and no experiment_config.json beside it); taking config.optimizer=%s',
                    path, config.optimizer)
  elif kind != config.optimizer:
    raise runs.ConfigError('init_optimizer', f'the checkpoint holds {NAMES[kind]} state but '
                           f'config.optimizer is {config.optimizer!r}')
  betas = g.get('betas')
  if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
    raise runs.ConfigError('init_optimizer', 'the checkpoint\'s optimizer has no betas')
  base = (sched or {}).get('base_lrs')
  peak = g.get('initial_lr', base[0] if isinstance(base, list) and base else g.get('lr'))
  for field, file_value, name in (('adam_b1', betas[0], 'betas[0]'),
                                  ('adam_b2', betas[1], 'betas[1]'),
                                  ('adam_eps', g.get('eps'), 'eps')):
    if not _same(file_value, config[field]):
      raise runs.ConfigError(field, f'is {config[field]!r} but the checkpoint\'s optimizer '
                             f'has {name} = {file_value!r}; init_optimizer continues with '
                             'the file\'s moments, so use its value')
  for field, values, file_value, name in (
      ('lr', tuple(config.lrs) or (config.lr,), peak, 'initial_lr (the peak rate)'),
      ('weight_decay', tuple(config.weight_decays) or (config.weight_decay,),
       g.get('weight_decay'), 'weight_decay')):
    for v in values:
      if not _same(file_value, v):
        raise runs.ConfigError(field, f'{v!r} differs from the checkpoint\'s {name} = '
                               f'{file_value!r}; a continued run keeps the reference\'s '
                               'hyper-parameters (interventions.lr changes the rate)')
  if sched is None:
    logging.warning('%s has no scheduler state; the config\'s schedule continues', path)
  elif config.schedule != 'cosine':
    logging.warning('%s continues with schedule=%s instead of its cosine schedule', path,
                    config.schedule)
  else:
    if sched.get('T_max') != config.epochs:
      raise runs.ConfigError('epochs', f'is {config.epochs} but the checkpoint\'s cosine '
                             f'schedule runs T_max = {sched.get("T_max")!r} epochs; use its '
                             'value to continue its schedule')
    if not _same(sched.get('eta_min'), config.min_lr):
      raise runs.ConfigError('min_lr', f'is {config.min_lr!r} but the checkpoint\'s cosine '
                             f'schedule ends at eta_min = {sched.get("eta_min")!r}')


def load(config, path: str, model) -> tuple[Any, Continuation]:
  """(params, Continuation) of the reference checkpoint at ``path`` for ``config``'s
  ``model``; anything that does not fit is a one-line ``runs.ConfigError``."""
  if os.path.isdir(path):
    raise runs.ConfigError('init_optimizer', f'reads a reference checkpoint .pt file; {path!r} '
                           'is a folder (to continue one of our runs, use --resume)')
  try:
    c, cfg = torch_import.read(path, model.cfg)
  except Exception as e:  # pylint: disable=broad-except
    why = (str(e).splitlines() or [''])[0][:200]
    raise runs.ConfigError('init_from', f'cannot load weights from {path!r}: '
                           f'{type(e).__name__}: {why}') from None
  if c.optimizer is None or c.next_epoch is None:
    raise runs.ConfigError('init_optimizer', f'{path!r} is {c.describe()}: no optimizer state '
                           'and epoch to continue from; give a checkpoints/checkpoint_<epoch>.pt '
                           'or set init_optimizer=false')
  try:
    adam = torch_import.adam_state(c)
  except ValueError as e:
    raise runs.ConfigError('init_optimizer', f'cannot continue {path!r}: {e}') from None
  _check_hyper(config, adam, c.scheduler, path)
  nxt = c.next_epoch
  if nxt >= config.epochs:
    raise runs.ConfigError('epochs', f'is {config.epochs}: nothing is left to train after '
                           f'the checkpoint (it continues at epoch {nxt})')
  logging.info('%s: %s; continuing its %s state (step %d) at epoch %d', path, c.describe(),
               NAMES[config.optimizer], adam.step, nxt)
  cont = Continuation(nxt, adam.step, torch_import.to_params(adam.exp_avg, cfg),
                      torch_import.to_params(adam.exp_avg_sq, cfg))
  return torch_import.to_params(c.model, cfg), cont


def _is_adam(node) -> bool:
  return isinstance(node, optax.ScaleByAdamState)


def apply(state, cont: Continuation):
  """``state`` (a batched ``train.RunState``) with every run's Adam moments, step count and
  epoch taken from ``cont``."""
  found = []

  def fill(like, x):
    return jnp.broadcast_to(jnp.asarray(x, like.dtype), like.shape)

  def put(node):
    if not _is_adam(node):
      return node
    found.append(node)
    return node._replace(count=jnp.full_like(node.count, cont.step),
                         mu=jax.tree.map(fill, node.mu, cont.mu),
                         nu=jax.tree.map(fill, node.nu, cont.nu))

  opt = jax.tree.map(put, state.opt_state, is_leaf=_is_adam)
  if len(found) != 1:
    raise ValueError(f'the optimiser state has {len(found)} Adam states, expected one')
  if isinstance(opt, optax.InjectStatefulHyperparamsState):
    opt = opt._replace(count=jnp.full_like(opt.count, cont.step))
  return state.replace(opt_state=opt, epoch=jnp.full_like(state.epoch, cont.next_epoch))
