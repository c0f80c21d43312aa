"""The paper's experiment with the ``random`` ordering.

  python main.py --config=configs/random.py --workdir=output/paper
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'random'
  return config
