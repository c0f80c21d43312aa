"""The paper's experiment with the ``fixed-random`` ordering (the generator's set order).

  python main.py --config=configs/fixed_random.py --workdir=output/paper
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'fixed-random'
  return config
