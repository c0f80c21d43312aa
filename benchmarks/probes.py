"""Cost of the probes at the reference's cadence: a run's epochs with probes against plain ones.

  python benchmarks/probes.py                       # tiny preset: observers, interventions, full
  python benchmarks/probes.py --preset ref97        # the reference model at p = 97 (4000/4000)
  python benchmarks/probes.py --each                # each probe of 'full' alone
  python benchmarks/probes.py --preset paper --groups full --epochs 1 --warmup 0 --horizon 100
  python benchmarks/probes.py --run 150             # whole runs, probes on and off

Per-epoch mode: every epoch of a run of --horizon epochs (default: the preset's epochs) is
classed by which probes fire in it (docs/probes.md#cadence: per-epoch probes every epoch,
the counterfactual family every epoch below 50 then at snapshots, snapshot probes every
probe_every, curvature at most once per probes.curvature.every_n_steps); each class is timed
(seconds per epoch with evaluation, median of --epochs at epochs of that class, compiled
ahead of time, warmed up) against the plain epoch measured next to it (the shared machine
drifts), and "amortised" weighs the classes by their share of the run.

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
from ordered_jax import experiment, instrument, orderings, runs  # noqa: E402
from probes import curvature  # noqa: E402


def _timed(fn, state, b, epochs, n, warmup):
  """Median seconds of ``fn`` over the epoch numbers ``epochs`` (``warmup`` untimed first)."""
  times = []
  for i, e in enumerate(list(epochs)[:n + warmup]):
    t = time.perf_counter()
    state, m = fn(state, b.spec, b.data, jnp.int32(e))
    jax.device_get(m)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return state, statistics.median(times)


def _spread(epochs: list, n: int) -> list:
  """``n`` epochs spread over ``epochs`` (step bursts sit at particular epochs)."""
  if len(epochs) <= n:
    return epochs
  return [epochs[round(i * (len(epochs) - 1) / (n - 1))] for i in range(n)] if n > 1 else [
      epochs[0]]


def firing_classes(config, ps, horizon: int) -> dict:
  """{(probes that fire, curvature fires): [epochs]} over a run of ``horizon`` epochs."""
  c = experiment.cadence(config)
  curv = next((p for p in ps if isinstance(p, curvature.Curvature)), None)
  out = {}
  for e in range(horizon):
    names = tuple(p.name for p in ps if bool(c.fires(instrument.cadence_of(p), e)))
    fires = curv is not None and curv.name in names and bool(curv.fires(jnp.int32(e)))
    out.setdefault((names, fires), []).append(e)
  return out


def epoch_seconds(config, n: int, warmup: int = 1, horizon: int = 0) -> dict:
  """{'plain': s} without probes; else {'classes': [(label, epochs, seconds)], 'amortised':
  seconds per epoch over the run}."""
  ps = probes.build(config)
  b = experiment.build(config, ps)
  state = b.state
  compiled = lambda do_probe: b.trainer.epoch.lower(
      state, b.spec, b.data, jnp.int32(0), do_eval=True, do_probe=do_probe).compile()
  if not ps:
    return {'plain': _timed(compiled(False), state, b, range(1, 99), n, warmup)[1]}
  classes = firing_classes(config, ps, horizon or config.epochs)
  fns = {}
  rows, total = [], 0.0
  all_names = {p.name for p in ps}
  for (names, fires), epochs in sorted(classes.items(), key=lambda kv: kv[1][0]):
    do_probe = bool(names)
    if do_probe not in fns:
      fns[do_probe] = compiled(do_probe)
    state, sec = _timed(fns[do_probe], state, b, _spread(epochs, n + warmup), n, warmup)
    missing = sorted(all_names - set(names))
    label = ('all' if not missing else 'none' if not names else
             f'all but {",".join(missing)}') + (' +curvature fires' if fires else '')
    rows.append((label, len(epochs), sec))
    total += len(epochs) * sec
  return {'classes': rows, 'amortised': total / sum(len(e) for e in classes.values())}


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


def preset(name: str):
  if name == 'tiny':
    return tiny.get_config()
  config = default.get_config()
  if name == 'ref97':  # the reference model at p = 97, as issue 20's side-by-side
    config.p, config.train_size, config.test_size, config.epochs = 97, 4000, 4000, 300
  return config


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='tiny', choices=('tiny', 'ref97', 'paper'))
  ap.add_argument('--epochs', type=int, default=5, help='timed epochs per class')
  ap.add_argument('--warmup', type=int, default=1, help='untimed epochs per class')
  ap.add_argument('--horizon', type=int, default=0,
                  help="epochs of the run the classes are weighed over (0: the preset's)")
  ap.add_argument('--groups', default='observers,interventions,full')
  ap.add_argument('--each', action='store_true',
                  help="each probe of the 'full' group alone instead of the groups")
  ap.add_argument('--run', type=int, default=0, metavar='EPOCHS',
                  help='time whole runs of this many epochs instead of single epochs')
  args = ap.parse_args()
  config = preset(args.preset)
  config.data_generator = 'fast'
  env = environment.metadata()
  spe = orderings.steps_per_epoch(runs.sizes(config)[0], config.batch_size)
  horizon = args.horizon or config.epochs
  print(f"{args.preset} on {env['device_kind']} ({env['backend']}), jax {env['jax_version']}; "
        f'{spe} steps per epoch; reference cadence (per-epoch probes every epoch, snapshots '
        f'every {config.probe_every}, counterfactual every epoch below '
        f'{config.probes.counterfactual.every_epoch_until}); curvature at most once per '
        f'{config.probes.curvature.every_n_steps} steps; amortised over {horizon} epochs',
        flush=True)
  if args.run:
    plain = run_seconds(config, args.run)
    print(f'{"probes":<14} {"s per run":>10} {"x plain":>8}')
    print(f'{"none":<14} {plain:>10.1f} {1.0:>8.2f}', flush=True)
    for group in args.groups.split(','):
      config.probes.group = group
      t = run_seconds(config, args.run)
      print(f'{group:<14} {t:>10.1f} {t / plain:>8.2f}', flush=True)
    return
  if args.each:
    config.probes.group = 'full'
    rows = [(n, 'none', n) for n in probes.names(config)]
  else:
    rows = [(g, g, '') for g in args.groups.split(',')]
  for label, group, names in rows:
    config.probes.group, config.probes.names = 'none', ''
    plain = epoch_seconds(config, args.epochs, args.warmup)['plain']  # next to it: the
    config.probes.group, config.probes.names = group, names         # machine drifts
    t = epoch_seconds(config, args.epochs, args.warmup, horizon)
    print(f'{label}: plain {plain:.3f} s/epoch, amortised {t["amortised"] / plain:.2f}x',
          flush=True)
    for what, count, sec in t['classes']:
      print(f'    {count:>5} epochs  {sec / plain:>6.2f}x  {what}', flush=True)


if __name__ == '__main__':
  main()
