"""The reference's ``fourier`` hook: Fourier structure of the embedding, decoder and neurons.

Weights only. With E the token embedding [p, d] and P[k] = mean over columns of |DFT_k|^2
(full complex DFT along the token axis), P_hat = P / (sum P + 1e-8) over all p bins:

* low_freq_power: sum of P_hat over k < max(p // 20, 10) (DC included)
* spectral_entropy: -sum P_hat log(P_hat + 1e-12) / log p
* peak_frequency, peak_power: argmax of P_hat over 1 .. p//2 - 1 (plus one), its power
* n_significant_freqs: bins (all p, DC and mirrors included) with P_hat > 10 / p
* stride_harmonic_power: sum of P_hat[m s], m = 1 .. min(10, p // s) - 1, s = floor(sqrt p)
* newly_acquired_freqs, freq_powers, n_tracked_freqs: bins 1 .. p//2 ever above 10 / p
  (the tracked set never shrinks; newly acquired is listed only when not empty)
* decoder_spectral_entropy, decoder_peak_frequency, decoder_n_significant_freqs: the same
  on the decoder weight [p, d]
* neuron_fourier_top1, neuron_fourier_entropy: per layer, R = W1 E^T [mlp, p], per-neuron
  power on bins 1 .. p//2 normalised to sum 1; mean over neurons of the max and of the
  entropy / log(p // 2); then the mean over layers.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from ordered_jax import models
from probes import common

SIGNIFICANCE = 10.0  # the reference's significance_multiplier


def spectrum(w_PxD):
  """Normalised power over the p DFT bins of the token axis: P_hat [p]."""
  power = jnp.mean(jnp.abs(jnp.fft.fft(w_PxD, axis=0)) ** 2, axis=1)
  return power / (jnp.sum(power) + 1e-8)


def _entropy(q, n):
  return -jnp.sum(q * jnp.log(q + 1e-12), axis=-1) / math.log(n)


@dataclasses.dataclass(frozen=True)
class Fourier:
  cfg: models.ModelConfig
  name: str = 'fourier'
  needs: frozenset = frozenset()
  weight_only: bool = True  # also probes untrained weights (epochs = 0)

  def init(self, params):
    del params
    return {'tracked': jnp.zeros((self.cfg.vocab // 2 + 1,), bool)}

  def _peak(self, ph):
    p = self.cfg.vocab
    k = 1 + jnp.argmax(ph[1:p // 2])
    return k, ph[k]

  def on_epoch(self, state, info):
    p = self.cfg.vocab
    view = common.reference_view(info.params, self.cfg)
    roles = models.roles(self.cfg)
    emb_PxD = models.operand_rows(view[roles.token_embedding], self.cfg)
    ph = spectrum(emb_PxD)
    tau = SIGNIFICANCE / p
    s = math.isqrt(p)
    peak, peak_power = self._peak(ph)
    half = ph[:p // 2 + 1]
    above = (half > tau).at[0].set(False)
    newly = above & ~state['tracked']
    tracked = state['tracked'] | above
    m = {'low_freq_power': jnp.sum(ph[:max(p // 20, 10)]),
         'spectral_entropy': _entropy(ph, p),
         'peak_frequency': peak, 'peak_power': peak_power,
         'n_significant_freqs': jnp.sum(ph > tau),
         'stride_harmonic_power': sum((ph[m * s] for m in range(1, min(10, p // s))),
                                      jnp.zeros(())),
         'n_tracked_freqs': jnp.sum(tracked),
         '_newly': newly, '_tracked': tracked, '_powers': half}
    dec = spectrum(models.operand_rows(view[roles.unembedding], self.cfg))
    m.update({'decoder_spectral_entropy': _entropy(dec, p),
              'decoder_peak_frequency': self._peak(dec)[0],
              'decoder_n_significant_freqs': jnp.sum(dec > tau)})
    top1, ent = [], []
    for i in range(self.cfg.layers):
      r_NxP = view[roles.mlp_in[i]] @ emb_PxD.T
      pw = jnp.abs(jnp.fft.fft(r_NxP, axis=1))[:, 1:p // 2 + 1] ** 2
      q = pw / (jnp.sum(pw, axis=1, keepdims=True) + 1e-8)
      top1.append(jnp.mean(jnp.max(q, axis=1)))
      ent.append(jnp.mean(_entropy(q, p // 2)))
    m['neuron_fourier_top1'] = jnp.mean(jnp.stack(top1))
    m['neuron_fourier_entropy'] = jnp.mean(jnp.stack(ent))
    return {'tracked': tracked}, m, jnp.array(True)

  def to_host(self, m: dict) -> dict:
    """The reference's list and dict values from the fixed-size arrays."""
    out = {k: v for k, v in m.items() if not k.startswith('_')}
    newly = np.flatnonzero(m['_newly']).tolist()
    if newly:
      out['newly_acquired_freqs'] = newly
    out['freq_powers'] = {str(k): round(float(m['_powers'][k]), 8)
                          for k in np.flatnonzero(m['_tracked'])}
    return out


# -- declarations (probes.registry) -----------------------------------------------------------

def _register():
  from probes import registry  # pylint: disable=g-import-not-at-top
  registry.register('fourier', lambda ctx, _: Fourier(ctx.model),
                    needs=registry.Needs(named=True,
                                         tasks=registry.CYCLIC_TASKS),
                    groups=('observers',), rank=50)


_register()
