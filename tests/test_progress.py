"""The progress-measures probe (probes/progress.py) against independent numpy computations:
an explicit p x p Fourier basis matrix, the full [p, p, p] logits table projected on the 2-D
basis cos/sin(w_k (a + b)), and a least-squares fit on the strip."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import models
from probes import progress
from tests.conftest import LAPACK_PRIMITIVES, epoch_info, jaxpr_primitives

CFG = models.ModelConfig(vocab=13, embed_dim=8, num_heads=2, layers=2, mlp_dim=16)
MODEL = models.Model(CFG)
P = CFG.vocab


def _tree(seed):
  return MODEL.init(jax.random.key(seed))


def _info(**kw):
  return epoch_info(**{'apply': MODEL.apply, **kw})


def _train_table(seed, n=40):
  rng = np.random.default_rng(seed)
  ab = rng.integers(0, P, size=(n, 2))
  return np.concatenate([ab, (ab.sum(1, keepdims=True)) % P], axis=1).astype(np.int32)


# -- numpy oracles ----------------------------------------------------------------------------

def _basis(p):
  """Explicit orthonormal rows: constant, then cos_1, sin_1, cos_2, sin_2, ... (odd p)."""
  x = np.arange(p)
  rows = [np.ones(p)]
  for k in range(1, (p - 1) // 2 + 1):
    rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
  f = np.stack(rows)
  return f / np.linalg.norm(f, axis=1, keepdims=True)


def _np_gini(x):
  x = np.sort(np.asarray(x, np.float64))
  n = len(x)
  return sum((2 * i - n - 1) * x[i - 1] for i in range(1, n + 1)) / (n * x.sum())


def _np_fourier(w, n_key):
  """(key frequencies, their power fraction, Gini of the component norms) of w [p, d]."""
  comp = _basis(w.shape[0]) @ np.asarray(w, np.float64)   # [p, d]
  norms = np.linalg.norm(comp[1:], axis=1)                  # the p - 1 non-constant ones
  power = norms[0::2] ** 2 + norms[1::2] ** 2               # frequency k = 1 .. (p-1)/2
  key = np.argsort(-power, kind='stable')[:n_key] + 1
  return key, power[key - 1].sum() / power.sum(), _np_gini(norms)


def _np_ce(logits, labels):
  z = logits - logits.max(-1, keepdims=True)
  lse = np.log(np.exp(z).sum(-1))
  return np.mean(lse - np.take_along_axis(z, labels[..., None], -1)[..., 0])


def _np_acc(logits, labels):
  return 100.0 * np.mean(np.argmax(logits, -1) == labels)


def _logits(params, ab):
  return np.asarray(MODEL.apply(params, jnp.asarray(ab, jnp.int32)), np.float64)


def _emb_dec(params):
  sd = models.to_reference(params, CFG)
  return np.asarray(sd['embedding.weight']), np.asarray(sd['decoder.weight'])


def _planted(seed):
  """Random params whose embedding is mostly frequencies 3 (strong) and 5."""
  params = _tree(seed)
  x = np.arange(P)[:, None]
  rng = np.random.default_rng(seed)
  emb = (3.0 * np.cos(2 * np.pi * 3 * x / P) * rng.normal(size=(1, 8))
         + 2.0 * np.sin(2 * np.pi * 5 * x / P) * rng.normal(size=(1, 8))
         + 0.1 * rng.normal(size=(P, 8)))
  return {**params, 'embedding': {'embedding': jnp.asarray(emb, jnp.float32)}}


# -- (a) spectrum, key frequencies, Ginis ---------------------------------------------------

@pytest.mark.parametrize('which', ['random', 'planted'])
def test_spectrum_key_frequencies_and_ginis_match_numpy(which):
  params = _tree(1) if which == 'random' else _planted(2)
  probe = progress.ProgressMeasures(CFG, n_key=4, strip_rows=3, chunk=32)
  _, m, present = probe.on_epoch(probe.init(params),
                                 _info(params=params, train_NxC=jnp.asarray(_train_table(0))))
  emb, dec = _emb_dec(params)
  key, frac, emb_gini = _np_fourier(emb, 4)
  _, _, dec_gini = _np_fourier(dec, 4)
  assert bool(present)
  assert np.asarray(m['key_freqs']).tolist() == key.tolist()
  assert float(m['key_freq_power_fraction']) == pytest.approx(frac, rel=1e-5)
  assert float(m['embedding_fourier_gini']) == pytest.approx(emb_gini, rel=1e-5)
  assert float(m['decoder_fourier_gini']) == pytest.approx(dec_gini, rel=1e-5)
  want_ssq = sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(params))
  assert float(m['total_sum_squared_weights']) == pytest.approx(want_ssq, rel=1e-5)
  if which == 'planted':
    assert key[:2].tolist() == [3, 5] and emb_gini > 0.5
  host = probe.to_host({k: np.asarray(v) for k, v in m.items()})
  assert host['key_freqs'] == key.tolist() and all(type(k) is int for k in host['key_freqs'])
  assert all(type(v) is float for k, v in host.items() if k != 'key_freqs')


def test_gini_and_components_for_even_vocab():
  """An even p: the Nyquist cos row (-1)^x / sqrt(p), no Nyquist sin, p - 1 entries."""
  p = 12
  w = np.random.default_rng(0).normal(size=(p, 5))
  x = np.arange(p)
  rows = [np.ones(p)]
  for k in range(1, p // 2):
    rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
  rows.append(np.cos(np.pi * x))
  f = np.stack(rows)
  f /= np.linalg.norm(f, axis=1, keepdims=True)
  norms = np.linalg.norm(f @ w, axis=1)[1:]
  got = progress.component_norms(jnp.asarray(w, jnp.float32))
  assert got.shape == (p - 1,)
  np.testing.assert_allclose(np.sort(np.asarray(got)), np.sort(norms), rtol=1e-5)
  assert float(progress.gini(got)) == pytest.approx(_np_gini(norms), rel=1e-5)


# -- (b) restricted and excluded loss on the full table --------------------------------------

def test_full_table_restricted_and_excluded_losses_match_brute_force():
  params = _planted(4)
  train = _train_table(5, n=40)
  train[::3, 2] = (train[::3, 2] + 1) % P  # pins the label column (c, not (a + b) mod p)
  # chunk 16 divides neither N = 169 nor train_pairs = 30 (the first 30 of 40): padding.
  probe = progress.ProgressMeasures(CFG, n_key=3, strip_rows=P, train_pairs=30, chunk=16)
  _, m, _ = probe.on_epoch({}, _info(params=params, train_NxC=jnp.asarray(train)))
  key = _np_fourier(_emb_dec(params)[0], 3)[0]

  a, b = np.meshgrid(np.arange(P), np.arange(P), indexing='ij')
  table = _logits(params, np.stack([a.ravel(), b.ravel()], 1)).reshape(P, P, P)  # [a, b, c]
  labels = (a + b) % P
  fourier = np.zeros_like(table)
  for k in key:
    for u in (np.cos(2 * np.pi * k * (a + b) / P), np.sin(2 * np.pi * k * (a + b) / P)):
      u = u / np.linalg.norm(u)
      fourier += u[:, :, None] * np.einsum('ab,abc->c', u, table)[None, None, :]
  restricted = fourier + table.mean(axis=(0, 1), keepdims=True)
  rows = train[:30]
  excluded = table[rows[:, 0], rows[:, 1]] - fourier[rows[:, 0], rows[:, 1]]

  assert np.asarray(m['key_freqs']).tolist() == key.tolist()
  assert float(m['restricted_loss']) == pytest.approx(_np_ce(restricted, labels), rel=1e-4)
  assert float(m['restricted_accuracy']) == pytest.approx(_np_acc(restricted, labels))
  assert float(m['excluded_loss']) == pytest.approx(_np_ce(excluded, rows[:, 2]), rel=1e-4)
  assert float(m['excluded_accuracy']) == pytest.approx(_np_acc(excluded, rows[:, 2]))
  assert float(m['strip_loss']) == pytest.approx(_np_ce(table, labels), rel=1e-4)
  assert float(m['strip_accuracy']) == pytest.approx(_np_acc(table, labels))
  # The restricted logits are not the logits: the measure is not trivially the plain loss.
  assert abs(float(m['restricted_loss']) - float(m['strip_loss'])) > 1e-3


# -- (c) a partial strip is exactly orthogonal -------------------------------------------------

def test_partial_strip_fit_equals_least_squares():
  params = _planted(6)
  probe = progress.ProgressMeasures(CFG, strip_rows=4, chunk=7)
  a_rows = probe.strip_a()
  assert a_rows.tolist() == [0, 3, 6, 9]  # floor(j p / 4)
  key = np.array([3, 5, 1])
  mean, alpha, beta, _, _, n = probe.strip_fit(MODEL.apply, params, jnp.asarray(key))

  a = np.repeat(a_rows, P)
  b = np.tile(np.arange(P), len(a_rows))
  s = (a + b) % P
  logits = _logits(params, np.stack([a, b], 1))                      # [N, p]
  w = 2 * np.pi * np.outer(s, key) / P
  design = np.concatenate([np.ones((len(s), 1)), np.cos(w), np.sin(w)], 1)
  coef = np.linalg.lstsq(design, logits, rcond=None)[0]              # [1 + 2K, p]
  assert n == len(s) == 4 * P
  np.testing.assert_allclose(np.asarray(mean), coef[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(alpha), coef[1:4], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(beta), coef[4:7], rtol=1e-4, atol=1e-5)

  # The restricted loss over this strip is that of the least-squares fit.
  probe5 = progress.ProgressMeasures(CFG, n_key=3, strip_rows=4, chunk=7)
  params_key = _np_fourier(_emb_dec(params)[0], 3)[0]
  _, m, _ = probe5.on_epoch({}, _info(params=params, train_NxC=jnp.asarray(_train_table(1))))
  w = 2 * np.pi * np.outer(s, params_key) / P
  design = np.concatenate([np.ones((len(s), 1)), np.cos(w), np.sin(w)], 1)
  fit = design @ np.linalg.lstsq(design, logits, rcond=None)[0]
  assert float(m['restricted_loss']) == pytest.approx(_np_ce(fit, s), rel=1e-4)
  assert float(m['strip_loss']) == pytest.approx(_np_ce(logits, s), rel=1e-4)


# -- (d) batched over runs under jit; paper-size shapes ----------------------------------------

def _largest(jaxpr) -> int:
  """The most elements of any value a jaxpr (sub-jaxprs included) produces."""
  big = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      big = max(big, math.prod(getattr(v.aval, 'shape', ())))
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          big = max(big, _largest(inner))
  return big


def test_jit_vmap_over_runs_matches_unbatched_without_lapack():
  probe = progress.ProgressMeasures(CFG, n_key=3, strip_rows=5, train_pairs=32, chunk=24)
  train = jnp.asarray(_train_table(2))
  runs = [_tree(7), _planted(8)]

  def metrics(params, train_NxC):
    return probe.on_epoch({}, _info(params=params, train_NxC=train_NxC))[1]

  stacked = jax.tree.map(lambda *x: jnp.stack(x), *runs)
  batched = jax.jit(jax.vmap(metrics, in_axes=(0, None)))(stacked, train)
  single = jax.jit(metrics)
  for r, params in enumerate(runs):
    want = single(params, train)
    for k, v in want.items():
      np.testing.assert_allclose(np.asarray(batched[k][r]), np.asarray(v), rtol=2e-5,
                                 atol=1e-6, err_msg=k)
  names = jaxpr_primitives(jax.make_jaxpr(jax.vmap(metrics, in_axes=(0, None)))(stacked, train).jaxpr)
  assert 'scan' in names and 'fft' in names
  assert not names & LAPACK_PRIMITIVES, names & LAPACK_PRIMITIVES


def test_paper_size_never_builds_a_p_by_p_table():
  """Traced (not run) at p = 9973, d = 128, 300K training pairs: every intermediate is at
  most chunk x p elements (a p x p logits table would be ~5x larger)."""
  cfg = models.ModelConfig(vocab=9973, embed_dim=128, num_heads=4, layers=2, mlp_dim=2048)
  model = models.Model(cfg)
  probe = progress.ProgressMeasures(cfg)
  params = model.abstract_params()
  train = jax.ShapeDtypeStruct((300_000, 3), jnp.int32)

  def metrics(params, train_NxC):
    return probe.on_epoch({}, _info(params=params, train_NxC=train_NxC, apply=model.apply))[1]

  jaxpr = jax.make_jaxpr(metrics)(params, train).jaxpr
  assert _largest(jaxpr) <= probe.chunk * cfg.vocab < cfg.vocab ** 2
