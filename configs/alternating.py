"""The paper's experiment with the ``alternating`` ordering.

  python main.py --config=configs/alternating.py --workdir=output/paper
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'alternating'
  return config
