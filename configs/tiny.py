"""CPU preset: (a + b) mod 97 with a small reference-style transformer.

Memorises, then groks, within a few minutes on 2 CPU cores (curves in the README).

  python main.py --config=configs/tiny.py --workdir=output/tiny
  python main.py --config=configs/tiny.py --config.strategy=stride,random --workdir=output/tiny
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'random'
  config.p = 97
  config.train_size = 3000
  config.test_size = 3000
  config.embed_dim = 128
  config.num_heads = 4
  config.mlp_dim = 512
  config.batch_size = 256
  config.eval_batch_size = 3000
  config.weight_decay = 1.0
  config.epochs = 400
  config.min_lr = 1e-5
  config.checkpoint_every = 25
  config.keep_every = 0
  return config
