"""Optimisers and the per-epoch learning-rate schedule.

The learning rate and weight decay live in the optimiser state
(``optax.inject_hyperparams``) so runs batched under ``vmap`` may differ in them and
the epoch function can set the epoch's rate without recompiling.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ('adamw', 'adam')


def cosine_lr(epoch, lr, min_lr, epochs, xp=jnp):
  """LR used during ``epoch``: PyTorch CosineAnnealingLR(T_max=epochs, eta_min=min_lr)
  stepped once per epoch, in closed form. ``xp=np`` computes it on the host in float64.

  Written as (1 + cos(pi e / T)) / 2 = sin(pi (T - e) / (2 T))**2: the remaining fraction
  (T - e) / T is exact, so float32 keeps its relative precision to the end of the schedule,
  where the textbook form cancels.
  """
  t_max = max(epochs, 1)
  remaining = (t_max - xp.asarray(epoch, xp.float32 if xp is jnp else xp.float64)) / t_max
  return min_lr + (lr - min_lr) * xp.sin(xp.pi * remaining / 2.0) ** 2


def _adam_coupled_l2(learning_rate, weight_decay, b1, b2, eps):
  """torch.optim.Adam(weight_decay=wd): the decay is added to the gradient (L2), not decoupled."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(learning_rate))


def _adamw(learning_rate, weight_decay, b1, b2, eps):
  """torch.optim.AdamW: decoupled decay lr*wd*p on every parameter, eps outside the sqrt."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def make_optimizer(name: str, *, lr: float, weight_decay: float, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """An optimiser whose ``learning_rate`` and ``weight_decay`` are state (see ``set_hparams``)."""
  if name not in OPTIMIZERS:
    raise ValueError(f'optimizer must be one of {", ".join(OPTIMIZERS)}; got {name!r}')
  inner = _adamw if name == 'adamw' else _adam_coupled_l2
  return optax.inject_hyperparams(inner, static_args=('b1', 'b2', 'eps'))(
      learning_rate=lr, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)


def set_hparams(opt_state, **values):
  """A copy of an ``inject_hyperparams`` state with some hyperparameters replaced."""
  hp = dict(opt_state.hyperparams)
  for k, v in values.items():
    hp[k] = jnp.asarray(v, hp[k].dtype)
  return opt_state._replace(hyperparams=hp)
