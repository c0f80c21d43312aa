"""What the host adds to the jitted epoch: the training loop against the bare epoch.

  python benchmarks/host_overhead.py                       # tiny and ref97, 20 epochs each
  python benchmarks/host_overhead.py --presets ref97 --epochs 10 --repeats 3

For each preset it runs, alternately and ``--repeats`` times:
  loop   ``experiment.run`` in this process (quiet, the preset's sinks: JSONL, CSV,
         TensorBoard, checkpoints at its cadence), whose summary's ``duration_seconds``
         is the loop's wall time after compilation: the epochs plus everything the host does
         between them (fetching metrics, sinks, the active-mask sync, checkpoints)
  bare   the same compiled epoch called back to back on the same batch, waiting for each
         epoch's metrics (what the device work alone takes)
and prints the best of each and ``loop / bare - 1``, the host's share (target: 3 % or less).
Evaluation every epoch, as the reference; one run (stride).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ordered_jax import environment  # noqa: E402

environment.configure(deterministic=True, matmul_precision='highest')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import default, tiny  # noqa: E402
from ordered_jax import experiment  # noqa: E402


def preset(name: str, epochs: int):
  if name == 'ref97':
    c = default.get_config()
    c.update(p=97, train_size=4000, test_size=4000)
  elif name == 'tiny':
    c = tiny.get_config()
  else:
    raise SystemExit(f'--presets: unknown preset {name!r} (tiny, ref97)')
  c.update(epochs=epochs, strategy='stride', eval_every=1, target_acc=100.0)
  c.lock()
  return c


def loop_seconds(config) -> float:
  with tempfile.TemporaryDirectory() as d:
    (s,) = experiment.run(config, d, quiet=True)
  return s['timing']['duration_seconds']


def bare_seconds(config) -> float:
  b = experiment.build(config)
  state, spec, data = b.state, b.spec, b.data
  f = b.trainer.epoch.lower(state, spec, data, jnp.int32(0), do_eval=True,
                            do_probe=False).compile()
  t = time.perf_counter()
  for epoch in range(config.epochs):
    state, m = f(state, spec, data, jnp.int32(epoch))
    jax.block_until_ready(m)
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--presets', default='tiny,ref97')
  ap.add_argument('--epochs', type=int, default=20)
  ap.add_argument('--repeats', type=int, default=2)
  args = ap.parse_args()
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} cpus')
  print('| preset | epochs | loop s | bare s | loop / bare - 1 |')
  print('|---|---|---|---|---|')
  for name in args.presets.split(','):
    config = preset(name, args.epochs)
    loop_seconds(config)  # fills the compilation cache
    loops, bares = [], []
    for _ in range(args.repeats):
      loops.append(loop_seconds(config))
      bares.append(bare_seconds(config))
    lo, ba = min(loops), min(bares)
    print(f'| {name} | {args.epochs} | {lo:.2f} | {ba:.2f} | {100 * (lo / ba - 1):+.1f} % |',
          flush=True)


if __name__ == '__main__':
  main()
