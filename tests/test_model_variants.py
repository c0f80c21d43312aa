"""The model families behind ``Model(cfg)``: reference (unchanged), power, mlp, gpt2(_resv)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import models

REF = dict(vocab=13, embed_dim=16, num_heads=2, layers=2, mlp_dim=32)
POWER = models.ModelConfig(kind='power', vocab=7, embed_dim=8, num_heads=2, layers=2, mlp_dim=16,
                           dropout=0.0)
MLP = models.ModelConfig(kind='mlp', vocab=7, mlp_dim=12)


@functools.lru_cache(maxsize=None)
def _jitted(cfg):
  """(model, jit(init), jit(apply)) shared by the tests: one compile per config and shape."""
  m = models.Model(cfg)
  return m, jax.jit(m.init), jax.jit(m.apply, static_argnames='return_attn')


def _equal(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))


def _named(params):
  return {n: np.asarray(x, np.float64)
          for n, x in zip(models.param_names(params), jax.tree.leaves(params))}


def _all_pairs(m, k=2):
  return np.stack(np.meshgrid(*[np.arange(m)] * k, indexing='ij'), -1).reshape(-1, k)


# ---------------------------------------------------------------------------------------
# reference


def test_reference_defaults_are_the_old_model():
  old = models.Model(models.ModelConfig(**REF))
  new = models.Model(models.ModelConfig(**REF, kind='reference', n_ops=2, activation='sqr',
                                        embed_trainable=False, inner_product=False))
  p, q = old.init(jax.random.key(0)), new.init(jax.random.key(0))
  assert _equal(p, q)
  x = jnp.array([[1, 2], [3, 12]])
  assert jnp.array_equal(old.apply(p, x, dropout_key=jax.random.key(1)),
                         new.apply(q, x, dropout_key=jax.random.key(1)))
  # Sums of the pre-change model's init for key 0: the RNG is consumed in the same order.
  got = _named(p)
  for name, want in (('pos_embedding', -13.274463348090649),
                     ('embedding.embedding', 4.2928600534796715),
                     ('layers.0.self_attn.in_proj.kernel', -0.6714602437568828),
                     ('decoder.kernel', -0.7383779287338257)):
    assert got[name].sum() == pytest.approx(want, rel=1e-5, abs=1e-5), name


def test_reference_three_operands():
  cfg = models.ModelConfig(**REF, n_ops=3)
  _, init, apply = _jitted(cfg)
  params = init(jax.random.key(0))
  assert params['pos_embedding'].shape == (3, 16)
  assert models.to_reference(params, cfg)['pos_embedding'].shape == (3, 16)
  logits, attn = apply(params, jnp.array([[1, 2, 3], [4, 5, 6]]), return_attn=True)
  assert logits.shape == (2, 13) and attn.shape == (2, 2, 2, 3, 3)


def test_reference_names_only_for_the_reference():
  for cfg in (POWER, MLP):
    with pytest.raises(ValueError, match="kind 'reference'"):
      models.to_reference(models.Model(cfg).abstract_params(), cfg)


# ---------------------------------------------------------------------------------------
# validation and names


@pytest.mark.parametrize('field,value', [('kind', 'gpt'), ('activation', 'tanh')])
def test_unknown_kind_or_activation_is_rejected(field, value):
  with pytest.raises(ValueError, match=f'^{field} must be one of'):
    models.Model(models.ModelConfig(vocab=5, **{field: value}))
  assert models.MODEL_KINDS == ('reference', 'power', 'mlp', 'gpt2', 'gpt2_resv', 'dln')
  assert models.ACTIVATIONS == ('sqr', 'relu', 'silu', 'relusqr')


def test_param_names():
  p = models.Model(POWER).abstract_params()
  names = models.param_names(p)
  assert len(names) == len(jax.tree.leaves(p)) == 2 + 12 * 2 + 4
  assert 'layers.0.attn.qkv.kernel' in names and 'layers.1.ff2.bias' in names
  assert {'embedding.embedding', 'pos_embedding', 'norm.scale', 'head.kernel'} <= set(names)
  assert models.param_names(models.Model(MLP).abstract_params()) == ['V.kernel', 'W.kernel']
  inner = models.ModelConfig(kind='mlp', vocab=5, mlp_dim=4, n_ops=3, inner_product=True,
                             embed_trainable=True)
  assert models.param_names(models.Model(inner).abstract_params()) == [
      'V.kernel', 'Ws.0.kernel', 'Ws.1.kernel', 'Ws.2.kernel', 'embedding.embedding']
  ref = models.ModelConfig(**REF)
  ref_params = models.Model(ref).abstract_params()
  assert models.param_names(ref_params)[0] == 'decoder.bias'
  layout = models._reference_layout(ref)  # pylint: disable=protected-access
  assert len(models.param_names(ref_params)) == len(layout)


# ---------------------------------------------------------------------------------------
# power


_erf = np.vectorize(math.erf)


def _ln(z, w, b):
  return (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) * w + b


def _numpy_causal_attention(q, k, v, heads):
  """Multi-head causal softmax attention of [B, T, D] queries, keys and values, in numpy."""
  b, t, d = q.shape
  split = lambda a: a.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)  # noqa: E731
  s = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d // heads)
  s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
  s = np.exp(s - s.max(-1, keepdims=True))
  s = s / s.sum(-1, keepdims=True)
  return (s @ split(v)).transpose(0, 2, 1, 3).reshape(b, t, d)


def _numpy_power_forward(p, x, cfg):
  """Eval-mode forward of the Power et al. decoder, written out in float64."""
  v, d, heads = cfg.vocab, cfg.embed_dim, cfg.num_heads
  b, k = x.shape
  seq = np.empty((b, 2 * k), int)
  seq[:, 0::2], seq[:, 1::2], seq[:, -1] = x, v, v + 1  # [a, op, b, (op, c,) =]
  h = p['embedding.embedding'][seq] * math.sqrt(d) + p['pos_embedding']
  for i in range(cfg.layers):
    pre = f'layers.{i}.'
    z = _ln(h, p[pre + 'norm1.scale'], p[pre + 'norm1.bias'])
    qkv = z @ p[pre + 'attn.qkv.kernel'] + p[pre + 'attn.qkv.bias']
    q, kk, vv = np.split(qkv, 3, axis=-1)
    o = _numpy_causal_attention(q, kk, vv, heads)
    h = h + o @ p[pre + 'attn.out.kernel'] + p[pre + 'attn.out.bias']
    z = _ln(h, p[pre + 'norm2.scale'], p[pre + 'norm2.bias'])
    f = z @ p[pre + 'ff1.kernel'] + p[pre + 'ff1.bias']
    f = 0.5 * f * (1 + _erf(f / math.sqrt(2)))  # exact GELU, PyTorch's default
    h = h + f @ p[pre + 'ff2.kernel'] + p[pre + 'ff2.bias']
  return _ln(h[:, -1], p['norm.scale'], p['norm.bias']) @ p['head.kernel'] + p['head.bias']


@pytest.mark.parametrize('n_ops', [2, 3])
def test_power_forward_matches_numpy(n_ops):
  cfg = models.ModelConfig(**{**POWER.__dict__, 'n_ops': n_ops})
  m, init, apply = _jitted(cfg)
  params = init(jax.random.key(4))
  assert params['embedding']['embedding'].shape == (cfg.vocab + 2, cfg.embed_dim)
  assert params['pos_embedding'].shape == (2 * n_ops, cfg.embed_dim)
  x = _all_pairs(cfg.vocab, n_ops)
  want = _numpy_power_forward(_named(params), x, cfg)
  got = np.asarray(apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # [a, op, b, (op, c,) =] with op = vocab = 7 and = is 8
  want = {2: [[3, 7, 4, 8]], 3: [[3, 7, 4, 7, 5, 8]]}[n_ops]
  np.testing.assert_array_equal(m.module(params).tokens(jnp.arange(3, 3 + n_ops)[None]), want)


def test_power_attention_is_causal():
  cfg = models.ModelConfig(**{**POWER.__dict__, 'n_ops': 3})
  _, init, apply = _jitted(cfg)
  params = init(jax.random.key(0))
  x = jnp.array([[1, 2, 3], [4, 5, 6]])
  logits, attn = apply(params, x, return_attn=True)
  assert attn.shape == (2, 2, 2, 6, 6)  # [L, B, H, T, T]
  upper = np.triu(np.ones((6, 6), bool), 1)
  assert not np.asarray(attn)[..., upper].any()  # exactly 0 above the diagonal
  np.testing.assert_allclose(np.asarray(attn.sum(-1)), 1.0, rtol=1e-6)
  # Changing c (position 4) leaves every row before it alone in every layer: layer 2's rows
  # are functions of layer 1's hidden states at positions <= row.
  logits2, attn2 = apply(params, x.at[:, 2].set(0), return_attn=True)
  np.testing.assert_array_equal(np.asarray(attn2[:, :, :, :4]), np.asarray(attn[:, :, :, :4]))
  assert not np.array_equal(np.asarray(attn2[:, :, :, 4:]), np.asarray(attn[:, :, :, 4:]))
  assert not np.array_equal(np.asarray(logits2), np.asarray(logits))


def test_power_dropout_is_keyed():
  _, init, apply = _jitted(models.ModelConfig(**{**POWER.__dict__, 'dropout': 0.3}))
  params = init(jax.random.key(0))
  x = jnp.array([[1, 2], [3, 4], [5, 6]])
  off = apply(params, x)
  assert jnp.array_equal(off, apply(params, x))
  on = apply(params, x, dropout_key=jax.random.key(1))
  assert jnp.array_equal(on, apply(params, x, dropout_key=jax.random.key(1)))
  assert not jnp.array_equal(on, off)
  assert not jnp.array_equal(on, apply(params, x, dropout_key=jax.random.key(2)))
  # dropout 0: a key changes nothing
  _, _, apply0 = _jitted(POWER)
  assert jnp.array_equal(apply0(params, x), apply0(params, x, dropout_key=jax.random.key(1)))


def test_power_initialisation_follows_pytorch_defaults():
  cfg = models.ModelConfig(kind='power', vocab=97, embed_dim=64, num_heads=4, layers=1,
                           mlp_dim=128)
  p = _named(_jitted(cfg)[1](jax.random.key(0)))
  assert abs(p['embedding.embedding'].std() - 1.0) < 0.05  # nn.Embedding: N(0, 1)
  for name, fan_in in (('layers.0.attn.qkv', 64), ('layers.0.attn.out', 64),
                       ('layers.0.ff1', 64), ('layers.0.ff2', 128), ('head', 64)):
    for leaf in ('kernel', 'bias'):
      w = p[f'{name}.{leaf}']
      assert 0.8 / math.sqrt(fan_in) < np.abs(w).max() <= 1 / math.sqrt(fan_in), name
  assert (p['norm.scale'] == 1).all() and not p['layers.0.norm1.bias'].any()


# ---------------------------------------------------------------------------------------
# mlp

_NP_ACT = {'sqr': np.square, 'relu': lambda z: np.maximum(z, 0),
           'silu': lambda z: z / (1 + np.exp(-z)), 'relusqr': lambda z: np.maximum(z, 0) ** 2}


@pytest.mark.parametrize('activation', models.ACTIVATIONS)
@pytest.mark.parametrize('n_ops', [2, 3])
def test_mlp_forward_is_the_one_hot_matmul(activation, n_ops):
  cfg = models.ModelConfig(**{**MLP.__dict__, 'activation': activation, 'n_ops': n_ops})
  m, init, apply = _jitted(cfg)
  params = init(jax.random.key(1))
  x = _all_pairs(cfg.vocab, n_ops)
  p = _named(params)
  one_hot = np.concatenate([np.eye(cfg.vocab)[x[:, i]] for i in range(n_ops)], axis=1)
  want = _NP_ACT[activation](one_hot @ p['W.kernel']) @ p['V.kernel']
  got = np.asarray(apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # the gather equals the explicit float32 one-hot matmul in JAX too
  hidden = jax.jit(lambda p, x: m.module(p).hidden(x))(params, jnp.asarray(x))
  explicit = models._ACTIVATION_FNS[activation](  # pylint: disable=protected-access
      jnp.asarray(one_hot, jnp.float32) @ params['W']['kernel'])
  np.testing.assert_allclose(np.asarray(hidden), np.asarray(explicit), rtol=1e-6, atol=1e-6)


def test_mlp_inner_product():
  cfg = models.ModelConfig(**{**MLP.__dict__, 'n_ops': 3, 'inner_product': True})
  _, init, apply = _jitted(cfg)
  params = init(jax.random.key(2))
  x = _all_pairs(cfg.vocab, 3)
  p = _named(params)
  eye = np.eye(cfg.vocab)
  hidden = np.prod([eye[x[:, i]] @ p[f'Ws.{i}.kernel'] for i in range(3)], axis=0)
  np.testing.assert_allclose(np.asarray(apply(params, jnp.asarray(x))),
                             hidden @ p['V.kernel'], rtol=1e-5, atol=1e-6)


def test_mlp_initialisation_and_no_dropout():
  cfg = models.ModelConfig(kind='mlp', vocab=31, mlp_dim=64, dropout=0.5)
  _, init, apply = _jitted(cfg)
  params = init(jax.random.key(0))
  for name, fan_in in (('W', 2 * 31), ('V', 64)):
    w = np.asarray(params[name]['kernel'])
    assert 0.9 / math.sqrt(fan_in) < np.abs(w).max() <= 1 / math.sqrt(fan_in), name
  assert params['W']['kernel'].shape == (62, 64) and params['V']['kernel'].shape == (64, 31)
  x = jnp.array([[1, 2], [30, 0]])
  assert jnp.array_equal(apply(params, x), apply(params, x, dropout_key=jax.random.key(1)))
  logits, attn = apply(params, x, return_attn=True)
  assert attn is None and logits.shape == (2, 31)


@pytest.mark.parametrize('inner', [False, True])
def test_mlp_trainable_embedding(inner):
  fixed_cfg = models.ModelConfig(**{**MLP.__dict__, 'inner_product': inner})
  cfg = models.ModelConfig(**{**fixed_cfg.__dict__, 'embed_trainable': True})
  _, fixed_init, fixed_apply = _jitted(fixed_cfg)
  m, init, apply = _jitted(cfg)
  fixed_params = fixed_init(jax.random.key(3))
  assert 'embedding' not in fixed_params
  params = init(jax.random.key(3))
  np.testing.assert_array_equal(params['embedding']['embedding'], np.eye(cfg.vocab))
  x = jnp.asarray(_all_pairs(cfg.vocab))
  y = (x.sum(1) % cfg.vocab)
  # identity init: the same function as the fixed one-hot model with the same W, V
  rest = {k: v for k, v in params.items() if k != 'embedding'}
  np.testing.assert_allclose(np.asarray(apply(params, x)), np.asarray(fixed_apply(rest, x)),
                             rtol=1e-6, atol=1e-6)

  def loss(p):
    logits = m.apply(p, x)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1).mean()

  grads = jax.jit(jax.grad(loss))(params)
  assert float(jnp.abs(grads['embedding']['embedding']).sum()) > 0
  w_grad = grads['Ws'][0]['kernel'] if inner else grads['W']['kernel']
  assert float(jnp.abs(w_grad).sum()) > 0
  # a non-identity embedding is applied as E[x] before W
  e = np.asarray(jax.random.normal(jax.random.key(4), (cfg.vocab, cfg.vocab)))
  params = {**params, 'embedding': {'embedding': jnp.asarray(e, jnp.float32)}}
  p = _named(params)
  xs = np.asarray(x)
  if inner:
    hidden = np.prod([e[xs[:, i]] @ p[f'Ws.{i}.kernel'] for i in range(2)], axis=0)
  else:
    hidden = np.square(np.concatenate([e[xs[:, 0]], e[xs[:, 1]]], 1) @ p['W.kernel'])
  np.testing.assert_allclose(np.asarray(apply(params, x)), hidden @ p['V.kernel'],
                             rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# all kinds


@pytest.mark.parametrize('cfg', [
    models.ModelConfig(**REF), POWER, MLP,
    models.ModelConfig(kind='mlp', vocab=7, mlp_dim=12, inner_product=True, embed_trainable=True,
                       n_ops=3)], ids=['reference', 'power', 'mlp', 'mlp-inner-3'])
def test_vmap_over_runs(cfg):
  m, init, apply = _jitted(cfg)
  keys = jax.random.split(jax.random.key(0), 3)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[init(k) for k in keys])
  if cfg.kind == 'mlp':  # vmapped init is the same stack (cheap enough to check here)
    assert _equal(jax.jit(jax.vmap(m.init))(keys), stacked)
  x = jnp.asarray(_all_pairs(cfg.vocab, cfg.n_ops)[:5])
  got = jax.jit(jax.vmap(m.apply, in_axes=(0, None)))(stacked, x)
  assert got.shape == (3, 5, cfg.vocab)
  for r in range(3):
    one = apply(jax.tree.map(lambda a, r=r: a[r], stacked), x)
    np.testing.assert_allclose(np.asarray(got[r]), np.asarray(one), rtol=1e-5, atol=1e-5)
  assert not np.allclose(np.asarray(got[0]), np.asarray(got[1]))


# ---------------------------------------------------------------------------------------
# gpt2, gpt2_resv (issue 16 part 2)

GPT2_CASES = {
    'tied': models.ModelConfig(kind='gpt2', vocab=7, embed_dim=8, num_heads=2, layers=3,
                               mlp_dim=16, dropout=0.0),
    'untied': models.ModelConfig(kind='gpt2', vocab=7, embed_dim=8, num_heads=2, layers=2,
                                 mlp_dim=16, dropout=0.0, tied_head=False),
    'resformer': models.ModelConfig(kind='gpt2_resv', vocab=7, embed_dim=8, num_heads=2,
                                    layers=3, mlp_dim=16, dropout=0.0),
    'svformer': models.ModelConfig(kind='gpt2_resv', vocab=7, embed_dim=8, num_heads=2,
                                   layers=3, mlp_dim=16, dropout=0.0, value_mode='svformer'),
}


def _numpy_gpt2_forward(p, x, cfg, lams):
  """Eval-mode forward of the GPT-2 family, written out in float64; ``lams`` the ResFormer
  mixing scalars of layers 1.. (ignored otherwise)."""
  v, d, heads = cfg.vocab, cfg.embed_dim, cfg.num_heads
  b, k = x.shape
  seq = np.empty((b, 2 * k), int)
  seq[:, 0::2], seq[:, 1::2], seq[:, -1] = x, v, v + 1
  h = p['embedding.embedding'][seq] + p['pos_embedding']
  v0 = None
  for i in range(cfg.layers):
    pre = f'layers.{i}.'
    z = _ln(h, p[pre + 'norm1.scale'], p[pre + 'norm1.bias'])
    proj = z @ p[pre + 'attn.qkv.kernel'] + p[pre + 'attn.qkv.bias']
    if cfg.kind == 'gpt2_resv' and cfg.value_mode == 'svformer' and i > 0:
      q, kk = np.split(proj, 2, axis=-1)
      vv = v0
    else:
      q, kk, vv = np.split(proj, 3, axis=-1)
      if cfg.kind == 'gpt2_resv' and i > 0:
        vv = lams[i] * vv + (1 - lams[i]) * v0
    v0 = vv if i == 0 else v0
    o = _numpy_causal_attention(q, kk, vv, heads)
    h = h + o @ p[pre + 'attn.out.kernel'] + p[pre + 'attn.out.bias']
    z = _ln(h, p[pre + 'norm2.scale'], p[pre + 'norm2.bias'])
    f = z @ p[pre + 'fc1.kernel'] + p[pre + 'fc1.bias']
    f = 0.5 * f * (1 + np.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f**3)))  # GPT-2's GELU
    h = h + f @ p[pre + 'fc2.kernel'] + p[pre + 'fc2.bias']
  z = _ln(h[:, -1], p['norm.scale'], p['norm.bias'])
  head = p['embedding.embedding'][:v].T if cfg.tied_head else p['head.kernel']
  return z @ head


@pytest.mark.parametrize('case', sorted(GPT2_CASES))
def test_gpt2_forward_matches_numpy(case):
  cfg = GPT2_CASES[case]
  _, init, apply = _jitted(cfg)
  params = init(jax.random.key(5))
  if case == 'resformer':  # move the mixing scalars off their 0.5 start so they matter
    for i in (1, 2):
      params['layers'][i]['attn']['lam'] = jnp.float32(0.2 + 0.3 * i)
  named = _named(params)
  lams = {i: named.get(f'layers.{i}.attn.lam') for i in range(cfg.layers)}
  if case == 'svformer':
    assert named['layers.1.attn.qkv.kernel'].shape == (8, 16)   # no value projection
  x = _all_pairs(cfg.vocab)
  want = _numpy_gpt2_forward(named, x, cfg, lams)
  got = np.asarray(apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('case', ['tied', 'svformer'])
def test_gpt2_attention_is_causal(case):
  cfg = models.ModelConfig(**{**GPT2_CASES[case].__dict__, 'n_ops': 3})
  _, init, apply = _jitted(cfg)
  params = init(jax.random.key(0))
  x = jnp.array([[1, 2, 3], [4, 5, 6]])
  logits, attn = apply(params, x, return_attn=True)
  upper = np.triu(np.ones((6, 6), bool), 1)
  assert not np.asarray(attn)[..., upper].any()
  logits2, attn2 = apply(params, x.at[:, 2].set(0), return_attn=True)  # c sits at position 4
  np.testing.assert_array_equal(np.asarray(attn2[:, :, :, :4]), np.asarray(attn[:, :, :, :4]))
  assert not np.array_equal(np.asarray(logits2), np.asarray(logits))


def test_gpt2_initialisation_is_gpt2s():
  cfg = models.ModelConfig(kind='gpt2', vocab=97, embed_dim=64, num_heads=4, layers=2,
                           mlp_dim=256)
  p = _named(_jitted(cfg)[1](jax.random.key(0)))
  assert abs(p['embedding.embedding'].std() - 0.02) < 0.002
  assert abs(p['layers.0.fc1.kernel'].std() - 0.02) < 0.002
  assert abs(p['layers.0.fc2.kernel'].std() - 0.02 / 2) < 0.001   # 0.02 / sqrt(2 L)
  assert not p['layers.0.fc1.bias'].any() and 'head.kernel' not in p
