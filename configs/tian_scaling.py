r"""Tian's scaling law on the CPU: where the two-layer network starts to generalise, as the
training set crosses the critical size n = c (ln M / M) 2.7482 T (T = M^2 pairs; c = 1 for
Z_M), for a few M.

configs/tian.py (sqr MLP, centred MSE, Adam, full batch) with ``train_size='critical'``,
swept over the modulus M and ``critical_delta`` (n uses 2.7482 - delta: delta > 0 is below
the boundary, < 0 above), zipped with each point's full batch (``batch_size`` = n,
computed here), and two seeds: 4 x 7 x 2 = 56 runs, the seeds of one size sharing a vmapped
batch. docs/tasks.md shows the figure:

  python main.py --config=configs/tian_scaling.py --workdir=output/tian-scaling
  python -m analysis scaling --table output/tian-scaling --out scaling.png
"""

import itertools

from configs import tian
from ordered_jax import tasks

MODULI = (23, 31, 41, 53)
DELTAS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


def get_config():
  config = tian.get_config()
  config.train_size = 'critical'
  config.train_fraction = 0.0     # the size comes from the critical ratio
  config.eval_batch_size = 4096
  config.epochs = 1000
  config.checkpoint_every = 1000
  config.tensorboard = False
  points = list(itertools.product(MODULI, DELTAS))
  config.sweep.zip.p = ','.join(str(p) for p, _ in points)
  config.sweep.zip.critical_delta = ','.join(str(d) for _, d in points)
  config.sweep.zip.batch_size = ','.join(   # full batch: every training pair in one step
      str(tasks.critical_train_size(tasks.parse_task('add', p), delta=d)) for p, d in points)
  config.sweep.grid.seed = '0,1'
  return config
