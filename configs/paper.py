"""The paper's table in one batch: stride, random, fixed-random and target (R = 4).

All four share the seed, hence the data and the initial weights, as in the reference.

  python main.py --config=configs/paper.py --workdir=output/paper
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'all'
  return config
