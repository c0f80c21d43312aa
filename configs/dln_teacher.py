r"""SGD against GD on a diagonal teacher: the Training-Dynamics codebase's headline setting.

A deep linear network (depth 3: two hidden layers of width 50, init N(0, width^-1.5), the
saddle-to-saddle regime) learns y = W* x + noise (label noise std 0.5) with
W* = diag(1, ..., 5) from 50 fixed examples; the test loss on 1,000 fresh noise-free ones
is the headline metric. The sweep pairs mini-batch SGD
(batch 5: 10 steps per epoch) with full-batch GD (batch 50) at the same number of
optimiser steps (zip of batch_size and epochs), over batch-order seeds with one data set
and one initialisation (data_seed, init_seed fixed: only the order of the mini-batches
differs between seeds, as the codebase's batch_seed). docs/tasks.md.

  python main.py --config=configs/dln_teacher.py --workdir=output/dln-teacher
  python -m analysis dln_sgd_gd --sweep output/dln-teacher --out dln_sgd_gd.png
"""

from configs import default


def get_config():
  config = default.get_config()
  config.task = 'teacher:diagonal'
  config.teacher.dim = 5
  config.teacher.scale = 1.0
  config.teacher.noise_std = 0.5
  config.model = 'dln'
  config.dln.depth = 3
  config.dln.width = 50
  config.dln.gamma = 1.5
  config.dropout = 0.0
  config.train_size = 50
  config.test_size = 1000
  config.data_generator = 'fast'
  config.strategy = 'random'    # a fresh permutation per epoch, as the codebase's reshuffle
  config.data_seed = 0
  config.init_seed = 0
  config.optimizer = 'sgd'
  config.momentum = 0.0
  config.weight_decay = 0.0
  config.schedule = 'constant'
  config.lr = 0.05
  config.min_lr = 0.0
  config.batch_size = 50        # full batch (the sweep zips 5 and 50)
  config.eval_batch_size = 1000
  config.epochs = 1000
  config.eval_every = 10        # epochs: every 10 steps at full batch
  config.checkpoint_every = 1000  # the end only
  config.keep_every = 0
  config.tensorboard = False
  config.sweep.zip.batch_size = '5,50'
  config.sweep.zip.epochs = '100,1000'   # 1,000 optimiser steps each
  config.sweep.zip.eval_every = '1,10'   # the test loss every 10 steps in both
  config.sweep.grid.seed = '0..8'
  return config
