r"""Example sweep: where each ordering groks, over weight decay and seeds, on 2 CPU cores.

(a + b) mod 59 with half of the pairs and a small reference transformer; the grid is
4 orderings x 2 weight decays x 2 seeds = 16 runs, packed into vmapped batches (the
orderings, weight decays and seeds of one shape share a batch). docs/sweeps.md; the
README shows the figure `python -m analysis sweep_map` draws from the table.

  python main.py --config=configs/sweep_tiny.py --workdir=output/sweep-tiny
  python -m analysis sweep_map --table output/sweep-tiny/results.parquet --out sweep.png
"""

from configs import default


def get_config():
  config = default.get_config()
  config.p = 59
  config.train_size = 1740      # half of the 3481 pairs
  config.test_size = 1741       # the rest
  config.data_generator = 'fast'
  config.embed_dim = 64
  config.num_heads = 4
  config.mlp_dim = 256
  config.batch_size = 128
  config.eval_batch_size = 1741
  config.lr = 2e-3
  config.weight_decay = 1.0
  config.epochs = 500
  config.eval_every = 5
  config.target_acc = 99.0
  config.checkpoint_every = 50
  config.keep_every = 0
  config.tensorboard = False
  config.sweep.grid.strategy = 'stride,random,fixed-random,target'
  config.sweep.grid.weight_decay = '0.3,1.0'
  config.sweep.grid.seed = '0,1'
  return config
