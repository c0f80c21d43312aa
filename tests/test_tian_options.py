"""Tian's MLP options (issue 16 part 3): ``mlp.other_layers``, ``mlp.set_weight_reg`` and
``mlp.complex_weights``, against numpy and PyTorch, and their validation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tian
from ordered_jax import experiment, models, runs


def _sqr(x):
  return x * x


def test_other_layers_forward_matches_numpy():
  cfg = models.ModelConfig(vocab=7, kind='mlp', mlp_dim=16, other_layers=2)
  m = models.Model(cfg)
  p = m.init(jax.random.key(0))
  x = np.array([[1, 2], [6, 0], [3, 3]])
  w = np.asarray(p['W']['kernel'])
  h = _sqr(np.eye(7)[x[:, 0]] @ w[:7] + np.eye(7)[x[:, 1]] @ w[7:])
  for i in range(2):
    h = _sqr(h + h @ np.asarray(p['others'][i]['kernel']))
  want = h @ np.asarray(p['V']['kernel'])
  np.testing.assert_allclose(np.asarray(m.apply(p, jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


def test_other_layers_zero_keeps_the_weights():
  a = models.Model(models.ModelConfig(vocab=7, kind='mlp', mlp_dim=16)).init(jax.random.key(3))
  b = models.Model(models.ModelConfig(vocab=7, kind='mlp', mlp_dim=16, other_layers=1)).init(
      jax.random.key(3))
  assert 'others' not in a
  np.testing.assert_array_equal(a['W']['kernel'], b['W']['kernel'])
  np.testing.assert_array_equal(a['V']['kernel'], b['V']['kernel'])


def test_ridge_top_is_the_ridge_solution():
  m = models.Model(models.ModelConfig(vocab=5, kind='mlp', mlp_dim=8))
  p = m.init(jax.random.key(1))
  x = np.array(np.meshgrid(range(5), range(5))).reshape(2, -1).T
  y = (x[:, 0] + x[:, 1]) % 5
  mask = np.ones(len(x), bool)
  mask[-3:] = False                                 # padded rows take no part
  lam = 0.05
  got = models.ridge_top(m, p, jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), lam)
  w = np.asarray(p['W']['kernel'], np.float64)
  f = _sqr(np.eye(5)[x[:, 0]] @ w[:5] + np.eye(5)[x[:, 1]] @ w[5:])[mask]
  t = np.eye(5)[y][mask] - 1 / 5
  want = np.linalg.solve(f.T @ f + lam * np.eye(8), f.T @ t)
  np.testing.assert_allclose(np.asarray(got['V']['kernel']), want, rtol=2e-3, atol=2e-4)
  np.testing.assert_array_equal(got['W']['kernel'], p['W']['kernel'])


def test_set_weight_reg_fits_the_training_set_in_one_step(tmp_path):
  """512 random sqr features of 476 training pairs: the ridge V (lambda 1e-3) interpolates
  them, so one full-batch step reaches ~100 % train accuracy; a trained V does not."""
  acc = {}
  for lam in (0.0, 1e-3):
    c = tian.get_config()
    c.epochs = 1
    c.mlp.set_weight_reg = lam
    (summary,) = experiment.run(runs.resolve(c), str(tmp_path / str(lam)), quiet='silent')
    acc[lam] = summary['final_eval']['training_accuracy']
  assert acc[1e-3] > 99 and acc[0.0] < 50, acc


@pytest.mark.parametrize('overrides,field', [
    (dict(set_weight_reg=-1.0), 'mlp.set_weight_reg'),
    (dict(other_layers=-1), 'mlp.other_layers'),
    (dict(other_layers=1, set_weight_reg=0.1), 'mlp.set_weight_reg'),
])
def test_validation(overrides, field):
  c = tian.get_config()
  for k, v in overrides.items():
    c.mlp[k] = v
  with pytest.raises(runs.ConfigError, match=field):
    runs.validate(c)
  c = tian.get_config()
  c.mlp.set_weight_reg = 0.1
  c.loss = 'ce'
  with pytest.raises(runs.ConfigError, match='loss=mse'):
    runs.validate(c)


def test_scaling_figure_from_a_real_sweep(tmp_path):
  """configs/tian_scaling.py shrunk to two points and one seed: the sweep runs, each point
  trains on its critical size in one full batch, and the figure reads the table."""
  from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
  from analysis import scaling  # pylint: disable=g-import-not-at-top
  from configs import tian_scaling  # pylint: disable=g-import-not-at-top
  from ordered_jax import results, sweeper, tasks  # pylint: disable=g-import-not-at-top
  c = tian_scaling.get_config()
  c.epochs = 2
  n = [tasks.critical_train_size(tasks.parse_task('add', 11), delta=d) for d in (0.0, 1.0)]
  c.sweep.zip.p, c.sweep.zip.critical_delta = '11,11', '0.0,1.0'
  c.sweep.zip.batch_size = f'{n[0]},{n[1]}'
  c.sweep.grid.seed = '0'
  sweeper.run(c, str(tmp_path), quiet='silent')
  rows = results.load(str(tmp_path)).to_pylist()
  assert sorted((r['p'], r['critical_delta'], r['batch_size']) for r in rows) == [
      (11, 0.0, n[0]), (11, 1.0, n[1])]
  want = sorted((2.7482 - r['critical_delta'], r['final_validation_accuracy']) for r in rows)
  got = scaling.points(rows)
  assert list(got) == [11] and len(got[11]) == len(want)
  for (x, acc), (wx, wacc) in zip(got[11], want):
    assert x == pytest.approx(wx) and acc == wacc
  out = str(tmp_path / 'scaling.png')
  assert cli.main(['scaling', '--table', str(tmp_path), '--out', out]) == [out]
  with pytest.raises(ValueError, match="no column 'critical_delta'"):
    scaling.points([{'p': 11, 'final_validation_accuracy': 1.0}])


# -- complex weights (Tian's use_complex_weights) -------------------------------------------

def _complex_config(optimizer='adam', lam=0.0):
  c = tian.get_config()
  c.p, c.mlp_dim, c.optimizer = 5, 8, optimizer
  c.mlp.complex_weights, c.mlp.imag_init = True, 0.5
  c.mlp.set_weight_reg = lam
  c.train_fraction, c.batch_size, c.eval_batch_size = 0.8, 20, 25
  return runs.resolve(c)


def _complex_params(w_HxI, v_MxH):
  """Torch's complex W [H, 2M], V [M, H] as our real and imaginary kernels [in, out]."""
  part = lambda a, f: jnp.asarray(f(a).T, jnp.float32)
  return {'W': {'kernel': part(w_HxI, np.real), 'imag': part(w_HxI, np.imag)},
          'V': {'kernel': part(v_MxH, np.real), 'imag': part(v_MxH, np.imag)}}


def test_complex_forward_matches_numpy():
  m = models.Model(models.ModelConfig(vocab=7, kind='mlp', mlp_dim=16, other_layers=1,
                                      complex_weights=True, imag_init=1.0))
  p = m.init(jax.random.key(0))
  assert float(jnp.abs(p['W']['imag']).max()) > 0.05     # imag_init = 1: drawn, not zero
  c = lambda d: np.asarray(d['kernel'], np.complex128) + 1j * np.asarray(d['imag'])
  x = np.array([[1, 2], [6, 0], [3, 3]])
  w = c(p['W'])
  h = _sqr(np.eye(7)[x[:, 0]] @ w[:7] + np.eye(7)[x[:, 1]] @ w[7:])
  h = _sqr(h + h @ c(p['others'][0]))
  want = (h @ c(p['V'])).real
  np.testing.assert_allclose(np.asarray(m.apply(p, jnp.asarray(x))), want, rtol=1e-4, atol=1e-4)


def test_complex_real_parts_are_the_real_networks():
  """The real parts are drawn as the real network's; with Tian's init (imag_init = 0) the
  imaginary parts start at zero and the logits equal the real network's."""
  real = models.Model(models.ModelConfig(vocab=7, kind='mlp', mlp_dim=16))
  cplx = models.Model(models.ModelConfig(vocab=7, kind='mlp', mlp_dim=16, complex_weights=True))
  a, b = real.init(jax.random.key(2)), cplx.init(jax.random.key(2))
  for layer in ('W', 'V'):
    np.testing.assert_array_equal(a[layer]['kernel'], b[layer]['kernel'])
    assert not np.any(np.asarray(b[layer]['imag']))
  x = jnp.array([[1, 2], [6, 0]])
  np.testing.assert_allclose(real.apply(a, x), cplx.apply(b, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name,optimizer,lam', [('adam', 'adam', 0.0), ('sgd', 'sgd', 0.0),
                                                 ('ridge', 'adam', 0.1)])
def test_complex_steps_match_pytorch(name, optimizer, lam):
  """Four full-batch steps against PyTorch's own Adam / SGD on complex parameters
  (tests/data/tian_complex.npz, written by tests/make_complex_fixture.py under torch)."""
  from ordered_jax import optim  # pylint: disable=g-import-not-at-top
  ref = np.load(os.path.join(os.path.dirname(__file__), 'data', 'tian_complex.npz'))
  config = _complex_config(optimizer, lam)
  config.lr, config.weight_decay = float(ref['lr']), float(ref['wd'])
  if lam:
    assert float(ref['lam']) == lam
  trainer = experiment.make_trainer(config)
  params = _complex_params(ref['w0'], ref['v0'])
  state = optim.set_hparams(trainer.tx.init(params), learning_rate=float(ref['lr']),
                            weight_decay=float(ref['wd']))
  pairs = ref['pairs']
  batch = jnp.asarray(np.c_[pairs, pairs.sum(1) % 5], jnp.int32)
  mask = jnp.ones(len(pairs), bool)
  losses = []
  for _ in range(int(ref['steps'])):
    loss, _, params, state = trainer._step(params, state, batch, mask, None)  # pylint: disable=protected-access
    losses.append(float(loss))
  np.testing.assert_allclose(losses, ref[f'{name}_losses'], rtol=1e-4, atol=1e-6)
  want = _complex_params(ref[f'{name}_w'], ref[f'{name}_v'])
  for layer in ('W', 'V'):
    for part in ('kernel', 'imag'):
      np.testing.assert_allclose(params[layer][part], want[layer][part], rtol=1e-4, atol=2e-5,
                                 err_msg=f'{layer}.{part}')


@pytest.mark.parametrize('overrides,field', [
    (dict(complex_weights='yes'), 'mlp.complex_weights'),
    (dict(imag_init=0.5), 'mlp.imag_init'),
    (dict(complex_weights=True, imag_init=-1.0), 'mlp.imag_init'),
    (dict(complex_weights=True, activation='relu'), 'mlp.complex_weights'),
])
def test_complex_validation(overrides, field):
  c = tian.get_config()
  with c.ignore_type():  # as a hand-edited JSON config could hold
    for k, v in overrides.items():
      c.mlp[k] = v
  with pytest.raises(runs.ConfigError, match=field):
    runs.validate(c)


def test_complex_refuses_muon():
  c = tian.get_config()
  c.mlp.complex_weights, c.optimizer = True, 'muon'
  with pytest.raises(runs.ConfigError, match='mlp.complex_weights'):
    runs.validate(c)
