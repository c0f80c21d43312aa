"""Grokfast against plain AdamW on the Power et al. setup: epochs to generalise.

Both runs use configs/power.py (a / b mod 97, half of the pairs, the Power transformer,
AdamW with weight decay 1), the same seed, data and initial weights; only
``grokfast.kind`` differs (EMA: alpha 0.98, lambda 2, the original defaults). Prints, per
run, the epoch (and optimiser step) at which test accuracy first reaches 50 %, 95 % and
99 %, and the wall time. A benchmark result, not a test (docs/benchmarks.md).

  python benchmarks/grokfast.py --epochs 600
  python benchmarks/grokfast.py --kinds none,ema,ma --epochs 3000   # on a GPU
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ordered_jax import environment  # noqa: E402

environment.configure(deterministic=True, matmul_precision='highest')

from configs import power  # noqa: E402
from ordered_jax import experiment, orderings, runs, sinks  # noqa: E402

THRESHOLDS = (50.0, 95.0, 99.0)


def first_epochs(rows: list[dict]) -> dict[float, int | None]:
  """{threshold: first evaluated epoch with test accuracy >= threshold, or None}."""
  out = {t: None for t in THRESHOLDS}
  for r in rows:
    acc = r.get('training_metrics/validation_accuracy')
    for t in THRESHOLDS:
      if acc is not None and out[t] is None and acc >= t:
        out[t] = r['epoch']
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--kinds', default='none,ema')
  ap.add_argument('--epochs', type=int, default=600)
  ap.add_argument('--eval-every', type=int, default=5)
  ap.add_argument('--seed', type=int, default=0)
  args = ap.parse_args()
  base = power.get_config()
  steps = orderings.steps_per_epoch(runs.sizes(base)[0], base.batch_size)
  print(f'power setup: task {base.task} p={base.p}, {runs.sizes(base)[0]} train pairs, '
        f'{steps} steps/epoch, cap {args.epochs} epochs')
  for kind in args.kinds.split(','):
    c = power.get_config()
    c.update(epochs=args.epochs, eval_every=args.eval_every, seed=args.seed, tensorboard=False,
             checkpoint_every=args.epochs, target_acc=99.0)
    c.grokfast.kind = kind
    with tempfile.TemporaryDirectory() as workdir:
      t = time.perf_counter()
      (s,) = experiment.run(c, workdir, quiet=True)
      wall = time.perf_counter() - t
      rows = sinks.read_jsonl(os.path.join(workdir, s['run'], f"{s['run']}.jsonl"))
    hit = first_epochs(rows)
    cells = ', '.join(f'{t:.0f} %: ' + (f'epoch {e} (step {(e + 1) * steps})' if e is not None
                                        else f'not by epoch {args.epochs}')
                      for t, e in hit.items())
    print(f'grokfast={kind}: {cells}; final test {s["final_eval"]["validation_accuracy"]:.1f} %, '
          f'train {s["final_eval"]["training_accuracy"]:.1f} %, {wall:.0f} s')


if __name__ == '__main__':
  main()
