"""Writes tests/data/tian_complex.npz: Tian's complex-weight network trained a few steps by
PyTorch, the oracle for tests/test_tian_options.py's complex tests.

Run with a CPU torch (never a dependency of ordered-jax; see docs/benchmarks.md for the
separate virtual environment):

  /path/to/torchenv/bin/python tests/make_complex_fixture.py

The network and loss follow ``ModularAdditionNN`` and ``compute_loss`` of
yuandong-tian/understanding (ssl/real-dataset/cogo/modular_addition_simple2.py) with
``use_complex_weights``: complex W [H, 2M] and V [M, H] (torch layout), the one-hot input
cast to complex, x -> (W x)^2 -> V, the centred MSE on the real part of the output; with
``set_weight_reg`` V is first overwritten by the complex ridge solution of the batch. The
optimisers are torch's own, on the complex parameters: Adam with coupled weight decay, SGD
with momentum 0.9, as Tian builds them. Inputs (initial parts, data) are drawn here with
numpy and stored with the results.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F

M, H, STEPS, LR, WD, LAM = 5, 8, 4, 0.05, 1e-3, 0.1


def _loss(out, labels):
  o = out.real
  o0 = o - o.mean(dim=1, keepdim=True)
  return (o0.pow(2).sum(dim=1).mean() - 2 * o0.gather(1, labels[:, None]).mean()
          + 1 - 1.0 / o.shape[1])


def _train(w0, v0, x, y, optimizer, ridge):
  w = torch.nn.Parameter(torch.tensor(w0))
  v = torch.nn.Parameter(torch.tensor(v0))
  if optimizer == 'adam':
    opt = torch.optim.Adam([w, v], lr=LR, weight_decay=WD)
  else:
    opt = torch.optim.SGD([w, v], lr=LR, momentum=0.9, weight_decay=WD)
  e = torch.eye(M)
  inp = torch.cat([e[x[:, 0]], e[x[:, 1]]], dim=1).to(torch.cfloat)
  target = F.one_hot(y, M) - 1.0 / M
  losses = []
  for _ in range(STEPS):
    opt.zero_grad()
    h = (inp @ w.T).pow(2)
    if ridge:
      with torch.no_grad():
        u, s, vt = torch.linalg.svd(h, full_matrices=False)
        reg = s / (s.pow(2) + LAM)
        v[:] = (vt.conj().t() @ ((u.conj().t() @ target.to(torch.cfloat)) * reg[:, None])).t()
    loss = _loss(h @ v.T, y)
    loss.backward()
    opt.step()
    losses.append(loss.item())
  return w.detach().numpy(), v.detach().numpy(), np.array(losses)


def main():
  rng = np.random.default_rng(0)
  pairs = np.array([(a, b) for a in range(M) for b in range(M)])
  x = torch.tensor(pairs)
  y = torch.tensor((pairs[:, 0] + pairs[:, 1]) % M)
  w0 = (rng.uniform(-1, 1, (H, 2 * M)) + 0.5j * rng.uniform(-1, 1, (H, 2 * M))) / np.sqrt(2 * M)
  v0 = (rng.uniform(-1, 1, (M, H)) + 0.5j * rng.uniform(-1, 1, (M, H))) / np.sqrt(H)
  w0, v0 = w0.astype(np.complex64), v0.astype(np.complex64)
  out = dict(w0=w0, v0=v0, pairs=pairs, lr=LR, wd=WD, lam=LAM, steps=STEPS,
             torch_version=str(torch.__version__))
  for name, opt, ridge in (('adam', 'adam', False), ('sgd', 'sgd', False),
                           ('ridge', 'adam', True)):
    w, v, losses = _train(w0, v0, x, y, opt, ridge)
    out.update({f'{name}_w': w, f'{name}_v': v, f'{name}_losses': losses})
  path = os.path.join(os.path.dirname(__file__), 'data', 'tian_complex.npz')
  np.savez(path, **out)
  print('wrote', path)


if __name__ == '__main__':
  main()
