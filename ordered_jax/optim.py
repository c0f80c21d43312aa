"""Optimisers, gradient filters, losses and learning-rate schedules (docs/optimization.md).

The learning rate and weight decay live in the optimiser state
(``optax.inject_hyperparams``) so runs batched under ``vmap`` may differ in them and
the epoch function can set the rate (per epoch, or per step inside the scan) without
recompiling. Everything an optimiser carries between steps, the Grokfast buffers
included, is part of that state, so checkpoints and ``--resume`` carry it.

The transformation applied to a batch gradient g (the gradient of the loss plus the L1
penalty) is, in order: Grokfast filter (``grokfast``), clipping to a global norm
(``grad_clip``), then the optimiser (coupled L2 decay, if any, is added inside it, after
the clipping, as PyTorch's ``optimizer.step()`` does after ``clip_grad_norm_``). With no
filter and no clipping the state is exactly the optimiser's own (as before those existed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ordered_jax import extensions

GROKFAST_KINDS = ('none', 'ema', 'ma')
LOSSES = ('ce', 'mse')
SCHEDULES = ('cosine', 'cosine_step', 'constant', 'step', 'exponential')


# -- learning-rate schedules ---------------------------------------------------------------

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


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The learning rate as a pure function of (peak rate, epoch, step within the epoch).

  ``kind`` (``SCHEDULES``): ``cosine`` per epoch (``cosine_lr``), ``cosine_step`` the same
  curve per optimiser step over ``epochs * steps_per_epoch`` steps, ``constant``, ``step``
  (x ``step_gamma`` every ``step_every`` epochs, PyTorch StepLR) and ``exponential``
  (x ``gamma`` every epoch, PyTorch ExponentialLR). ``warmup_epochs`` > 0 multiplies any of
  them by min(1, (k + 1) / (warmup_epochs * steps_per_epoch)), k = the global step.
  ``changes`` ((epoch, factor), ... ascending; ``config.interventions.lr``) multiply the
  result by the factor of the last change at or before the epoch (1 before the first).
  """

  kind: str = 'cosine'
  epochs: int = 1
  min_lr: float = 0.0
  warmup_epochs: int = 0
  step_every: int = 1000
  step_gamma: float = 0.1
  gamma: float = 0.999
  changes: tuple = ()

  @property
  def per_step(self) -> bool:
    """Whether the rate changes inside an epoch (then the scan sets it at every step)."""
    return self.kind == 'cosine_step' or self.warmup_epochs > 0

  def lr(self, peak, epoch, step, steps_per_epoch: int, xp=jnp):
    """The rate of step ``step`` (0-based) of epoch ``epoch``; ``xp=np``: host, float64."""
    f = xp.float32 if xp is jnp else xp.float64
    s = int(steps_per_epoch)
    if self.kind == 'cosine':
      out = cosine_lr(epoch, peak, self.min_lr, self.epochs, xp=xp)
    elif self.kind == 'cosine_step':
      total = max(self.epochs, 1) * s
      k = xp.asarray(epoch) * s + xp.asarray(step)
      remaining = xp.asarray(total - k, f) / total  # integer difference: exact
      out = self.min_lr + (peak - self.min_lr) * xp.sin(xp.pi * remaining / 2.0) ** 2
    elif self.kind == 'constant':
      out = peak * xp.ones((), f)
    elif self.kind == 'step':
      out = peak * xp.asarray(self.step_gamma, f) ** xp.asarray(
          xp.asarray(epoch) // self.step_every, f)
    elif self.kind == 'exponential':
      out = peak * xp.asarray(self.gamma, f) ** xp.asarray(epoch, f)
    else:
      raise ValueError(f'schedule must be one of {", ".join(SCHEDULES)}; got {self.kind!r}')
    if self.warmup_epochs > 0:
      k = xp.asarray(epoch) * s + xp.asarray(step)
      out = out * xp.minimum(xp.asarray(1.0, f),
                             xp.asarray(k + 1, f) / (self.warmup_epochs * s))
    if self.changes:
      factor = xp.ones((), f)
      for at, value in self.changes:
        factor = xp.where(xp.asarray(epoch) >= at, xp.asarray(value, f), factor)
      out = out * factor
    return out


# -- Grokfast (Lee et al. 2024), as optax transformations of the raw gradient ----------------

class GrokfastEmaState(NamedTuple):
  count: jax.Array  # int32: gradients seen (saturating)
  mu: Any           # the exponential moving average of the raw gradients


class GrokfastMaState(NamedTuple):
  count: jax.Array  # int32: gradients in the window, 0 .. window
  index: jax.Array  # int32: the slot the next gradient goes to
  window: Any       # per leaf [window, *shape]: the last ``window`` raw gradients (a ring)


def grokfast_ema(alpha: float = 0.98, lamb: float = 2.0) -> optax.GradientTransformation:
  """``gradfilter_ema``: mu <- alpha mu + (1 - alpha) g, g <- g + lamb mu.

  As the original, the first gradient initialises mu (then the same update runs, so the
  first step uses g + lamb (alpha g + (1 - alpha) g) = (1 + lamb) g); no bias correction."""

  def init(params):
    return GrokfastEmaState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params))

  def update(updates, state, params=None):
    del params
    first = state.count == 0
    mu = jax.tree.map(lambda m, g: jnp.where(first, g, m), state.mu, updates)
    mu = jax.tree.map(lambda m, g: m * alpha + g * (1 - alpha), mu, updates)
    out = jax.tree.map(lambda g, m: g + m * lamb, updates, mu)
    return out, GrokfastEmaState(optax.safe_increment(state.count), mu)

  return optax.GradientTransformation(init, update)


def grokfast_ma(window: int = 100, lamb: float = 5.0) -> optax.GradientTransformation:
  """``gradfilter_ma`` (filter_type='mean', warmup=True): keep the last ``window`` raw
  gradients (the current one included); once ``window`` of them have been seen,
  g <- g + lamb * mean(window); before that the gradient passes unchanged."""

  def init(params):
    return GrokfastMaState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32),
                           jax.tree.map(lambda p: jnp.zeros((window,) + p.shape, p.dtype),
                                        params))

  def update(updates, state, params=None):
    del params
    buf = jax.tree.map(lambda b, g: jax.lax.dynamic_update_index_in_dim(b, g, state.index, 0),
                       state.window, updates)
    count = jnp.minimum(state.count + 1, window)
    full = count == window
    out = jax.tree.map(lambda g, b: jnp.where(full, g + (jnp.sum(b, axis=0) / window) * lamb, g),
                       updates, buf)
    return out, GrokfastMaState(count, (state.index + 1) % window, buf)

  return optax.GradientTransformation(init, update)


# -- optimisers ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Hyper:
  """The optimiser hyperparameters that are part of the compiled program (static)."""

  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class OptimizerKind:
  """One optimiser: ``make(learning_rate, weight_decay, hyper) -> GradientTransformation``
  (``learning_rate`` and ``weight_decay`` may be traced: they live in the state)."""

  name: str
  make: Any
  description: str


REGISTRY: dict[str, OptimizerKind] = {}


def register_optimizer(name: str, make, description: str) -> OptimizerKind:
  """Declare an optimiser: ``--config.optimizer=<name>`` then uses it and ``--list`` shows
  its description (a new one is one file in ``ordered_jax/optimizer_kinds/``)."""
  if name in REGISTRY:
    raise ValueError(f'optimizer {name!r} is registered twice')
  REGISTRY[name] = kind = OptimizerKind(name, make, description)
  return kind


def names() -> tuple[str, ...]:
  """The registered optimisers (the built-ins first)."""
  return tuple(REGISTRY)


def _adam_coupled_l2(learning_rate, weight_decay, b1, b2, eps):
  """torch.optim.Adam(weight_decay=wd): the decay is added to the gradient (L2), not decoupled."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(learning_rate))


def _adamw(learning_rate, weight_decay, b1, b2, eps):
  """torch.optim.AdamW: decoupled decay lr*wd*p on every parameter, eps outside the sqrt."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _sgd(learning_rate, weight_decay, momentum):
  """torch.optim.SGD(momentum, dampening=0, nesterov=False, weight_decay=wd): coupled L2
  d = g + wd p, b <- momentum b + d (b = d at the first step), p <- p - lr b."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.trace(decay=momentum, nesterov=False),
                     optax.scale_by_learning_rate(learning_rate))


def _muon(learning_rate, weight_decay, b1, b2, eps):
  """optax.contrib.muon with its defaults (beta 0.95, Nesterov, 5 Newton-Schulz steps): every
  2-D parameter is a Muon matrix, the rest use its AdamW fallback (b1, b2, eps, Nesterov);
  both parts decay decoupled, lr * wd * p."""
  return optax.contrib.muon(learning_rate, eps=eps, weight_decay=weight_decay,
                            adam_b1=b1, adam_b2=b2, adam_weight_decay=weight_decay)


register_optimizer('adamw', lambda lr, wd, h: _adamw(lr, wd, h.b1, h.b2, h.eps),
                   "AdamW, decoupled weight decay (the paper's)")
register_optimizer('adam', lambda lr, wd, h: _adam_coupled_l2(lr, wd, h.b1, h.b2, h.eps),
                   'PyTorch Adam, coupled L2 weight decay')
register_optimizer('sgd', lambda lr, wd, h: _sgd(lr, wd, h.momentum),
                   'PyTorch SGD with heavy-ball momentum, coupled L2')
register_optimizer('muon', lambda lr, wd, h: _muon(lr, wd, h.b1, h.b2, h.eps),
                   'optax Muon on 2-D parameters, Adam on the rest')
OPTIMIZERS = names()  # the built-ins


def make_optimizer(name: str, *, lr: float, weight_decay: float, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, momentum: float = 0.9,
                   grokfast: str = 'none', grokfast_alpha: float = 0.98,
                   grokfast_lamb: float = 2.0, grokfast_window: int = 100,
                   grad_clip: float = 0.0) -> optax.GradientTransformation:
  """An optimiser whose ``learning_rate`` and ``weight_decay`` are state (see ``set_hparams``).

  ``grokfast`` (none | ema | ma) filters the raw gradient first (``grokfast_lamb`` is the
  filter's lambda), ``grad_clip`` > 0 then clips it to that global norm."""
  if name not in REGISTRY:
    raise ValueError(f'optimizer must be one of {", ".join(REGISTRY)}; got {name!r}')
  if grokfast not in GROKFAST_KINDS:
    raise ValueError(f'grokfast must be one of {", ".join(GROKFAST_KINDS)}; got {grokfast!r}')
  if name in ('adamw', 'adam') and grokfast == 'none' and not grad_clip:
    # Exactly the transformation (and state) these optimisers had before filters existed.
    inner = _adamw if name == 'adamw' else _adam_coupled_l2
    return optax.inject_hyperparams(inner, static_args=('b1', 'b2', 'eps'))(
        learning_rate=lr, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)
  hyper = Hyper(b1=b1, b2=b2, eps=eps, momentum=momentum)

  def inner(learning_rate, weight_decay):
    base = REGISTRY[name].make(learning_rate, weight_decay, hyper)
    pre = []
    if grokfast == 'ema':
      pre.append(grokfast_ema(grokfast_alpha, grokfast_lamb))
    elif grokfast == 'ma':
      pre.append(grokfast_ma(grokfast_window, grokfast_lamb))
    if grad_clip:
      pre.append(optax.clip_by_global_norm(grad_clip))
    return optax.chain(*pre, base) if pre else base

  return optax.inject_hyperparams(inner)(learning_rate=lr, weight_decay=weight_decay)


def set_hparams(opt_state, **values):
  """A copy of an ``inject_hyperparams`` state with some hyperparameters replaced."""
  hp = dict(opt_state.hyperparams)
  for k, v in values.items():
    hp[k] = jnp.asarray(v, hp[k].dtype)
  return opt_state._replace(hyperparams=hp)


# -- losses ----------------------------------------------------------------------------------

def centred_mse(logits_BxV, labels_B):
  """Tian's centred MSE per example: ||o - mean(o) - (e_y - 1/V)||^2 (summed over the V
  classes), = ||o~||^2 - 2 o~_y + 1 - 1/V with o~ the zero-mean logits. Shape [B]."""
  v = logits_BxV.shape[-1]
  centred = logits_BxV - jnp.mean(logits_BxV, axis=-1, keepdims=True)
  target = jax.nn.one_hot(labels_B, v, dtype=logits_BxV.dtype) - 1.0 / v
  return jnp.sum((centred - target) ** 2, axis=-1)


def l1_penalty(params, l1: float):
  """l1 * sum |theta| over every parameter. Its gradient is l1 * sign(theta), 0 at 0 (as
  PyTorch's abs; JAX's own abs has derivative 1 at 0)."""
  total = sum(jnp.sum(x * jax.lax.stop_gradient(jnp.sign(x))) for x in jax.tree.leaves(params))
  return l1 * total


extensions.import_all('ordered_jax.optimizer_kinds')  # optimizers beyond the built-ins
