"""Training throughput of the jitted, vmapped epoch, as figures and ratios.

For each preset and each number of runs R in one batch it measures:
  train steps/s       optimizer steps per second of ONE run (R runs: per run), no eval
  runs x steps/s      total optimizer steps per second across the batch
  epochs/s (eval)     epochs per second with the full evaluation every epoch
  FLOP/s, % of peak   XLA's FLOP count of a training step x steps/s, against a plain jitted
                      float32 matmul timed in the same process (the machine's practical peak)
and the ratio of R runs in one batch to R runs one after another.

  python benchmarks/throughput.py                      # tiny and reference@p97, R = 1, 4
  python benchmarks/throughput.py --presets paper --runs 1,4 --epochs 2   # on a GPU
  python benchmarks/throughput.py --presets sweep-tiny --runs 1,2,4,8,16  # runs per batch
  python benchmarks/throughput.py --presets paper --runs 1,16 --epochs 2  # issue 5's GPU target
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ordered_jax import environment  # noqa: E402

environment.configure(deterministic=True, matmul_precision='highest')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from configs import default, sweep_tiny, tiny  # noqa: E402
from ordered_jax import experiment, orderings, runs  # noqa: E402


def presets():
  ref97 = default.get_config()
  ref97.update(p=97, train_size=3500, test_size=4000, eval_batch_size=4000)
  small = sweep_tiny.get_config()
  return {'tiny': tiny.get_config(), 'reference-p97': ref97, 'paper': default.get_config(),
          'sweep-tiny': small}


def matmul_peak(n: int = 2048, repeats: int = 10, trials: int = 5) -> float:
  """FLOP/s of a jitted float32 n x n matmul (the same precision as training), best trial."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(trials):
    t = time.perf_counter()
    for _ in range(repeats):
      out = f(a)
    out.block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 * repeats / best


def step_flops(b: experiment.Batch, batch_size: int) -> float:
  """XLA's FLOP count of one training step (forward, backward, AdamW) of one run."""
  tr = b.trainer
  params = jax.tree.map(lambda x: x[0], b.state.params)
  opt = jax.tree.map(lambda x: x[0], b.state.opt_state)

  def step(params, opt, abc, mask, key):
    loss, g = jax.value_and_grad(tr.loss)(params, abc, mask, key)
    upd, opt = tr.tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  table = b.data.train_NxC if b.trainer.shared_data else b.data.train_NxC[0]
  abc = table[:batch_size]
  mask = jnp.ones((batch_size,), bool)
  cost = jax.jit(step).lower(params, opt, abc, mask, jax.random.key(0)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost['flops'])


def measure(config, r: int, epochs: int) -> dict:
  config = config.copy_and_resolve_references()
  # R = 4 is the paper's batch (four orderings, one seed, one shared dataset); other R are
  # seeds of the random ordering, each with its own dataset.
  config.strategy = 'all' if r == 4 else 'random'
  config.seeds = tuple(range(r)) if r not in (1, 4) else ()
  config.data_generator = 'fast'
  b = experiment.build(config)
  steps = orderings.steps_per_epoch(runs.sizes(config)[0], config.batch_size)
  fns = {ev: b.trainer.epoch.lower(b.state, b.spec, b.data, jnp.int32(0), do_eval=ev).compile()
         for ev in (False, True)}
  flops = step_flops(b, config.batch_size)
  state = b.state
  state, m = fns[False](state, b.spec, b.data, jnp.int32(0))  # warm-up (donates b.state)
  jax.block_until_ready(m)
  timings = {}
  for ev in (False, True):
    per_epoch = []
    for e in range(epochs):
      t = time.perf_counter()
      state, m = fns[ev](state, b.spec, b.data, jnp.int32(e + 1))
      jax.device_get(m)  # the experiment loop syncs on each epoch's metrics too
      per_epoch.append(time.perf_counter() - t)
    timings[ev] = statistics.median(per_epoch)  # robust to a noisy neighbour
  return {'runs': r, 'steps_per_epoch': steps,
          'train_steps_per_s': steps / timings[False],
          'runs_x_steps_per_s': r * steps / timings[False],
          'epoch_seconds_train': timings[False], 'epoch_seconds_with_eval': timings[True],
          'epochs_per_s_with_eval': 1 / timings[True],
          'step_flops': flops, 'flops_per_s': r * steps * flops / timings[False]}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--presets', default='tiny,reference-p97')
  ap.add_argument('--runs', default='1,4')
  ap.add_argument('--epochs', type=int, default=5, help='timed epochs (median reported)')
  ap.add_argument('--json', default='')
  args = ap.parse_args()
  env = environment.metadata()
  peak = matmul_peak()
  print(f"device: {env['device_kind']} x{env['device_count']} ({env['backend']}), "
        f"jax {env['jax_version']}; float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  results = {'environment': env, 'matmul_peak_flops': peak, 'presets': {}}
  for name in args.presets.split(','):
    config = presets()[name]
    rows = [measure(config, int(r), args.epochs) for r in args.runs.split(',')]
    base = rows[0]
    print(f'\n{name}: p={config.p} d={config.embed_dim} mlp={config.mlp_dim} '
          f'train={config.train_size} test={config.test_size} batch={config.batch_size}')
    print(f"{'R':>3} {'steps/s/run':>12} {'R x steps/s':>12} {'epoch s':>9} "
          f"{'epoch s+eval':>13} {'GFLOP/s':>9} {'% peak':>7} {'vs R x1':>8}")
    for row in rows:
      row['fraction_of_peak'] = row['flops_per_s'] / peak
      row['batched_vs_sequential'] = row['runs_x_steps_per_s'] / base['runs_x_steps_per_s']
      print(f"{row['runs']:>3} {row['train_steps_per_s']:>12.1f} "
            f"{row['runs_x_steps_per_s']:>12.1f} {row['epoch_seconds_train']:>9.3f} "
            f"{row['epoch_seconds_with_eval']:>13.3f} {row['flops_per_s'] / 1e9:>9.1f} "
            f"{100 * row['fraction_of_peak']:>6.1f}% {row['batched_vs_sequential']:>7.2f}x")
    results['presets'][name] = rows
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
