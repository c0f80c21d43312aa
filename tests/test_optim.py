"""Schedule and optimisers against closed forms and numpy transcriptions of PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ordered_jax import optim


def test_cosine_matches_pytorch_recursion_and_the_sheet():
  lr, min_lr, t_max = 1e-3, 5e-7, 5000
  # PyTorch's CosineAnnealingLR recursive form, stepped once per epoch.
  eta, torch_lrs = lr, [lr]
  for e in range(1, t_max):
    if (e - 1 - t_max) % (2 * t_max) == 0:
      eta = eta + (lr - min_lr) * (1 - math.cos(math.pi / t_max)) / 2
    else:
      eta = ((1 + math.cos(math.pi * e / t_max)) / (1 + math.cos(math.pi * (e - 1) / t_max)) *
             (eta - min_lr) + min_lr)
    torch_lrs.append(eta)
  ours = optim.cosine_lr(np.arange(t_max), lr, min_lr, t_max, xp=np)
  np.testing.assert_allclose(ours, torch_lrs, rtol=1e-9)
  device = np.asarray(optim.cosine_lr(jnp.arange(t_max), lr, min_lr, t_max))
  np.testing.assert_allclose(device, torch_lrs, rtol=1e-6, atol=0)
  for epoch, want in ((0, 1.0e-3), (487, 9.768e-4), (659, 9.578e-4), (4999, 5.001e-7)):
    assert ours[epoch] == pytest.approx(want, rel=2e-4)


def _numpy_adam(params, grads_seq, lr, wd, decoupled, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.AdamW (decoupled) / Adam with weight_decay (coupled L2), in float64."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v_ = {k: np.zeros_like(v) for k, v in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    for k in p:
      g = grads[k].astype(np.float64)
      if decoupled:
        p[k] = p[k] * (1 - lr * wd)
      else:
        g = g + wd * p[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      v_[k] = b2 * v_[k] + (1 - b2) * g * g
      mhat, vhat = m[k] / (1 - b1**t), v_[k] / (1 - b2**t)
      p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + eps)
  return p


@pytest.mark.parametrize('name', ('adamw', 'adam'))  # sgd, muon: test_optim_variants.py
def test_steps_match_numpy_pytorch_transcription(name):
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(4, 3)).astype(np.float32),
            'b': rng.normal(size=(3,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
               for _ in range(3)]
  tx = optim.make_optimizer(name, lr=0.5, weight_decay=0.0)
  state = optim.set_hparams(tx.init(params), learning_rate=1e-2, weight_decay=0.1)
  p = jax.tree.map(jnp.asarray, params)
  for g in grads_seq:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, updates)
  want = _numpy_adam(params, grads_seq, 1e-2, 0.1, decoupled=name == 'adamw')
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_is_rejected():
  with pytest.raises(ValueError, match='optimizer'):
    optim.make_optimizer('sgdd', lr=1e-3, weight_decay=0.0)
