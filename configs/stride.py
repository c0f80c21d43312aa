"""The paper's experiment with the ``stride`` ordering.

  python main.py --config=configs/stride.py --workdir=output/paper
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'stride'
  return config
