"""configs/landscape.py (issue 18): the grid it plans and its step-matched epoch caps."""

import math

from configs import landscape
from ordered_jax import runs, sweeper


def test_landscape_plan_is_the_grid_in_step_matched_batches():
  config = landscape.get_config()
  items = sweeper.plan(config)
  assert len(items) == 4 * 2 * len(landscape.POINTS) == 96
  points = {(it.keys['p'], it.keys['train_fraction']) for it in items}
  assert points == {(p, f) for p in landscape.PRIMES for f in landscape.FRACTIONS}
  assert {it.keys['strategy'] for it in items} == {'stride', 'fixed-random', 'random', 'target'}
  assert {it.keys['seed'] for it in items} == {0, 1}
  batches = sweeper.batches(items)
  assert [len(b) for b in batches] == [8] * len(landscape.POINTS)
  for b in batches:  # one (p, fraction) per batch, in POINTS order
    assert len({(it.keys['p'], it.keys['train_fraction']) for it in b}) == 1
  assert [(b[0].keys['p'], b[0].keys['train_fraction']) for b in batches] == \
      list(landscape.POINTS)
  for it in items:
    c = it.config
    n_train, n_test = runs.sizes(c)
    assert n_train == round(c.train_fraction * c.p ** 2)
    steps = c.epochs * math.ceil(n_train / c.batch_size)  # a partial last batch is a step
    assert landscape.STEPS <= steps <= 1.11 * landscape.STEPS
    assert n_test == min(landscape.TEST, c.p ** 2 - n_train)
    assert c.weight_decay == 1.0 and c.embed_dim <= 128 and c.mlp_dim <= 512
