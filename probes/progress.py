"""Nanda et al.'s progress measures for modular addition ("Progress measures for grokking via
mechanistic interpretability"), measured online at probe epochs.

Fourier basis. Over the tokens x = 0 .. p-1 the real orthonormal basis is the constant
1/sqrt(p) and sqrt(2/p) cos(w_k x), sqrt(2/p) sin(w_k x) with w_k = 2 pi k / p, k = 1 ..
p // 2 (for an even p the last frequency is the cos row (-1)^x / sqrt(p) alone). The
components of a [p, d] matrix come from one ``rfft`` along the token axis (never a p x p
matrix): cos_k = sqrt(2/p) Re X_k, sin_k = -sqrt(2/p) Im X_k.

* key_freqs: the n_key frequencies k >= 1 with the largest embedding power
  power_k = |cos_k|^2 + |sin_k|^2 (norms over d of W_E = embedding.weight [p, d]),
  descending; key_freq_power_fraction: their share of the non-constant power. They are
  re-chosen at every probe epoch (the paper fixes them from the final model).
* embedding_fourier_gini, decoder_fourier_gini: the Gini coefficient
  sum_i (2i - n - 1) x_i / (n sum x) (x ascending) of the n = p - 1 norms over d of the
  non-constant components (each cos and each sin its own entry) of W_E and of
  decoder.weight [p, d] along its output-token axis. This model has no direct
  neuron-to-logit map W_L (mean pooling and the decoder sit between the MLP and the
  logits), so the decoder, the map into the logits, plays W_L's role.
* restricted_loss / restricted_accuracy, strip_loss / strip_accuracy: on a "strip" of
  evaluation pairs, strip_rows values a_j = floor(j p / strip_rows) each with all p values
  of b (N = strip_rows p pairs, labels c = (a + b) mod p; strip_rows = p is the full table,
  the paper's definition). Each a meets every residue s = a + b mod p once, so 1,
  cos(w_k s) and sin(w_k s) are exactly orthogonal over the strip and the projection of the
  logits L [N, p] (eval mode) on them is the per-output mean mean_c plus
  alpha_kc = (2/N) sum_i cos(w_k s_i) L_ic and beta_kc likewise with sin (1/N at an even
  p's Nyquist frequency), accumulated over chunks. Restricted logits
  R = mean_c + sum_k cos(w_k s) alpha_k + sin(w_k s) beta_k over the key frequencies;
  restricted_loss is their mean cross-entropy against c, strip_loss that of L itself;
  accuracies in percent.
* excluded_loss / excluded_accuracy: on the first train_pairs rows of the training table,
  the cross-entropy of L - sum_k cos(w_k s) alpha_k + sin(w_k s) beta_k (alpha, beta from
  the strip).
* total_sum_squared_weights: the sum of squares of every parameter (biases included).

Cost: one forward pass over the strip plus one over train_pairs rows, chunked with
``lax.scan`` so memory is a few chunk x p float32 arrays (never a p x p logits table); the
restricted pass reuses alpha and beta (no model calls). Cross-entropies in float32 with
optax; no LAPACK (FFT, top_k, sort and matmuls only).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ordered_jax import models
from probes import common

HI = jax.lax.Precision.HIGHEST


def fourier_components(w_PxD):
  """(constant [D], cos [K, D], sin [K, D]), K = p // 2: coefficients of the token axis in
  the real orthonormal Fourier basis (for an even p the last sin row is zero)."""
  p = w_PxD.shape[0]
  x_KxD = jnp.fft.rfft(w_PxD.astype(jnp.float32), axis=0)
  const = x_KxD[0].real / math.sqrt(p)
  scale = np.full((p // 2, 1), math.sqrt(2.0 / p), np.float32)
  if p % 2 == 0:
    scale[-1] = 1.0 / math.sqrt(p)
  cos = scale * x_KxD[1:].real
  sin = -scale * x_KxD[1:].imag
  if p % 2 == 0:
    sin = sin.at[-1].set(0.0)
  return const, cos, sin


def component_norms(w_PxD):
  """The p - 1 norms over d of the non-constant basis components (cos rows, then sin)."""
  p = w_PxD.shape[0]
  _, cos, sin = fourier_components(w_PxD)
  sin_n = jnp.linalg.norm(sin, axis=1)
  if p % 2 == 0:
    sin_n = sin_n[:-1]  # the Nyquist frequency has no sin
  return jnp.concatenate([jnp.linalg.norm(cos, axis=1), sin_n])


def gini(x):
  """sum_i (2i - n - 1) x_i / (n sum x) over x sorted ascending (x >= 0)."""
  n = x.shape[0]
  xs = jnp.sort(x)
  i = jnp.arange(1, n + 1, dtype=jnp.float32)
  return jnp.sum((2 * i - n - 1) * xs) / (n * jnp.sum(xs) + 1e-12)


def waves(k_K, s_C, p: int):
  """cos(w_k s), sin(w_k s) [K, C] with the phase k s mod p reduced exactly in int32
  (k <= p / 2 and s < p, so exact for p < 65536)."""
  r = (k_K[:, None].astype(jnp.int32) * s_C[None, :].astype(jnp.int32)) % p
  ang = (2 * math.pi / p) * r.astype(jnp.float32)
  return jnp.cos(ang), jnp.sin(ang)


def _ce_and_correct(logits_CxP, labels_C, w_C):
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_CxP.astype(jnp.float32),
                                                       labels_C)
  hit = (jnp.argmax(logits_CxP, axis=-1) == labels_C).astype(jnp.float32)
  return jnp.sum(ce * w_C), jnp.sum(hit * w_C)


def _fourier_part(cos_KxC, sin_KxC, alpha_KxP, beta_KxP):
  return (jnp.matmul(cos_KxC.T, alpha_KxP, precision=HI)
          + jnp.matmul(sin_KxC.T, beta_KxP, precision=HI))


@dataclasses.dataclass(frozen=True)
class ProgressMeasures:
  """Nanda et al.'s progress measures (see the module docstring for the definitions)."""

  cfg: models.ModelConfig
  n_key: int = 5
  strip_rows: int = 8
  train_pairs: int = 8192
  chunk: int = 2048
  name: str = 'progress'
  cadence: str = 'snapshot'  # ours: at snapshots
  needs: frozenset = frozenset()
  weight_only: bool = True  # also probes untrained weights (epochs = 0)

  def init(self, params):
    del params
    return {}

  # -- the strip -------------------------------------------------------------------------

  def strip_a(self) -> np.ndarray:
    """The strip's rows: a_j = floor(j p / rows), j < rows = min(strip_rows, p)."""
    p = self.cfg.vocab
    rows = max(1, min(self.strip_rows, p))
    return np.array([j * p // rows for j in range(rows)], np.int32)

  def _strip_chunks(self):
    """(chunk size, number of chunks, pairs(ci) -> (a, b, valid)) over the strip."""
    p = self.cfg.vocab
    a_rows = jnp.asarray(self.strip_a())
    n = a_rows.shape[0] * p
    c = min(self.chunk, n)

    def pairs(ci):
      idx = ci * c + jnp.arange(c)
      valid = idx < n
      idx = jnp.minimum(idx, n - 1)
      return a_rows[idx // p], idx % p, valid

    return c, -(-n // c), pairs

  def strip_fit(self, apply, params, key_K):
    """One chunked forward pass over the strip: (mean_c [p], alpha [K, p], beta [K, p],
    strip CE sum, strip correct count, N)."""
    p = self.cfg.vocab
    c, nc, pairs = self._strip_chunks()
    n = self.strip_a().shape[0] * p
    nyquist = 2 * key_K == p
    coef_K = jnp.where(nyquist, 1.0, 2.0) / n

    def body(carry, ci):
      total, a_acc, b_acc, loss, hits = carry
      a, b, valid = pairs(ci)
      w = valid.astype(jnp.float32)
      logits = apply(params, jnp.stack([a, b], axis=1)).astype(jnp.float32)
      s = (a + b) % p
      cos, sin = waves(key_K, s, p)
      lw = logits * w[:, None]
      dl, dh = _ce_and_correct(logits, s, w)
      return (total + jnp.sum(lw, axis=0), a_acc + jnp.matmul(cos, lw, precision=HI),
              b_acc + jnp.matmul(sin, lw, precision=HI), loss + dl, hits + dh), None

    k = key_K.shape[0]
    zeros = (jnp.zeros((p,)), jnp.zeros((k, p)), jnp.zeros((k, p)), jnp.zeros(()),
             jnp.zeros(()))
    (total, a_acc, b_acc, loss, hits), _ = jax.lax.scan(body, zeros, jnp.arange(nc))
    return total / n, coef_K[:, None] * a_acc, coef_K[:, None] * b_acc, loss, hits, n

  def _restricted(self, mean_P, alpha_KxP, beta_KxP, key_K):
    p = self.cfg.vocab
    _, nc, pairs = self._strip_chunks()

    def body(carry, ci):
      a, b, valid = pairs(ci)
      s = (a + b) % p
      cos, sin = waves(key_K, s, p)
      r = mean_P[None, :] + _fourier_part(cos, sin, alpha_KxP, beta_KxP)
      dl, dh = _ce_and_correct(r, s, valid.astype(jnp.float32))
      return (carry[0] + dl, carry[1] + dh), None

    (loss, hits), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), jnp.arange(nc))
    return loss, hits

  def _excluded(self, apply, params, train_NxC, alpha_KxP, beta_KxP, key_K):
    p = self.cfg.vocab
    m = min(self.train_pairs, train_NxC.shape[0])
    rows = train_NxC[:m].astype(jnp.int32)
    c = min(self.chunk, m)
    nc = -(-m // c)

    def body(carry, ci):
      idx = ci * c + jnp.arange(c)
      valid = idx < m
      abc = rows[jnp.minimum(idx, m - 1)]
      s = (abc[:, 0] + abc[:, 1]) % p
      logits = apply(params, abc[:, :2]).astype(jnp.float32)
      cos, sin = waves(key_K, s, p)
      x = logits - _fourier_part(cos, sin, alpha_KxP, beta_KxP)
      dl, dh = _ce_and_correct(x, abc[:, 2], valid.astype(jnp.float32))
      return (carry[0] + dl, carry[1] + dh), None

    (loss, hits), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), jnp.arange(nc))
    return loss / m, 100.0 * hits / m

  # -- the protocol ----------------------------------------------------------------------

  def key_frequencies(self, w_PxD):
    """(key frequencies [n] descending by power, their share of the non-constant power)."""
    p = self.cfg.vocab
    _, cos, sin = fourier_components(w_PxD)
    power_K = jnp.sum(cos ** 2, axis=1) + jnp.sum(sin ** 2, axis=1)
    top, idx = jax.lax.top_k(power_K, max(1, min(self.n_key, p // 2)))
    return (idx + 1).astype(jnp.int32), jnp.sum(top) / (jnp.sum(power_K) + 1e-12)

  def on_epoch(self, state, info):
    view = common.reference_view(info.params, self.cfg)
    emb, dec = view['embedding.weight'], view['decoder.weight']
    key_K, frac = self.key_frequencies(emb)
    mean_P, alpha, beta, strip_loss, strip_hits, n = self.strip_fit(info.apply, info.params,
                                                                     key_K)
    r_loss, r_hits = self._restricted(mean_P, alpha, beta, key_K)
    x_loss, x_acc = self._excluded(info.apply, info.params, info.train_NxC, alpha, beta,
                                   key_K)
    m = {'key_freqs': key_K, 'key_freq_power_fraction': frac,
         'embedding_fourier_gini': gini(component_norms(emb)),
         'decoder_fourier_gini': gini(component_norms(dec)),
         'restricted_loss': r_loss / n, 'restricted_accuracy': 100.0 * r_hits / n,
         'excluded_loss': x_loss, 'excluded_accuracy': x_acc,
         'strip_loss': strip_loss / n, 'strip_accuracy': 100.0 * strip_hits / n,
         'total_sum_squared_weights': sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                                          for x in jax.tree.leaves(info.params))}
    return state, m, jnp.array(True)

  def to_host(self, m: dict) -> dict:
    """key_freqs as a list of ints, scalars as floats."""
    out = {k: float(v) if np.ndim(v) == 0 else v for k, v in m.items()}
    out['key_freqs'] = [int(k) for k in np.asarray(m['key_freqs']).ravel()]
    return out


# -- declarations (probes.registry) -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
  """config.probes.progress: the ``n_key`` key frequencies, ``strip_rows`` rows of the
  restricted/excluded strips, ``train_pairs`` training pairs for the losses."""

  n_key: int = 5
  strip_rows: int = 8
  train_pairs: int = 8192

  def __post_init__(self):
    from probes import registry  # pylint: disable=g-import-not-at-top
    for field in ('n_key', 'strip_rows', 'train_pairs'):
      registry.check_int(getattr(self, field), field, 1)


def _check(o: Options, ctx) -> None:
  """The bounds that depend on p (only when the probe runs)."""
  from probes import registry  # pylint: disable=g-import-not-at-top
  p = ctx.config.p
  for field, hi in (('n_key', (p - 1) // 2), ('strip_rows', p)):
    registry.check_int(getattr(o, field), field, 1, hi)  # named probes.progress.<field>


def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  registry.register(
      'progress', lambda ctx, o: ProgressMeasures(
          ctx.model, n_key=o.n_key, strip_rows=o.strip_rows, train_pairs=o.train_pairs),
      needs=registry.Needs(models=('reference',), tasks=('add',)),
      groups=('full',), rank=310, options=Options, check=_check)


_register()
