"""Optimisers, Grokfast, L1, MSE, schedules and clipping (docs/optimization.md) against
independent numpy transcriptions of the PyTorch / reference formulas, and end to end."""

import collections
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ordered_jax import experiment, optim, orderings, runs, sinks, tasks, train
from tests.conftest import crash_after_epoch, micro_config, set_fields

RNG = np.random.default_rng(0)
PARAMS = {'w': RNG.normal(size=(4, 3)).astype(np.float32),
          'v': RNG.normal(size=(3, 6)).astype(np.float32),
          'b': RNG.normal(size=(3,)).astype(np.float32)}
GRADS = [{k: RNG.normal(size=v.shape).astype(np.float32) for k, v in PARAMS.items()}
         for _ in range(7)]


def _config(**fields):
  """micro_config with dotted fields set (``grokfast.kind='ema'``)."""
  return set_fields(micro_config(), fields)


def _run_tx(tx, grads_seq, lrs=None, wd=0.0, params=PARAMS):
  """Apply ``tx`` (an ``inject_hyperparams`` optimiser) to ``grads_seq``; lr per step."""
  state = optim.set_hparams(tx.init(params), weight_decay=wd)
  p = jax.tree.map(jnp.asarray, params)
  for t, g in enumerate(grads_seq):
    if lrs is not None:
      state = optim.set_hparams(state, learning_rate=lrs[t])
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, updates)
  return {k: np.asarray(v, np.float64) for k, v in p.items()}, state


# -- optimisers ------------------------------------------------------------------------------

def test_sgd_is_torch_sgd_with_momentum_and_coupled_decay():
  lrs, wd, mom = [0.1, 0.05, 0.2, 0.1], 0.3, 0.9
  got, _ = _run_tx(optim.make_optimizer('sgd', lr=1.0, weight_decay=0.0, momentum=mom),
                   GRADS[:4], lrs=lrs, wd=wd)
  # torch.optim.SGD.step: d = g + wd p; buf = d (first step) else mom buf + d; p -= lr buf.
  p = {k: v.astype(np.float64) for k, v in PARAMS.items()}
  buf = {}
  for t, g in enumerate(GRADS[:4]):
    for k in p:
      d = g[k] + wd * p[k]
      buf[k] = d if t == 0 else mom * buf[k] + d
      p[k] = p[k] - lrs[t] * buf[k]
  for k in p:
    np.testing.assert_allclose(got[k], p[k], rtol=1e-5, atol=1e-6)


def _np_newton_schulz(x, steps=5, coeffs=(3.4445, -4.7750, 2.0315), eps=1e-8):
  transposed = x.shape[0] > x.shape[1]
  if transposed:
    x = x.T
  x = x / (np.linalg.norm(x) + eps)
  a, b, c = coeffs
  for _ in range(steps):
    m = x @ x.T
    x = a * x + (b * m + c * m @ m) @ x
  return x.T if transposed else x


def test_muon_matrices_and_adam_fallback_match_numpy():
  """2-D leaves: Nesterov momentum (beta 0.95), Newton-Schulz, width scale, decoupled decay;
  the 1-D leaf: the AdamW fallback (Nesterov form)."""
  lr, wd, beta, b1, b2, eps = 0.02, 0.1, 0.95, 0.9, 0.999, 1e-8
  got, state = _run_tx(optim.make_optimizer('muon', lr=lr, weight_decay=0.0), GRADS[:3],
                       lrs=[lr] * 3, wd=wd)
  p = {k: v.astype(np.float64) for k, v in PARAMS.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  nu = {k: np.zeros_like(v) for k, v in p.items()}
  for t, g in enumerate(GRADS[:3], start=1):
    for k in p:
      gk = g[k].astype(np.float64)
      if p[k].ndim == 2:
        mu[k] = beta * mu[k] + (1 - beta) * gk
        mu_hat = beta * mu[k] / (1 - beta**(t + 1)) + (1 - beta) * gk / (1 - beta**t)
        rows, cols = p[k].shape
        u = _np_newton_schulz(mu_hat) * math.sqrt(max(1.0, cols / rows))
      else:
        mu[k] = b1 * mu[k] + (1 - b1) * gk
        nu[k] = b2 * nu[k] + (1 - b2) * gk * gk
        mu_hat = b1 * mu[k] / (1 - b1**(t + 1)) + (1 - b1) * gk / (1 - b1**t)
        u = mu_hat / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
      p[k] = p[k] - lr * (u + wd * p[k])
  for k in p:
    np.testing.assert_allclose(got[k], p[k], rtol=2e-4, atol=2e-5)
  # The Adam fallback holds state for the 1-D leaf only.
  adam = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)]
  assert len(adam) == 1 and isinstance(adam[0].mu['w'], optax.MaskedNode)


def test_default_optimisers_keep_their_old_state_layout():
  """No filter and no clipping: AdamW/Adam states are exactly what they were."""
  for name in ('adamw', 'adam'):
    st = optim.make_optimizer(name, lr=1e-3, weight_decay=0.1).init(PARAMS)
    assert set(st.hyperparams) == {'learning_rate', 'weight_decay'}
    assert not any(isinstance(x, (optim.GrokfastEmaState, optim.GrokfastMaState))
                   for x in jax.tree.leaves(st, is_leaf=lambda x: isinstance(x, tuple)))


# -- Grokfast --------------------------------------------------------------------------------

def _torch_ema(grads_seq, alpha, lamb):
  """ironjr/grokfast gradfilter_ema, transcribed (float32 like the torch tensors)."""
  out, buf = [], None
  for g in grads_seq:
    if buf is None:
      buf = {k: v.copy() for k, v in g.items()}
    new = {}
    for k, v in g.items():
      buf[k] = buf[k] * np.float32(alpha) + v * np.float32(1 - alpha)
      new[k] = v + buf[k] * np.float32(lamb)
    out.append(new)
  return out


def _torch_ma(grads_seq, window, lamb):
  """ironjr/grokfast gradfilter_ma (filter_type='mean', warmup=True), transcribed."""
  out, buf = [], {k: collections.deque(maxlen=window) for k in grads_seq[0]}
  for g in grads_seq:
    new = {}
    for k, v in g.items():
      buf[k].append(v)
      new[k] = v
      if len(buf[k]) == window:
        new[k] = v + sum(buf[k]) / len(buf[k]) * np.float32(lamb)
    out.append(new)
  return out


@pytest.mark.parametrize('kind', ['ema', 'ma'])
def test_grokfast_filters_match_the_original_step_by_step(kind):
  if kind == 'ema':
    tx, want = optim.grokfast_ema(0.9, 2.0), _torch_ema(GRADS, 0.9, 2.0)
  else:
    tx, want = optim.grokfast_ma(3, 5.0), _torch_ma(GRADS, 3, 5.0)
  state = tx.init(PARAMS)
  for t, g in enumerate(GRADS):
    out, state = jax.jit(tx.update)(jax.tree.map(jnp.asarray, g), state)
    for k in g:
      np.testing.assert_allclose(np.asarray(out[k]), want[t][k], rtol=1e-5, atol=1e-6)
    if kind == 'ma' and t < 2:  # window not yet full: unchanged
      for k in g:
        np.testing.assert_array_equal(np.asarray(out[k]), g[k])
  if kind == 'ema':  # the first gradient initialised the average: step 1 is (1 + lamb) g
    first, _ = tx.update(jax.tree.map(jnp.asarray, GRADS[0]), tx.init(PARAMS))
    np.testing.assert_allclose(np.asarray(first['w']), 3.0 * GRADS[0]['w'], rtol=1e-6)


def test_grokfast_then_clip_then_optimiser_and_state_in_opt_state():
  """Order: filter the raw gradient, clip the filtered one, then the optimiser (SGD with no
  momentum and lr 1 shows the transformed gradient itself). The buffers are opt state."""
  tx = optim.make_optimizer('sgd', lr=1.0, weight_decay=0.0, momentum=0.0, grokfast='ma',
                            grokfast_window=2, grokfast_lamb=5.0, grad_clip=1.5)
  state = optim.set_hparams(tx.init(PARAMS), learning_rate=1.0)
  filtered = _torch_ma(GRADS[:4], 2, 5.0)
  for t, g in enumerate(GRADS[:4]):
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, PARAMS)
    norm = math.sqrt(sum(float(np.sum(filtered[t][k].astype(np.float64) ** 2)) for k in g))
    for k in g:
      want = filtered[t][k] * min(1.0, 1.5 / norm)
      np.testing.assert_allclose(-np.asarray(updates[k]), want, rtol=1e-5, atol=1e-6)
  ma = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, optim.GrokfastMaState)) if isinstance(x, optim.GrokfastMaState)]
  assert len(ma) == 1 and ma[0].window['w'].shape == (2, 4, 3)
  assert int(ma[0].count) == 2 and int(ma[0].index) == 0


# -- L1 and MSE ------------------------------------------------------------------------------

def test_l1_penalty_value_and_gradient():
  p = {'a': jnp.array([0.0, -1.5, 2.0]), 'b': jnp.array([[0.25, 0.0], [-3.0, 1.0]])}
  val, g = jax.value_and_grad(optim.l1_penalty)(p, 0.01)
  assert float(val) == pytest.approx(0.01 * (3.5 + 4.25), rel=1e-6)
  np.testing.assert_array_equal(np.asarray(g['a']), np.float32(0.01) * np.array([0, -1, 1],
                                                                                np.float32))
  np.testing.assert_array_equal(np.asarray(g['b']),
                                np.float32(0.01) * np.array([[1, 0], [-1, 1]], np.float32))


def test_mse_is_tians_centred_form():
  logits = RNG.normal(size=(5, 7)).astype(np.float32)
  labels = np.array([0, 3, 6, 2, 3])
  o = logits.astype(np.float64) - logits.mean(axis=1, keepdims=True)
  # modular_addition_simple2.compute_loss, loss_type='mse' (per example before the mean)
  tian = (o ** 2).sum(axis=1) - 2 * o[np.arange(5), labels] + 1 - 1.0 / 7
  np.testing.assert_allclose(np.asarray(optim.centred_mse(logits, labels)), tian, rtol=1e-5)


def test_trainer_objective_mse_plus_l1():
  config = _config(loss='mse', l1=1e-3)
  trainer = experiment.make_trainer(config)
  tr, _ = tasks.make_mod_add(config.p, config.train_size, config.test_size, config.seed)
  params = jax.tree.map(lambda x: x[0], trainer.init_state([3], [1e-3], [0.0]).params)
  batch, mask = jnp.asarray(tr[:16]), jnp.arange(16) < 12  # four padded rows
  logits = np.asarray(trainer.model.apply(params, batch[:12, :2]), np.float64)
  o = logits - logits.mean(axis=1, keepdims=True)
  y = tr[:12, 2]
  want = np.mean((o ** 2).sum(1) - 2 * o[np.arange(12), y] + 1 - 1.0 / config.p)
  (total, data), (g_total, g_data) = jax.jit(lambda p: (
      (trainer.loss(p, batch, mask, None), trainer.data_loss(p, batch, mask, None)),
      (jax.grad(trainer.loss)(p, batch, mask, None),
       jax.grad(trainer.data_loss)(p, batch, mask, None))))(params)
  assert float(data) == pytest.approx(want, rel=1e-5)
  l1 = 1e-3 * sum(float(np.abs(np.asarray(x, np.float64)).sum())
                  for x in jax.tree.leaves(params))
  assert float(total) == pytest.approx(want + l1, rel=1e-5)
  for gt, gd, x in zip(jax.tree.leaves(g_total), jax.tree.leaves(g_data),
                       jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(gt) - np.asarray(gd), 1e-3 * np.sign(np.asarray(x)),
                               atol=1e-6)


# -- schedules -------------------------------------------------------------------------------

def _torch_per_step_cosine(lr, min_lr, t_max, n):
  """PyTorch CosineAnnealingLR's recursive form, stepped n - 1 times."""
  eta, out = lr, [lr]
  for e in range(1, n):
    eta = ((1 + math.cos(math.pi * e / t_max)) / (1 + math.cos(math.pi * (e - 1) / t_max)) *
           (eta - min_lr) + min_lr)
    out.append(eta)
  return out


def test_schedules_match_pytorch_schedulers():
  lr, s = 1e-3, 4
  sched = lambda **kw: optim.Schedule(epochs=10, min_lr=1e-5, **kw)
  # cosine (per epoch) is unchanged: optim.cosine_lr.
  for e in (0, 3, 9, 10):
    assert sched().lr(lr, e, 2, s, xp=np) == optim.cosine_lr(e, lr, 1e-5, 10, xp=np)
  # cosine_step: CosineAnnealingLR(T_max = epochs * steps) stepped once per optimiser step.
  torch_steps = _torch_per_step_cosine(lr, 1e-5, 40, 40)
  for e, i in ((0, 0), (0, 3), (2, 1), (9, 3)):
    assert sched(kind='cosine_step').lr(lr, e, i, s, xp=np) == pytest.approx(
        torch_steps[e * s + i], rel=1e-9)
  # step: StepLR(step_size=3, gamma=0.5); exponential: ExponentialLR(0.9), per epoch.
  step_lr, exp_lr = lr, lr
  for e in range(10):
    if e and e % 3 == 0:
      step_lr *= 0.5
    if e:
      exp_lr *= 0.9
    assert sched(kind='step', step_every=3, step_gamma=0.5).lr(lr, e, 1, s, xp=np) == \
        pytest.approx(step_lr, rel=1e-12)
    assert sched(kind='exponential', gamma=0.9).lr(lr, e, 1, s, xp=np) == pytest.approx(
        exp_lr, rel=1e-12)
    assert sched(kind='constant').lr(lr, e, 1, s, xp=np) == lr
  # Linear warm-up over 2 epochs = 8 steps multiplies the schedule by (k + 1) / 8.
  warm = sched(kind='constant', warmup_epochs=2)
  got = [warm.lr(lr, e, i, s, xp=np) for e in range(3) for i in range(s)]
  np.testing.assert_allclose(got, [lr * min(1.0, (k + 1) / 8) for k in range(12)], rtol=1e-12)
  assert not sched().per_step and not sched(kind='step').per_step
  assert sched(kind='cosine_step').per_step and warm.per_step
  # On device (float32) the same values.
  for kw in (dict(kind='cosine_step'), dict(kind='step', step_every=3, step_gamma=0.5),
             dict(kind='exponential', gamma=0.9), dict(kind='cosine', warmup_epochs=2)):
    for e, i in ((0, 0), (1, 2), (7, 3)):
      dev = jax.jit(lambda p, e, i, sc=sched(**kw): sc.lr(p, e, i, s))(
          jnp.float32(lr), jnp.int32(e), jnp.int32(i))
      assert float(dev) == pytest.approx(sched(**kw).lr(lr, e, i, s, xp=np), rel=1e-6)


class _RecordLr:
  """A step probe recording the rate each step saw and the rate in the state after it."""
  name, needs = 'lr_record', frozenset({'steps'})

  def init(self, params):
    del params
    return {'seen': jnp.zeros((4,)), 'state': jnp.zeros((4,))}

  def on_step(self, state, s):
    return {'seen': state['seen'].at[s.step].set(s.learning_rate),
            'state': state['state'].at[s.step].set(s.opt_state.hyperparams['learning_rate'])}

  def on_epoch(self, state, info):
    return state, dict(state), jnp.array(True)


def test_per_step_schedule_sets_the_rate_inside_the_scan():
  config = _config(schedule='cosine_step', warmup_epochs=1, optimizer='sgd')
  probe = _RecordLr()
  trainer = experiment.make_trainer(config, probes=(probe,))
  tr, te = tasks.make_mod_add(config.p, config.train_size, config.test_size, config.seed)
  data = train.make_data(tr, te, config.eval_batch_size)
  spec = jax.device_put(train.RunSpec(
      lr=np.array([2e-3, 1e-3], np.float32), weight_decay=np.zeros(2, np.float32),
      **orderings.spec_parts(config, ['stride'] * 2, [tr] * 2)))
  state = trainer.init_state([3, 3], [2e-3, 1e-3], [0.0, 0.0])
  sched = experiment.schedule(config)
  for epoch in (0, 1):
    state, m = trainer.epoch(state, spec, data, jnp.int32(epoch), do_eval=False,
                             do_probe=True)
    for r, peak in enumerate((2e-3, 1e-3)):
      want = [sched.lr(peak, epoch, i, 4, xp=np) for i in range(4)]
      np.testing.assert_allclose(np.asarray(m['probes']['lr_record/seen'][r]), want, rtol=1e-6)
      np.testing.assert_allclose(np.asarray(m['probes']['lr_record/state'][r]), want,
                                 rtol=1e-6)


# -- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize('field,value,match', [
    ('optimizer', 'rmsprop', 'config.optimizer: must be one of adamw, adam, sgd, muon'),
    ('momentum', 1.0, 'config.momentum: must be <= '),
    ('grokfast.kind', 'kalman', 'config.grokfast.kind: must be one of none, ema, ma'),
    ('grokfast.alpha', 1.0, 'config.grokfast.alpha: must be <= '),
    ('grokfast.lamb_ema', -1.0, 'config.grokfast.lamb_ema: must be >= 0'),
    ('grokfast.window', 0, 'config.grokfast.window: must be >= 1'),
    ('loss', 'nll', 'config.loss: must be one of ce, mse'),
    ('l1', -0.1, 'config.l1: must be >= 0'),
    ('schedule', 'linear', 'config.schedule: must be one of cosine, cosine_step, constant'),
    ('schedule_step.every', 0, 'config.schedule_step.every: must be >= 1'),
    ('schedule_step.gamma', 1.5, 'config.schedule_step.gamma: must be <= 1'),
    ('schedule_gamma', 0.0, 'config.schedule_gamma: must be > 0'),
    ('warmup_epochs', 7, 'config.warmup_epochs: must be <= 6'),
    ('grad_clip', -1.0, 'config.grad_clip: must be >= 0'),
])
def test_bad_values_are_one_line_errors(field, value, match):
  with pytest.raises(runs.ConfigError, match=match) as e:
    runs.validate(_config(**{field: value}))
  assert '\n' not in str(e.value) and str(e.value).startswith(f'config.{field}: ')


# -- end to end ------------------------------------------------------------------------------

E2E = {
    'adamw': dict(schedule='constant', grad_clip=1.0, warmup_epochs=1),
    'adam': dict(**{'grokfast.kind': 'ema'}, l1=1e-4, schedule='exponential',
                 schedule_gamma=0.9),
    'sgd': dict(lr=0.05, loss='mse', schedule='cosine_step', grad_clip=1.0),
    'muon': dict(lr=0.02, **{'grokfast.kind': 'ma', 'grokfast.window': 5}, schedule='step',
                 **{'schedule_step.every': 2, 'schedule_step.gamma': 0.5}),
}


@pytest.fixture(scope='module')
def e2e_runs(tmp_path_factory):
  out = {}
  for name, fields in E2E.items():
    config = _config(optimizer=name, epochs=4, **fields)
    workdir = str(tmp_path_factory.mktemp(name))
    summaries = experiment.run(config, workdir, quiet=True)
    out[name] = (config, workdir, summaries)
  return out


@pytest.mark.parametrize('name', list(E2E))
@pytest.mark.slow
def test_each_optimizer_trains_end_to_end(e2e_runs, name):
  config, workdir, (summary,) = e2e_runs[name]
  assert summary['training']['optimizer'] == name
  assert summary['training']['stop_reason'] in ('completed', 'reached_target_acc')
  rows = sinks.read_jsonl(os.path.join(workdir, 'stride', 'stride.jsonl'))
  assert rows and all(math.isfinite(r['training_metrics/loss']) for r in rows)
  sched = experiment.schedule(config)
  for r in rows:  # the rate of the next epoch's first step
    assert r['training_metrics/learning_rate'] == pytest.approx(
        sched.lr(config.lr, r['epoch'] + 1, 0, 4, xp=np), rel=1e-12)
  assert ('training_metrics/l1_penalty' in rows[0]) == (config.l1 > 0)


@pytest.mark.slow
def test_grokfast_buffers_survive_a_crash_and_resume(e2e_runs, tmp_path, monkeypatch):
  """Muon + Grokfast MA (window 5, not a multiple of the 4 steps per epoch): a run that
  crashes after epoch 3 and resumes from the checkpoint after epoch 2 ends bit-identical."""
  config, ref_dir, _ = e2e_runs['muon']
  workdir = str(tmp_path)
  with crash_after_epoch(monkeypatch, 3):
    experiment.run(config, workdir, quiet=True)
  experiment.run(config, workdir, resume=True, quiet=True)
  ours = sinks.read_jsonl(os.path.join(workdir, 'stride', 'stride.jsonl'))
  assert ours == sinks.read_jsonl(os.path.join(ref_dir, 'stride', 'stride.jsonl'))
  from ordered_jax import checkpoint, models  # pylint: disable=g-import-not-at-top
  model = models.Model(experiment.model_config(config))
  a = checkpoint.load_params(os.path.join(workdir, 'stride'), model)
  b = checkpoint.load_params(os.path.join(ref_dir, 'stride'), model)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
