"""The paper's experiment with the ``target`` ordering.

  python main.py --config=configs/target.py --workdir=output/paper
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'target'
  return config
