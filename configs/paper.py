"""The paper's table in one batch: stride, random, fixed-random and target (R = 4).

All four share the seed, hence the data and the initial weights, as in the reference.

How long: on a 2-core CPU a batch of 4 costs about 4 single runs per epoch (4.0x for the
reference model at p 97, docs/benchmarks.md), so about 14 minutes per epoch (one run's is
207 s); random and target never reach 99.5 % test accuracy and a batch's stopped runs are
masked, not removed, so the batch trains all 5,000 epochs: about 48 days there (a GPU's
figures are not measured yet: docs/benchmarks.md#gpu-check). Shorter variants:
--config.stop_after=2 trains the first 2 epochs of the same schedule in about half an hour
(continue it later with --resume); the tiny preset's four orderings in one batch show the
paper's ordering effect in about 11 minutes.

  python main.py --config=configs/paper.py --workdir=output/paper                  # ~48 days
  python main.py --config=configs/paper.py --config.stop_after=2 --workdir=output/paper
  python main.py --config=configs/tiny.py --config.strategy=all --workdir=output/tiny-all
"""

from configs import default


def get_config():
  config = default.get_config()
  config.strategy = 'all'
  return config
