"""The reference transformer: shapes, parameter count, initialisation, forward pass."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import models

SMALL = models.ModelConfig(vocab=13, embed_dim=16, num_heads=2, layers=2, mlp_dim=32)


def test_parameter_count_of_the_paper_model():
  cfg = models.ModelConfig(vocab=9973)  # embed 256, 4 heads, 2 layers, mlp 2048
  assert models.param_count(models.Model(cfg).abstract_params()) == 7_746_805


def test_reference_names_and_shapes():
  cfg = models.ModelConfig(vocab=9973)
  sd = jax.eval_shape(lambda p: models.to_reference(p, cfg), models.Model(cfg).abstract_params())
  order = list(models.to_reference(models.Model(SMALL).init(jax.random.key(0)), SMALL))
  assert order[:3] == ['pos_embedding', 'embedding.weight',
                       'transformer.layers.0.self_attn.in_proj_weight']
  assert order[-2:] == ['decoder.weight', 'decoder.bias'] and len(order) == 2 + 12 * 2 + 2
  assert sd['embedding.weight'].shape == (9973, 256)
  assert sd['transformer.layers.1.self_attn.in_proj_weight'].shape == (768, 256)
  assert sd['transformer.layers.0.linear1.weight'].shape == (2048, 256)
  assert sd['decoder.weight'].shape == (9973, 256)
  non_bias = sum(math.prod(v.shape) for k, v in sd.items() if 'bias' not in k)
  assert non_bias == 7_729_152  # what the reference's gradient metrics flatten


def test_layers_start_identical_and_seeded():
  m = models.Model(SMALL)
  p1, p2 = m.init(jax.random.key(0)), m.init(jax.random.key(0))
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p1['layers'][0], p1['layers'][1])
  assert all(jax.tree.leaves(same))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), p1, p2)))
  free = models.Model(models.ModelConfig(**{**SMALL.__dict__, 'identical_layers': False}))
  q = free.init(jax.random.key(0))
  assert not jnp.array_equal(q['layers'][0]['linear1']['kernel'],
                             q['layers'][1]['linear1']['kernel'])
  other = m.init(jax.random.key(1))
  assert not jnp.array_equal(other['embedding']['embedding'], p1['embedding']['embedding'])


def test_initialisation_follows_pytorch_defaults():
  cfg = models.ModelConfig(vocab=257, embed_dim=64, num_heads=4, layers=1, mlp_dim=256)
  sd = {k: np.asarray(v) for k, v in
        models.to_reference(models.Model(cfg).init(jax.random.key(0)), cfg).items()}
  assert abs(sd['embedding.weight'].std() - 1.0) < 0.03  # N(0, 1)
  assert abs(sd['pos_embedding'].mean()) < 0.3
  pre = 'transformer.layers.0.'
  xavier = math.sqrt(6 / (64 + 3 * 64))
  w = sd[pre + 'self_attn.in_proj_weight']
  assert np.abs(w).max() <= xavier and np.abs(w).max() > 0.95 * xavier
  assert abs(w.std() - xavier / math.sqrt(3)) < 0.01  # uniform: std = bound / sqrt 3
  for name, fan_in in (('linear1.weight', 64), ('linear1.bias', 64), ('linear2.weight', 256),
                       ('linear2.bias', 256), ('self_attn.out_proj.weight', 64)):
    x = sd[pre + name]
    assert np.abs(x).max() <= 1 / math.sqrt(fan_in), name
    assert np.abs(x).max() > 0.8 / math.sqrt(fan_in), name
  for zero in ('self_attn.in_proj_bias', 'self_attn.out_proj.bias', 'norm1.bias', 'norm2.bias'):
    assert not sd[pre + zero].any(), zero
  assert (sd[pre + 'norm1.weight'] == 1).all() and (sd[pre + 'norm2.weight'] == 1).all()
  assert np.abs(sd['decoder.weight']).max() <= 1 / 8 and np.abs(sd['decoder.bias']).max() <= 1 / 8


def _numpy_reference_forward(sd, x, heads):
  """The reference's eval-mode forward pass written from its PyTorch state_dict."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  h = sd['embedding.weight'][x] + sd['pos_embedding']  # [B, 2, d]
  b, t, d = h.shape
  n_layers = len({k.split('.')[2] for k in sd if k.startswith('transformer.layers.')})

  def ln(z, w, bias):
    mu = z.mean(-1, keepdims=True)
    var = z.var(-1, keepdims=True)
    return (z - mu) / np.sqrt(var + 1e-5) * w + bias

  for i in range(n_layers):
    pre = f'transformer.layers.{i}.'
    z = ln(h, sd[pre + 'norm1.weight'], sd[pre + 'norm1.bias'])
    qkv = z @ sd[pre + 'self_attn.in_proj_weight'].T + sd[pre + 'self_attn.in_proj_bias']
    q, k, v = np.split(qkv, 3, axis=-1)
    split = lambda a: a.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)
    s = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    o = (s @ split(v)).transpose(0, 2, 1, 3).reshape(b, t, d)
    h = h + o @ sd[pre + 'self_attn.out_proj.weight'].T + sd[pre + 'self_attn.out_proj.bias']
    z = ln(h, sd[pre + 'norm2.weight'], sd[pre + 'norm2.bias'])
    f = np.maximum(z @ sd[pre + 'linear1.weight'].T + sd[pre + 'linear1.bias'], 0)
    h = h + f @ sd[pre + 'linear2.weight'].T + sd[pre + 'linear2.bias']
  return h.mean(1) @ sd['decoder.weight'].T + sd['decoder.bias']


@pytest.mark.parametrize('identical', [True, False])
def test_forward_matches_numpy_reference(identical):
  cfg = models.ModelConfig(**{**SMALL.__dict__, 'identical_layers': identical})
  m = models.Model(cfg)
  params = m.init(jax.random.key(5))
  x = np.stack(np.meshgrid(np.arange(13), np.arange(13)), -1).reshape(-1, 2)
  want = _numpy_reference_forward(models.to_reference(params, cfg), x, cfg.num_heads)
  got = np.asarray(m.apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_reference_round_trip_and_attention_probabilities():
  m = models.Model(SMALL)
  params = m.init(jax.random.key(2))
  back = models.from_reference(models.to_reference(params, SMALL), SMALL)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back,
                                          params)))
  logits, attn = m.apply(params, jnp.array([[1, 2], [3, 4], [5, 6]]), return_attn=True)
  assert logits.shape == (3, 13) and attn.shape == (2, 3, 2, 2, 2)  # [L, B, H, T, T]
  np.testing.assert_allclose(np.asarray(attn.sum(-1)), 1.0, rtol=1e-6)


def test_dropout_is_keyed_and_scaled():
  m = models.Model(SMALL)
  params = m.init(jax.random.key(0))
  x = jnp.array([[1, 2], [3, 4]])
  a = m.apply(params, x, dropout_key=jax.random.key(1))
  assert jnp.array_equal(a, m.apply(params, x, dropout_key=jax.random.key(1)))
  assert not jnp.array_equal(a, m.apply(params, x, dropout_key=jax.random.key(2)))
  assert not jnp.array_equal(a, m.apply(params, x))
  kept = models._dropout(jnp.ones((100_000,)), 0.1, jax.random.key(0))
  assert set(np.unique(np.asarray(kept)).tolist()) == {0.0, np.float32(1 / 0.9)}
  assert abs(float((kept == 0).mean()) - 0.1) < 0.005


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_dropout_keep_mask_statistics(rate):
  """The hashed keep mask is Bernoulli(1 - rate): its mean, per-position means over many
  keys, neighbour correlations and the agreement of two keys are what independent
  Bernoulli bits give, within 5 standard deviations; the same key gives the same mask."""
  shape = (64, 4, 2, 2)  # a batch's attention-probability shape
  keys = jax.random.split(jax.random.key(7), 200)
  masks = np.asarray(jax.jit(jax.vmap(lambda k: models.keep_mask(k, rate, shape)))(keys),
                     np.float64)
  q = 1.0 - rate
  n = masks.size
  assert abs(masks.mean() - q) < 5 * math.sqrt(q * (1 - q) / n)
  per_position = masks.reshape(200, -1).mean(0)  # no position is favoured
  z = (per_position - q) / math.sqrt(q * (1 - q) / 200)
  assert np.mean(z ** 2) < 1.3 and np.abs(z).max() < 5.5
  flat = masks.reshape(200, -1) - q
  for lag in (1, 2, 16, 256):  # neighbours in the flat index, and across axes
    corr = (flat[:, :-lag] * flat[:, lag:]).mean() / (q * (1 - q))
    assert abs(corr) < 5 / math.sqrt(flat[:, lag:].size)
  agree = (masks[0] == masks[1]).mean()
  expect = q * q + (1 - q) * (1 - q)
  assert abs(agree - expect) < 5 * math.sqrt(expect * (1 - expect) / masks[0].size)
  again = models.keep_mask(keys[3], rate, shape)
  np.testing.assert_array_equal(np.asarray(again), masks[3].astype(bool))
  assert bool(models.keep_mask(keys[0], 0.0, shape).all())


@pytest.mark.parametrize('overrides', [
    {}, {'layers': 1}, {'layers': 3}, {'task': 'add3'}, {'identical_layers': True},
    {'embed_dim': 32, 'num_heads': 8, 'mlp_dim': 16}])
def test_the_evaluation_path_gives_the_forward_pass_logits(overrides):
  """``Model.predictor`` (layer 0 tabulated per token, the mean pool before the last
  matrix) equals ``apply`` without dropout up to float rounding, and picks the same
  predictions; models without tables use ``apply`` itself."""
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  m = models.Model(experiment.model_config(micro_config(**overrides)))
  params = m.init(jax.random.key(3))
  x_BxK = jax.random.randint(jax.random.key(4), (200, m.cfg.n_ops), 0, m.cfg.vocab)
  want = m.apply(params, x_BxK)
  got = jax.jit(lambda p, x: m.predictor(p)(x))(params, x_BxK)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  assert (jnp.argmax(got, -1) == jnp.argmax(want, -1)).all()
  class Doubled(models.Transformer):  # redefines __call__ only: evaluated through it
    def __call__(self, x_BxK, key=None, return_attn=False):
      return 2 * super().__call__(x_BxK, key)

  import dataclasses  # pylint: disable=g-import-not-at-top
  models.register_model('doubled-test', Doubled, 'a test model')
  try:
    sub = models.Model(dataclasses.replace(m.cfg, kind='doubled-test'))
    np.testing.assert_allclose(sub.predictor(params)(x_BxK), 2 * want, rtol=1e-6)
  finally:
    models.REGISTRY.pop('doubled-test')
  power = models.Model(experiment.model_config(micro_config(model='power')))
  p = power.init(jax.random.key(3))
  x = jax.random.randint(jax.random.key(4), (20, power.cfg.n_ops), 0, power.cfg.vocab)
  assert (power.predictor(p)(x) == power.apply(p, x)).all()
