"""Separate data, initialisation and order seeds (issue 6, part 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import experiment, runs
from tests.conftest import micro_config


def _parts(**overrides):
  """(train pairs, initial decoder weights, epoch-3 random order) of run 0 of a config."""
  b = experiment.build(micro_config(strategy='random', **overrides))
  one = lambda t: jax.tree.map(lambda x: x[0], t)
  state, spec = one(b.state), one(b.spec)
  order = b.trainer.epoch_order(jax.random.wrap_key_data(state.key), spec, jnp.int32(3),
                                b.data.train_NxC.shape[0])
  (train,) = b.train_sets.values()
  return (np.asarray(train), np.asarray(state.params['decoder']['kernel']),
          np.asarray(order))


def test_each_seed_moves_only_its_part():
  base = _parts(seed=5)
  assert all(np.array_equal(a, b) for a, b in zip(base, _parts(seed=5, data_seed=5,
                                                                  init_seed=5, order_seed=5)))
  for field, moved in (('data_seed', 0), ('init_seed', 1), ('order_seed', 2)):
    other = _parts(seed=5, **{field: 6})
    for i, (a, b) in enumerate(zip(base, other)):
      assert np.array_equal(a, b) != (i == moved), (field, i)
  # A seed list varies everything but the parts pinned by a fixed seed.
  rs = runs.expand(micro_config(seeds=(1, 2), data_seed=7))
  assert [(r.seed, r.data_seed, r.init_seed, r.order_seed) for r in rs] == [
      (1, 7, 1, 1), (2, 7, 2, 2)]


@pytest.mark.parametrize('value', [-2, -100])  # wrong types stop at the flag parser
def test_bad_seed_values_name_the_field(value):
  c = micro_config()
  c.unlock()
  c.init_seed = value
  with pytest.raises(runs.ConfigError, match=r'init_seed'):
    runs.validate(c)
