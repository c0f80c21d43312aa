"""Cost of the probes: epoch time with a probe group against the plain epoch.

  python benchmarks/probes.py                       # tiny preset: observers, interventions, full
  python benchmarks/probes.py --each                # each probe of 'full' alone
  python benchmarks/probes.py --preset paper --groups full --epochs 1   # the paper config
  python benchmarks/probes.py --run 150             # whole runs, probes on and off

Per-epoch mode: seconds per epoch (training + evaluation, median of --epochs, each variant
compiled ahead of time and warmed up) of the plain epoch (measured again next to each row:
the shared machine drifts), of an epoch between probe epochs
(step probes keep their state), of a probe epoch, and of a probe epoch where curvature
fires (it fires at most once per ``probes.curvature.every_n_steps`` steps). "Amortised"
weighs them as a run does: probe_every - 1 epochs between probe epochs, one probe epoch,
curvature in the fraction of probe epochs where it fires.

Run mode: wall time of ``experiment.run`` for --run epochs (host work, JSONL, checkpoints
included; compile excluded by running each config once first with a warm compile cache).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ordered_jax import environment  # noqa: E402

environment.configure(deterministic=True, matmul_precision='highest',
                      compilation_cache=os.path.join(tempfile.gettempdir(), 'ojax-bench-cache'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import probes  # noqa: E402
from configs import default, tiny  # noqa: E402
from ordered_jax import experiment, orderings, runs  # noqa: E402
from probes import curvature  # noqa: E402


def _curvature(ps):
  return next((p for p in ps if isinstance(p, curvature.Curvature)), None)


def _timed(fn, state, b, epochs, n, warmup):
  """Median seconds of ``fn`` over the epoch numbers ``epochs`` (the first ``n``)."""
  times = []
  for i, e in enumerate(epochs[:n + warmup]):
    t = time.perf_counter()
    state, m = fn(state, b.spec, b.data, jnp.int32(e))
    jax.device_get(m)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return state, statistics.median(times)


def epoch_seconds(config, n: int, warmup: int = 1) -> dict:
  """{'plain'} without probes, else {'between', 'probe', 'fire', 'fraction'}: seconds of an
  epoch between probe epochs, of a probe epoch without and with curvature firing, and the
  fraction of a run's probe epochs where it fires (probe epochs are real ones: multiples of
  probe_every)."""
  ps = probes.build(config)
  b = experiment.build(config, ps)
  state = b.state
  compiled = lambda do_probe: b.trainer.epoch.lower(
      state, b.spec, b.data, jnp.int32(0), do_eval=True, do_probe=do_probe).compile()
  every = config.probe_every
  if not ps:
    return {'plain': _timed(compiled(False), state, b, list(range(1, 99)), n, warmup)[1]}
  state, between = _timed(compiled(False), state, b, [every * k + 1 for k in range(99)], n,
                          warmup)
  fn = compiled(True)
  probe_epochs = [every * k for k in range(1, 1000)]
  curv = _curvature(ps)
  fires = [e for e in probe_epochs if curv is None or bool(curv.fires(jnp.int32(e)))]
  quiet = [e for e in probe_epochs if e not in fires]
  run_probe_epochs = sorted({e for e in range(config.epochs) if e % every == 0}
                           | {max(config.epochs - 1, 0)})
  fraction = sum(curv is None or bool(curv.fires(jnp.int32(e)))
                 for e in run_probe_epochs) / len(run_probe_epochs)
  out = {'between': between, 'fraction': fraction}
  if quiet:
    state, out['probe'] = _timed(fn, state, b, quiet, n, warmup)
  state, out['fire'] = _timed(fn, state, b, fires, n, 0 if quiet else warmup)
  out.setdefault('probe', out['fire'])
  return out


def amortised(t: dict, every: int) -> float:
  probe = (1 - t['fraction']) * t['probe'] + t['fraction'] * t['fire']
  return ((every - 1) * t['between'] + probe) / every


def run_seconds(config, epochs: int) -> float:
  """Wall seconds of a whole run (the second of two: the first fills the compile cache)."""
  config.epochs = epochs
  out = []
  for _ in range(2):
    work = tempfile.mkdtemp()
    try:
      t = time.perf_counter()
      experiment.run(config, work, quiet=True, probes=probes.build(config))
      out.append(time.perf_counter() - t)
    finally:
      shutil.rmtree(work)
  return out[-1]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='tiny', choices=('tiny', 'paper'))
  ap.add_argument('--epochs', type=int, default=5, help='timed epochs per variant')
  ap.add_argument('--warmup', type=int, default=1, help='untimed epochs per variant')
  ap.add_argument('--groups', default='observers,interventions,full')
  ap.add_argument('--each', action='store_true',
                  help="each probe of the 'full' group alone instead of the groups")
  ap.add_argument('--run', type=int, default=0, metavar='EPOCHS',
                  help='time whole runs of this many epochs instead of single epochs')
  args = ap.parse_args()
  config = (tiny if args.preset == 'tiny' else default).get_config()
  config.data_generator = 'fast'
  env = environment.metadata()
  spe = orderings.steps_per_epoch(runs.sizes(config)[0], config.batch_size)
  print(f"{args.preset} on {env['device_kind']} ({env['backend']}), jax {env['jax_version']}; "
        f'{spe} steps per epoch, probes every {config.probe_every} epochs, curvature at most '
        f'once per {config.probes.curvature.every_n_steps} steps', flush=True)
  if args.run:
    plain = run_seconds(config, args.run)
    print(f'{"probes":<14} {"s per run":>10} {"x plain":>8}')
    print(f'{"none":<14} {plain:>10.1f} {1.0:>8.2f}', flush=True)
    for group in args.groups.split(','):
      config.probes.group = group
      t = run_seconds(config, args.run)
      print(f'{group:<14} {t:>10.1f} {t / plain:>8.2f}', flush=True)
    return
  every = config.probe_every
  print(f'{"probes":<24} {"plain s":>8} {"between x":>9} {"probe x":>8} {"+curv x":>8} '
        f'{"fires":>6} {"amortised x":>11}', flush=True)
  if args.each:
    config.probes.group = 'full'
    rows = [(n, 'none', n) for n in probes.names(config)]
  else:
    rows = [(g, g, '') for g in args.groups.split(',')]
  for label, group, names in rows:
    config.probes.group, config.probes.names = 'none', ''
    plain = epoch_seconds(config, args.epochs, args.warmup)['plain']  # next to it: the
    config.probes.group, config.probes.names = group, names         # machine drifts
    t = epoch_seconds(config, args.epochs, args.warmup)
    print(f'{label:<24} {plain:>8.3f} {t["between"] / plain:>9.2f} {t["probe"] / plain:>8.2f} '
          f'{t["fire"] / plain:>8.2f} {t["fraction"]:>6.2f} '
          f'{amortised(t, every) / plain:>11.2f}', flush=True)


if __name__ == '__main__':
  main()
