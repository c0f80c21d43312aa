"""Readable axis labels and one-line descriptions of metric keys (from docs/probes.md)."""

from __future__ import annotations

# key -> (label, description). Descriptions condense the definitions in docs/probes.md.
METRICS = {
    'training_metrics/loss': ('training loss', 'mean over the epoch of the batch-mean '
                              'cross-entropy'),
    'training_metrics/perplexity': ('perplexity', 'exp(training loss)'),
    'training_metrics/learning_rate': ('learning rate', "the next epoch's learning rate"),
    'training_metrics/training_accuracy': ('train accuracy (%)', 'share of training pairs '
                                           'predicted right, eval mode'),
    'training_metrics/validation_accuracy': ('test accuracy (%)', 'share of test pairs '
                                             'predicted right, eval mode'),
    'fourier/spectral_entropy': ('embedding spectral entropy', 'entropy of the embedding '
                                 'power over the p DFT bins / log p (low = few frequencies)'),
    'fourier/low_freq_power': ('low-frequency power', 'share of embedding power in the '
                               'lowest 5% of bins'),
    'fourier/peak_frequency': ('peak frequency', 'strongest embedding frequency (DC '
                               'excluded)'),
    'fourier/peak_power': ('peak power', 'share of embedding power at the peak frequency'),
    'fourier/n_significant_freqs': ('significant frequencies', 'bins above 10/p of the '
                                     'embedding power (mirrors counted)'),
    'fourier/stride_harmonic_power': ('stride harmonic power', 'embedding power at '
                                      'multiples of floor(sqrt p)'),
    'fourier/n_tracked_freqs': ('tracked frequencies', 'frequencies ever significant'),
    'fourier/freq_powers': ('power share', 'embedding power of every tracked frequency'),
    'fourier/neuron_fourier_top1': ('neuron top-1 Fourier share', 'mean over MLP neurons '
                                    'of their strongest frequency share'),
    'attention/attn_entropy': ('attention entropy', 'attention row entropy / log 2 on the '
                               "epoch's first batch (1 = uniform over the two tokens)"),
    'attention/attn_variance': ('attention variance', 'variance of the attention '
                                'probabilities across the batch'),
    'attention/sv_concentration': ('QKV s1 / sum s', 'top singular value share of W_Q, '
                                   'W_K, W_V'),
    'attention/effective_rank': ('QKV effective rank', '(sum s)^2 / sum s^2 over the top '
                                 '20 singular values of W_Q, W_K, W_V'),
    'attention/top5_explained_var': ('QKV top-5 variance', 'share of sum s^2 in the top 5 '
                                     'singular values'),
    'curvature/lambda_max': ('Hessian lambda_max', 'top Hessian eigenvalue of the loss on '
                             'a fixed probe batch (Lanczos)'),
    'curvature/trace': ('Hessian trace', 'Hutchinson estimate of the Hessian trace'),
    'curvature/edge_of_stability_ratio': ('lambda_max lr / 2', 'sharpness against gradient '
                                          "descent's stability edge 2/lr (1 = at the edge)"),
    'curvature/preconditioned_lambda_max': ('preconditioned lambda_max', 'top eigenvalue of '
                                            "the Hessian preconditioned by Adam's v_hat"),
    'curvature/preconditioned_eos_ratio': ('Adam EoS ratio', 'preconditioned sharpness '
                                           "against Adam's stability edge (38/lr)"),
    'hessian/entanglement_energy_ratio': ('entanglement energy', '|eta H g_prev|^2 / '
                                          '|g|^2 between consecutive batches'),
    'hessian/rayleigh_quotient': ('Rayleigh quotient', 'g.H g / |g|^2 of the previous batch '
                                  'gradient'),
    'norms/total_norm': ('gradient norm', 'norm of the epoch-mean gradient'),
    'weight_tracking/total_weight_norm': ('total weight norm', 'sqrt of the sum of squared '
                                          'Frobenius norms'),
    'parameter_delta/relative_delta': ('relative change', '|theta - theta_prev| / '
                                       '|theta_prev| between probe epochs'),
}


def label(key: str, with_probe: bool = True) -> str:
  """A short axis label: the known name, else the key made readable with its probe's name
  (``weight_rms/relative`` -> 'relative (weight_rms)': a metric name alone may belong to
  several probes; ``with_probe=False`` where the probe is said already, as in its own
  section of a report)."""
  if key in METRICS:
    return METRICS[key][0]
  parts = key.split('/')
  probe = (f' ({parts[0]})' if with_probe and len(parts) >= 2
           and parts[0] != 'training_metrics' else '')
  if len(parts) >= 3:  # probe/metric/<param or layer>
    parent = '/'.join(parts[:2])
    if parent in METRICS:
      return f'{METRICS[parent][0]} [{"/".join(parts[2:])}]'
    return f'{parts[1].replace("_", " ")} [{"/".join(parts[2:])}]{probe}'
  return parts[-1].replace('_', ' ') + probe


def describe(key: str) -> str:
  """A one-line description for tables and reports ('' if unknown)."""
  return METRICS.get(key, ('', ''))[1]
