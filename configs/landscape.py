r"""The ordering landscape at laptop scale (issue 18): orderings x p x training fraction x seeds.

Where, if anywhere, does the paper's ordering effect (stride and fixed-random grok, random
and target do not) appear on a CPU? The grid: the four orderings x 3 primes (59, 97, 211)
x 4 training fractions (0.15 .. 0.6 of all p^2 pairs) x 2 seeds = 96 runs, each (p,
fraction) point one vmapped batch of its 8 runs (12 batches). docs/landscape.md has the
map and the finding.

  nice -n 5 python main.py --config=configs/landscape.py --workdir=output/landscape --quiet
  python -m analysis landscape --results output/landscape/results.parquet --out landscape/

Choices (from a pilot; docs/landscape.md#pilot):

* **Step-matched budget.** Every point trains for the same number of optimiser steps
  (``STEPS``), so the epoch cap is ``ceil(STEPS * batch / n_train)``: 614 epochs at p = 59
  with 15 % of the pairs, 12 at p = 211 with 60 % (5016 to 5526 steps, an epoch's last
  batch being partial). A fixed epoch cap would give the large p 13 times the steps (and
  the compute) of the small one. ``p``, ``train_fraction``,
  ``epochs``, ``eval_every`` (about 40 evaluations per run), ``probe_every`` (= eval_every,
  so snapshots add no evaluations), ``test_size`` and ``checkpoint_every`` covary as
  ``sweep.zip`` rows; ``strategy`` x ``seed`` is the grid inside each row. The cosine
  schedule decays to ``min_lr`` at each point's cap.
* **Weight decay 1.0, not the paper's 0.1.** In the pilot (p = 59, half of the pairs,
  3000 steps) weight decay 0.1 memorised and stayed far from generalising, while 1.0
  grokked; at this step budget 0.1 shows no grokking at all (the tiny preset needs the
  same, configs/tiny.py).
* **Model and optimiser:** the reference transformer (2 layers, dropout 0.1), half the
  tiny preset's width (embed 64, 4 heads, MLP 256, as configs/sweep_tiny.py); AdamW at
  2e-3 (the paper: 1e-3), batch 64 (the paper: 256): on 2 CPU cores a step of 64 costs
  about half of one of 128 and weight decay shrinks the weights per step, so small
  batches reach grokking in the least compute.
* **Test set:** 2000 pairs drawn from those outside training (all of them when fewer);
  ``target_acc`` 99 % (a run stops there; its generalisation epoch is the first evaluated
  epoch at or above it).
* Data and initial weights follow the run's seed (``data_generator='fast'``); the four
  orderings of one seed share both, so they differ only in the order of the batches.

Batches run in the order of ``POINTS`` (most informative first), so a sweep stopped early
still has whole rows of the map; running the command again resumes it (finished runs are
skipped).
"""

import math

from configs import default

STEPS = 5000          # optimiser steps per run at every point
BATCH = 64
TEST = 2000           # test pairs (fewer when fewer are left outside training)
EVALS = 40            # evaluations per run, about
PRIMES = (59, 97, 211)
FRACTIONS = (0.15, 0.3, 0.45, 0.6)
# (p, fraction) in the order the batches run: the middle of the map first.
POINTS = ((97, 0.3), (97, 0.45), (97, 0.6),
          (211, 0.15), (211, 0.3), (211, 0.45),
          (59, 0.3), (59, 0.45), (59, 0.6),
          (211, 0.6), (97, 0.15), (59, 0.15))


def point_fields(p: int, fraction: float, steps: int = STEPS, batch: int = BATCH) -> dict:
  """The covarying fields of one (p, fraction) point."""
  n = round(fraction * p * p)
  epochs = math.ceil(steps * batch / n)
  every = max(1, round(epochs / EVALS))
  return dict(p=p, train_fraction=fraction, epochs=epochs, eval_every=every,
              probe_every=every, test_size=min(TEST, p * p - n),
              checkpoint_every=max(1, math.ceil(epochs / 4)))


def get_config():
  config = default.get_config()
  config.data_generator = 'fast'
  config.p = 97
  config.train_fraction = 0.3
  config.test_size = TEST
  config.embed_dim = 64
  config.num_heads = 4
  config.mlp_dim = 256
  config.batch_size = BATCH
  config.eval_batch_size = 4096
  config.lr = 2e-3
  config.weight_decay = 1.0
  config.target_acc = 99.0
  config.keep_checkpoints = 1
  config.keep_every = 0
  config.tensorboard = False
  rows = [point_fields(p, f) for p, f in POINTS]
  for key in rows[0]:
    config.sweep.zip[key] = ','.join(str(r[key]) for r in rows)
  config.sweep.grid.strategy = 'stride,fixed-random,random,target'
  config.sweep.grid.seed = '0,1'
  return config
