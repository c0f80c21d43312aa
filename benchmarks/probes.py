"""Cost of the probes: epoch time with a probe group against the plain epoch.

  python benchmarks/probes.py                     # tiny preset, observers and full
  python benchmarks/probes.py --preset paper      # on a GPU

Prints seconds per epoch (training + evaluation, median of --epochs) for no probes, and
for each group with probes every epoch (the reference's POST_EPOCH cadence) and every 10
epochs (its snapshot cadence, amortised), with the ratio to the plain epoch.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ordered_jax import environment  # noqa: E402

environment.configure(deterministic=True, matmul_precision='highest')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import probes  # noqa: E402
from configs import default, tiny  # noqa: E402
from ordered_jax import experiment  # noqa: E402


def epoch_seconds(config, epochs: int) -> dict:
  """Median seconds of a plain epoch and of a probe epoch (both with evaluation)."""
  b = experiment.build(config, probes.build(config))
  state = b.state
  out = {}
  for do_probe in (False, True) if b.trainer.probes else (False,):
    fn = b.trainer.epoch.lower(state, b.spec, b.data, jnp.int32(0), do_eval=True,
                               do_probe=do_probe).compile()
    state, m = fn(state, b.spec, b.data, jnp.int32(0))
    jax.device_get(m)
    times = []
    for e in range(epochs):
      t = time.perf_counter()
      state, m = fn(state, b.spec, b.data, jnp.int32(e + 1))
      jax.device_get(m)
      times.append(time.perf_counter() - t)
    out[do_probe] = statistics.median(times)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='tiny', choices=('tiny', 'paper'))
  ap.add_argument('--epochs', type=int, default=5)
  args = ap.parse_args()
  config = (tiny if args.preset == 'tiny' else default).get_config()
  config.data_generator = 'fast'
  env = environment.metadata()
  print(f"{args.preset} on {env['device_kind']} ({env['backend']}), jax {env['jax_version']}")
  plain = epoch_seconds(config, args.epochs)[False]
  print(f'{"probes":<12} {"s/epoch":>9} {"x plain":>8}   every 10 epochs: {"x plain":>8}')
  print(f'{"none":<12} {plain:>9.3f} {1.0:>8.2f}')
  for group in ('observers', 'interventions', 'full'):
    config.probes.group = group
    t = epoch_seconds(config, args.epochs)
    amortised = (9 * t[False] + t[True]) / 10
    print(f'{group:<12} {t[True]:>9.3f} {t[True] / plain:>8.2f}   {"":>16}'
          f'{amortised / plain:>8.2f}')


if __name__ == '__main__':
  main()
