"""The paper's experiment with the ``stride`` ordering.

How long: one epoch (1,172 steps and an evaluation on 1.3M pairs) takes about 207 s on a
2-core CPU (docs/benchmarks.md); the run stops once test accuracy reaches 99.5 %, near
epoch 490 in the paper, so about 28 hours there (a GPU's figures are not measured yet:
docs/benchmarks.md#gpu-check). Shorter variants: --config.stop_after=5 trains the first 5
epochs of the same schedule in about 20 minutes (continue it later with --resume); the tiny
preset shows the same memorise-then-grok curve in about 2 minutes.

  python main.py --config=configs/stride.py --workdir=output/stride                # ~28 h
  python main.py --config=configs/stride.py --config.stop_after=5 --workdir=output/stride
  python main.py --config=configs/tiny.py --workdir=output/tiny                    # ~2 min
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'stride'
  return config
