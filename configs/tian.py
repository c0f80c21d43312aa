r"""Tian's two-layer network on a + b mod 23 (CoGo's setting, ``yuandong-tian/understanding``).

One-hot operands -> W (no bias) -> x^2 -> V (no bias), the centred MSE loss, Adam (coupled
L2 weight decay), full-batch steps (one optimiser step per epoch over all training pairs),
90 % of the 529 pairs in training. Reaches 100 % test accuracy in a few hundred epochs on
a CPU in seconds.

  python main.py --config=configs/tian.py --workdir=output/tian
  python main.py --config=configs/tian.py --config.train_size=critical \
      --config.train_fraction=0 --config.batch_size=198 --workdir=output/tian-critical
"""

from configs import default


def get_config():
  config = default.get_config()
  config.task = 'add'
  config.p = 23
  config.data_generator = 'fast'
  config.train_fraction = 0.9
  config.test_size = 0          # every pair not in training
  config.model = 'mlp'
  config.mlp_dim = 512          # Tian's hidden_size
  config.mlp.activation = 'sqr'
  config.dropout = 0.0
  config.loss = 'mse'
  config.optimizer = 'adam'
  config.lr = 0.01
  config.min_lr = 0.0
  config.schedule = 'constant'
  config.weight_decay = 1e-4
  config.batch_size = 476       # full batch: round(0.9 * 529)
  config.eval_batch_size = 529
  config.epochs = 1000
  config.target_acc = 100.0
  config.checkpoint_every = 200
  config.keep_every = 0
  config.strategy = 'fixed-random'
  return config
