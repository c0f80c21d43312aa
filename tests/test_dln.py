"""Deep linear networks and the teacher task (issue 16 part 1), against numpy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import budget, experiment, models, runs, teacher
from tests.conftest import micro_config

DLN = models.ModelConfig(kind='dln', vocab=5, n_ops=2, depth=3, width=6, gamma=0.75)


def _np_weights(params):
  """W_1..W_L as numpy [out, in]."""
  return [np.asarray(params['layers'][i]['kernel'], np.float64).T
          for i in sorted(params['layers'])]


def test_dln_forward_matches_numpy_on_floats_and_tokens():
  cfg = models.ModelConfig(kind='dln', vocab=5, n_ops=2, depth=3, width=6, in_dim=4,
                           out_dim=3)
  m = models.Model(cfg)
  params = m.init(jax.random.key(0))
  ws = _np_weights(params)
  assert [w.shape for w in ws] == [(6, 4), (6, 6), (3, 6)]
  x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
  want = x @ ws[0].T @ ws[1].T @ ws[2].T
  np.testing.assert_allclose(m.apply(params, jnp.asarray(x)), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(models.dln_product(params), ws[2] @ ws[1] @ ws[0], rtol=1e-5)
  # integer operands: the one-hots of a and b, concatenated
  m2 = models.Model(DLN)
  p2 = m2.init(jax.random.key(1))
  tok = np.array([[0, 4], [3, 1], [2, 2]], np.int32)
  onehot = np.concatenate([np.eye(5)[tok[:, 0]], np.eye(5)[tok[:, 1]]], axis=1)
  w = _np_weights(p2)
  np.testing.assert_allclose(m2.apply(p2, jnp.asarray(tok)),
                             onehot @ w[0].T @ w[1].T @ w[2].T, rtol=1e-5, atol=1e-6)


def test_dln_init_scale_is_width_to_minus_gamma_over_two():
  cfg = models.ModelConfig(kind='dln', vocab=5, depth=2, width=400, gamma=1.5, in_dim=300,
                           out_dim=200)
  params = models.Model(cfg).init(jax.random.key(2))
  for w in _np_weights(params):
    assert abs(w.std() / 400 ** (-0.75) - 1) < 0.02 and abs(w.mean()) < 0.02 * w.std()
  assert 'bias' not in params['layers'][0]


@pytest.mark.parametrize('depth,width', [(1, 4), (3, 8)])
def test_dln_param_count(depth, width):
  c = micro_config(model='dln')
  with c.unlocked():
    c.dln.depth, c.dln.width = depth, width
  built = models.param_count(models.Model(experiment.model_config(c)).abstract_params())
  assert budget.param_count(c) == built


@pytest.mark.parametrize('field,value,match', [
    ('depth', 0, r'^config\.dln\.depth: must be >= 1'),
    ('width', 0, r'^config\.dln\.width: must be >= 1'),
    ('gamma', -1, r'^config\.dln\.gamma: must be >= 0')])
def test_bad_dln_fields_are_one_line(field, value, match):
  c = micro_config(model='dln')
  with c.unlocked():
    c.dln[field] = value
  with pytest.raises(runs.ConfigError, match=match):
    runs.validate(c)


# -- the teacher task ------------------------------------------------------------------

def _teacher_config(**overrides):
  base = dict(task='teacher:diagonal', model='dln', strategy='random', train_size=12,
              test_size=20, batch_size=12, eval_batch_size=8, optimizer='sgd', momentum=0.0,
              weight_decay=0.0, schedule='constant', lr=0.01, epochs=3)
  c = micro_config(**{**base, **overrides})
  with c.unlocked():
    c.teacher.dim, c.teacher.noise_std = 3, 0.1
    c.dln.depth, c.dln.width, c.dln.gamma = 3, 4, 0.5
  return c


def test_teacher_rows_hold_x_and_w_star_x_bit_for_bit():
  tr, te = teacher.make('diagonal', 3, 2.0, 0.0, 5, 4, seed=7)
  assert tr.dtype == np.int32 and tr.shape == (5, 6) and te.shape == (4, 6)
  x, y = (np.asarray(a) for a in teacher.split(jnp.asarray(te), 3))
  np.testing.assert_array_equal(y, x @ np.diag([2.0, 4.0, 6.0]).astype(np.float32).T)
  assert x.std() > 0.3  # N(0, 1) draws
  w = teacher.matrix('random', 4, 0.5, seed=1)
  assert w.shape == (4, 4) and not np.allclose(w, np.diag(np.diag(w)))
  np.testing.assert_array_equal(w, teacher.matrix('random', 4, 0.5, seed=1))
  noisy, _ = teacher.make('diagonal', 3, 2.0, 0.5, 5, 4, seed=7)
  xn, yn = (np.asarray(a) for a in teacher.split(jnp.asarray(noisy), 3))
  assert 0.05 < np.std(yn - xn @ np.diag([2.0, 4.0, 6.0]).T) < 2.0


def _np_grads(ws, x, y):
  """MSE (mean over rows and outputs) of y ~ W_L..W_1 x and its gradient per W_l."""
  prod = lambda ms: functools.reduce(lambda a, b: b @ a, ms, np.eye(ws[0].shape[1]))  # noqa
  p = functools.reduce(lambda a, b: b @ a, ws)
  r = x @ p.T - y
  g_p = 2.0 / r.size * r.T @ x
  grads = []
  for l in range(len(ws)):
    after = functools.reduce(lambda a, b: b @ a, ws[l + 1:], np.eye(ws[l].shape[0]))
    before = prod(ws[:l])
    grads.append(after.T @ g_p @ before.T)
  return np.mean(r ** 2), grads


def test_full_batch_teacher_epoch_is_one_gradient_step_of_the_mse():
  b = experiment.build(_teacher_config())
  x, y = (np.asarray(a, np.float64) for a in
          teacher.split(b.data.train_NxC, 3))
  ws0 = _np_weights(jax.tree.map(lambda a: a[0], b.state.params))
  loss0, grads = _np_grads(ws0, x, y)
  state, m = b.trainer.epoch(b.state, b.spec, b.data, jnp.int32(0), do_eval=True)
  np.testing.assert_allclose(m['loss'][0], loss0, rtol=1e-5)
  ws1 = _np_weights(jax.tree.map(lambda a: a[0], state.params))
  for w0, g, w1 in zip(ws0, grads, ws1):
    np.testing.assert_allclose(w1, w0 - 0.01 * g, rtol=1e-5, atol=1e-6)
  xt, yt = (np.asarray(a, np.float64) for a in
            teacher.split(b.data.test_chunks.reshape(-1, 6)[:20], 3))
  p1 = functools.reduce(lambda a, c: c @ a, ws1)
  np.testing.assert_allclose(m['validation_loss'][0], np.mean((xt @ p1.T - yt) ** 2), rtol=1e-5)
  np.testing.assert_allclose(m['training_loss'][0], np.mean((x @ p1.T - y) ** 2), rtol=1e-5)
  assert int(m['validation_correct'][0]) == 0


@pytest.mark.parametrize('field,value,match', [
    ('model', 'mlp', r'^config\.model: task .* needs model=dln'),
    ('strategy', 'stride', r'^config\.strategy: task .* has no operands or labels'),
    ('test_size', 0, r'^config\.test_size: must be >= 1 for task'),
    ('teacher.online', 1, r'^config\.teacher\.online: must be true or false'),
    ('teacher.dim', 0, r'^config\.teacher\.dim: must be >= 1')])
def test_bad_teacher_configs_are_one_line(field, value, match):
  c = _teacher_config()
  with c.unlocked():
    if field == 'teacher.online':  # a bool field: ConfigDict refuses the int itself
      c.teacher = {**c.teacher.to_dict(), 'online': 1}
    elif field.startswith('teacher.'):
      c.teacher[field.split('.')[1]] = value
    else:
      c[field] = value
  with pytest.raises(runs.ConfigError, match=match):
    runs.validate(c)


# -- probes: dln weight metrics and gradient noise --------------------------------------

def _np_flat_loss(shapes, x, y):
  """The MSE as a function of the flat float64 parameter vector (W_1..W_L, [out, in])."""
  def f(v):
    ws, i = [], 0
    for s in shapes:
      ws.append(v[i:i + s[0] * s[1]].reshape(s))
      i += s[0] * s[1]
    p = functools.reduce(lambda a, b: b @ a, ws)
    return np.mean((x @ p.T - y) ** 2)
  return f


def _np_grad(f, v, h=1e-6):
  e = np.eye(v.size)
  return np.array([(f(v + h * e[i]) - f(v - h * e[i])) / (2 * h) for i in range(v.size)])


def test_dln_metrics_match_numpy():
  from probes import dln as dln_probes
  params = models.Model(DLN).init(jax.random.key(3))
  ws = _np_weights(params)
  star = np.random.default_rng(0).normal(size=(5, 10))
  m = {k: float(v) for k, v in dln_probes.dln_metrics(params, star).items()}
  fro = np.linalg.norm
  assert np.isclose(m['weight_norm'], np.sqrt(sum(fro(w) ** 2 for w in ws)), rtol=1e-5)
  for l, w in enumerate(ws):
    assert np.isclose(m[f'layer_norm/{l}'], fro(w), rtol=1e-5)
    assert np.isclose(m[f'gram_norm/{l}'], fro(w @ w.T), rtol=1e-5)
  for l in range(2):
    assert np.isclose(m[f'balance/{l}'], fro(ws[l] @ ws[l].T - ws[l + 1].T @ ws[l + 1]),
                      rtol=1e-4)
  assert 'balance/2' not in m
  prod = ws[2] @ ws[1] @ ws[0]
  assert np.isclose(m['effective_norm'], fro(prod), rtol=1e-5)
  assert np.isclose(m['teacher_distance'], fro(prod - star), rtol=1e-5)


@pytest.fixture(scope='module')
def noise_case():
  """A teacher batch, its first run's parameters and numpy's |g|^2, Tr(Sigma), Tr(H Sigma)
  from finite differences (per-example gradients, the Hessian of the mean loss)."""
  b = experiment.build(_teacher_config())
  params = jax.tree.map(lambda a: a[0], b.state.params)
  ws = _np_weights(params)
  x, y = (np.asarray(a, np.float64) for a in teacher.split(b.data.train_NxC, 3))
  shapes = [w.shape for w in ws]
  v = np.concatenate([w.ravel() for w in ws])
  per = np.stack([_np_grad(_np_flat_loss(shapes, x[i:i + 1], y[i:i + 1]), v)
                  for i in range(len(x))])
  g = per.mean(0)
  noise = per - g
  f = _np_flat_loss(shapes, x, y)
  hess = np.stack([_np_grad(lambda u, i=i: _np_grad(f, u, 1e-4)[i], v, 1e-4)
                   for i in range(v.size)])
  want = (g @ g, np.mean(np.sum(noise ** 2, 1)),
          np.mean(np.einsum('ip,pq,iq->i', noise, hess, noise)))
  return b, params, want


@pytest.mark.parametrize('chunk', [5, 64])
def test_gradient_noise_matches_finite_differences(noise_case, chunk):
  from probes import dln as dln_probes
  b, params, (g2, tr, th) = noise_case
  m = dln_probes.gradient_noise(b.trainer.loss, params, b.data.train_NxC, chunk=chunk)
  np.testing.assert_allclose(m['grad_norm_sq'], g2, rtol=1e-3)
  np.testing.assert_allclose(m['trace_sigma'], tr, rtol=1e-3)
  np.testing.assert_allclose(m['trace_h_sigma'], th, rtol=2e-2)
  assert 'trace_h_sigma' not in dln_probes.gradient_noise(
      b.trainer.loss, params, b.data.train_NxC, chunk=chunk, hessian=False)


def test_teacher_run_writes_test_loss_and_dln_probes(tmp_path):
  import json
  import probes
  c = _teacher_config(epochs=2)
  with c.unlocked():
    c.probes.names = 'dln,gradient_noise'
  experiment.run(c, str(tmp_path), quiet=True, probes=probes.build(c))
  rows = [json.loads(l) for l in open(tmp_path / 'random' / 'random.jsonl')]
  last = rows[-1]
  assert last['training_metrics/validation_loss'] > 0
  summary = json.load(open(tmp_path / 'random' / 'summary.json'))
  assert summary['final_eval']['validation_loss'] == pytest.approx(
      last['training_metrics/validation_loss'])
  assert 'validation_loss' in summary['deltas']
  for k in ('dln/teacher_distance', 'dln/balance/1', 'gradient_noise/trace_h_sigma'):
    assert np.isfinite(last[k]), k
  with c.unlocked():
    c.model, c.task, c.strategy = 'mlp', 'add', 'stride'
  with pytest.raises(runs.ConfigError, match=r"^config\.probes\.names: probe 'dln' reads a deep"):
    probes.build(c)


def test_dln_teacher_sweep_and_its_figure(tmp_path):
  """configs/dln_teacher.py shrunk (2 seeds, 20 steps): the sweep runs both batch sizes
  and analysis.dln puts them on one step axis."""
  from analysis import dln as dln_analysis
  from configs import dln_teacher
  from ordered_jax import sweeper
  c = dln_teacher.get_config()
  c.sweep.zip.epochs, c.sweep.grid.seed = '2,20', '0,1'
  c.epochs = 20
  sweeper.run(c, str(tmp_path), quiet='silent')
  data = dln_analysis.curves(str(tmp_path))
  assert sorted(data) == [5, 50]
  for steps, loss in data.values():
    assert loss.shape == (2, len(steps)) and steps[-1] == 20 and np.all(np.diff(steps) > 0)
    assert np.all(loss > 0)
  assert dln_analysis.plot(str(tmp_path), str(tmp_path / 'f.png')).endswith('f.png')


def test_lockstep_on_a_teacher_compares_outputs_and_end_to_end_weights(tmp_path):
  from ordered_jax import checkpoint, lockstep, sinks
  c = _teacher_config(epochs=2, batch_size=4, seeds=(1, 2), lockstep=True, eval_every=1)
  experiment.run(c, str(tmp_path), quiet=True)
  (row,) = [r for r in sinks.read_jsonl(str(tmp_path / lockstep.FILENAME)) if r['epoch'] == 1]
  b = experiment.build(c)
  names = [r.name for r in runs.expand(c)]
  ps = [checkpoint.load_params(str(tmp_path / n), b.trainer.model) for n in names]
  prods = [functools.reduce(lambda a, w: w @ a, _np_weights(p)) for p in ps]
  _, test = teacher.make('diagonal', 3, 1.0, 0.1, 12, 20, seed=runs.expand(c)[0].data_seed)
  x = np.asarray(teacher.split(jnp.asarray(test), 3)[0], np.float64)
  assert 'prediction_disagreement' not in row
  np.testing.assert_allclose(row['effective_distance'], np.linalg.norm(prods[0] - prods[1]),
                             rtol=1e-5)
  np.testing.assert_allclose(row['prediction_mse'],
                             np.mean((x @ prods[0].T - x @ prods[1].T) ** 2), rtol=1e-4)
  assert row['effective_distance'] > 0


def test_online_teacher_steps_on_fresh_batches_of_seed_and_step():
  c = _teacher_config(batch_size=4)
  with c.unlocked():
    c.teacher.online = True
  b = experiment.build(c)
  r = runs.expand(c)[0]
  root = jax.random.fold_in(jax.random.key(r.order_seed), 4)  # train.ONLINE_STREAM
  w_star = np.diag([1.0, 2.0, 3.0])
  ws = _np_weights(jax.tree.map(lambda a: a[0], b.state.params))
  state, m = b.trainer.epoch(b.state, b.spec, b.data, jnp.int32(0), do_eval=False)
  for i in range(3):  # 12 / 4 steps, each on rows drawn from (seed, step)
    rows = teacher.online_rows(jax.random.fold_in(root, i), w_star, 4, 0.1)
    x, y = (np.asarray(a, np.float64) for a in teacher.split(rows, 3))
    _, grads = _np_grads(ws, x, y)
    ws = [w - 0.01 * g for w, g in zip(ws, grads)]
  for want, got in zip(ws, _np_weights(jax.tree.map(lambda a: a[0], state.params))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  offline = experiment.build(_teacher_config(batch_size=4))
  s2, _ = offline.trainer.epoch(offline.state, offline.spec, offline.data, jnp.int32(0),
                                do_eval=False)
  assert not np.allclose(s2.params['layers'][0]['kernel'], state.params['layers'][0]['kernel'])


def test_power_law_and_rotated_teachers():
  w = teacher.matrix('power_law', 4, 2.0, 0, alpha=0.5)
  np.testing.assert_allclose(np.diag(w), 2.0 * np.arange(1, 5) ** -0.5, rtol=1e-6)
  r = teacher.matrix('diagonal', 4, 1.0, 7, rotate=True).astype(np.float64)
  o = teacher.haar_orthogonal(4, 11)
  np.testing.assert_allclose(o @ o.T, np.eye(4), atol=1e-12)
  np.testing.assert_allclose(r, o.T @ np.diag([1.0, 2, 3, 4]) @ o, atol=1e-5)
  np.testing.assert_allclose(np.linalg.eigvalsh(r), [1, 2, 3, 4], atol=1e-5)
  c = _teacher_config()
  with c.unlocked():
    c.teacher.rotate, c.task = True, 'teacher:power_law'
  b = experiment.build(c)
  x, y = (np.asarray(a, np.float64) for a in teacher.split(b.data.test_chunks.reshape(-1, 6)[:20], 3))
  want = teacher.matrix('power_law', 3, 1.0, runs.expand(c)[0].data_seed, rotate=True)
  np.testing.assert_allclose(y, x @ want.T, rtol=1e-5, atol=1e-6)
