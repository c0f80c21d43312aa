r"""Power et al.'s Figure 1: a / b mod 97 with half of the pairs, their transformer.

A 2-layer decoder-only transformer (width 128, 4 heads, MLP 512, GELU, causal attention
over [a, o, b, =], final LayerNorm, dropout 0.1), AdamW lr 1e-3, betas (0.9, 0.98), weight
decay 1, linear warm-up, batch 512. The paper trains for 1e5+ optimiser steps (about
10 steps per epoch here); grokking shows as validation accuracy rising long after the
training accuracy saturates.

How long: 10,000 epochs of about 0.8 s (2-core CPU alone; measured in docs/benchmarks.md)
to 3 s (the same CPU shared with other work): about 2 to 9 hours. Shorter variants: with
Grokfast EMA test accuracy reaches 99 % near epoch 235 and the run stops (3.5 minutes in
docs/benchmarks.md); --config.stop_after=1000 trains the first tenth of the same schedule
(continue it later with --resume).

  python main.py --config=configs/power.py --workdir=output/power                  # 2-9 h
  python main.py --config=configs/power.py --config.grokfast.kind=ema --workdir=output/power-ema
  python main.py --config=configs/power.py --config.stop_after=1000 --workdir=output/power
"""

from configs import default


def get_config():
  config = default.get_config()
  config.task = 'div'
  config.p = 97
  config.data_generator = 'fast'
  config.train_fraction = 0.5
  config.test_size = 0          # the other half
  config.model = 'power'
  config.embed_dim = 128
  config.num_heads = 4
  config.layers = 2
  config.mlp_dim = 512
  config.dropout = 0.1
  config.optimizer = 'adamw'
  config.adam_b2 = 0.98
  config.lr = 1e-3
  config.min_lr = 0.0
  config.schedule = 'constant'
  config.warmup_epochs = 1      # ~10 steps, as their 10-step warm-up
  config.weight_decay = 1.0
  config.batch_size = 512
  config.eval_batch_size = 4656
  config.epochs = 10_000
  config.target_acc = 99.0
  config.probe_every = 100
  config.checkpoint_every = 500
  config.keep_every = 0
  config.strategy = 'random'    # their sampler draws examples at random
  return config
