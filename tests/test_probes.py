"""Probes against independent computations, and the framework's guarantees."""

import dataclasses
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import probes
from ordered_jax import checkpoint, experiment, instrument, models, sinks, train
from probes import common, curvature, dynamics, fourier, gradients, weights
from tests.conftest import (LAPACK_PRIMITIVES, epoch_info, jaxpr_primitive_counts,
                            jaxpr_primitives, micro_config)

CFG = models.ModelConfig(vocab=13, embed_dim=8, num_heads=2, layers=2, mlp_dim=16)
MODEL = models.Model(CFG)


def _tree(seed):
  return MODEL.init(jax.random.key(seed))


def _numpy_flat_non_bias(tree):
  sd = {k: np.asarray(v, np.float64) for k, v in models.to_reference(tree, CFG).items()}
  return np.concatenate([sd[k].ravel() for k in sorted(sd) if 'bias' not in k]), sd


def _info(**kw):
  return epoch_info(**{'apply': MODEL.apply, **kw})


def _host(probe, m):
  """A probe's metrics as the experiment writes them (through ``to_host``)."""
  return probe.to_host({k: np.asarray(v) for k, v in m.items()})


def test_norms_match_numpy():
  g = _tree(1)
  _, m, present = gradients.Norms(CFG).on_epoch({}, _info(grad_mean=g))
  flat, sd = _numpy_flat_non_bias(g)
  assert bool(present)
  assert float(m['total_norm']) == pytest.approx(np.linalg.norm(flat), rel=1e-5)
  assert float(m['max_component']) == pytest.approx(np.abs(flat).max(), rel=1e-6)
  assert float(m['mean_component']) == pytest.approx(np.abs(flat).mean(), rel=1e-5)
  assert float(m['norm_embedding.weight']) == pytest.approx(
      np.linalg.norm(sd['embedding.weight']), rel=1e-5)
  assert not any('bias' in k for k in m)
  assert 'norm_transformer.layers.1.linear2.weight' in m


def test_consecutive_cosine_and_first_epoch_absent():
  probe = gradients.Consecutive(CFG)
  g1, g2 = _tree(1), _tree(2)
  state = probe.init(g1)
  state, _, present = probe.on_epoch(state, _info(grad_mean=g1))
  assert not bool(present)
  _, m, present = probe.on_epoch(state, _info(grad_mean=g2))
  a, b = _numpy_flat_non_bias(g1)[0], _numpy_flat_non_bias(g2)[0]
  want = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)
  assert bool(present) and float(m['cos_sim']) == pytest.approx(want, rel=1e-4)
  assert float(m['angle_degrees']) == pytest.approx(math.degrees(math.acos(want)), rel=1e-4)


def _numpy_spectrum(w):
  power = (np.abs(np.fft.fft(np.asarray(w, np.float64), axis=0)) ** 2).mean(axis=1)
  return power / (power.sum() + 1e-8)


def test_fourier_matches_numpy_and_tracks_frequencies():
  cfg = models.ModelConfig(vocab=61, embed_dim=8, num_heads=2, layers=2, mlp_dim=16)
  p = cfg.vocab
  params = models.Model(cfg).init(jax.random.key(3))
  t = np.arange(p)[:, None]
  # Make the embedding a strong frequency-3 signal plus a little noise.
  emb = np.cos(2 * np.pi * 3 * t / p) * np.ones((1, 8)) + 0.01 * np.asarray(
      params['embedding']['embedding'])
  params = {**params, 'embedding': {'embedding': jnp.asarray(emb, jnp.float32)}}
  probe = fourier.Fourier(cfg)
  state, m, _ = probe.on_epoch(probe.init(params), _info(params=params))
  ph = _numpy_spectrum(emb)
  tau = 10 / p
  assert float(m['low_freq_power']) == pytest.approx(ph[:max(p // 20, 10)].sum(), rel=1e-4)
  assert float(m['spectral_entropy']) == pytest.approx(
      -(ph * np.log(ph + 1e-12)).sum() / math.log(p), rel=1e-4)
  assert int(m['peak_frequency']) == 3 == 1 + int(np.argmax(ph[1:p // 2]))
  assert int(m['n_significant_freqs']) == int((ph > tau).sum()) == 2  # k = 3 and p - 3
  s = math.isqrt(p)
  assert float(m['stride_harmonic_power']) == pytest.approx(
      sum(ph[k * s] for k in range(1, min(10, p // s))), rel=1e-4, abs=1e-9)
  dec = np.asarray(params['decoder']['kernel']).T
  dph = _numpy_spectrum(dec)
  assert float(m['decoder_spectral_entropy']) == pytest.approx(
      -(dph * np.log(dph + 1e-12)).sum() / math.log(p), rel=1e-4)
  sd = models.to_reference(params, cfg)
  top1, ent = [], []
  for i in range(cfg.layers):
    r = np.asarray(sd[f'transformer.layers.{i}.linear1.weight'], np.float64) @ emb.T
    pw = np.abs(np.fft.fft(r, axis=1))[:, 1:p // 2 + 1] ** 2
    q = pw / (pw.sum(1, keepdims=True) + 1e-8)
    top1.append(q.max(1).mean())
    ent.append((-(q * np.log(q + 1e-12)).sum(1) / math.log(p // 2)).mean())
  assert float(m['neuron_fourier_top1']) == pytest.approx(np.mean(top1), rel=1e-3)
  assert float(m['neuron_fourier_entropy']) == pytest.approx(np.mean(ent), rel=1e-3)
  host = probe.to_host({k: np.asarray(v) for k, v in m.items()})
  assert host['newly_acquired_freqs'] == [3] and list(host['freq_powers']) == ['3']
  assert host['freq_powers']['3'] == pytest.approx(ph[3], abs=2e-7)  # rounded to 8 places
  _, m2, _ = probe.on_epoch(state, _info(params=params))  # nothing new the second time
  assert 'newly_acquired_freqs' not in probe.to_host({k: np.asarray(v) for k, v in m2.items()})
  assert int(m2['n_tracked_freqs']) == 1


def _step(i, before, after, grads, loss, lr=1e-2, epoch=0):
  return instrument.StepInfo(step=jnp.int32(i), params_before=before, params_after=after,
                             grads=grads, loss=jnp.float32(loss), learning_rate=jnp.float32(lr),
                             epoch=jnp.int32(epoch))


def test_step_probes_match_numpy():
  thetas = [_tree(s) for s in range(4)]
  grads = [_tree(10 + s) for s in range(3)]
  losses = [2.0, 1.5, 1.7]
  flat = lambda t: np.asarray(ravel_pytree(t)[0], np.float64)
  path, diag = dynamics.PathLength(), dynamics.TrainingDiagnostics(steps_per_epoch=3)
  ps, ds = path.init(thetas[0]), diag.init(thetas[0])
  for i in range(3):
    s = _step(i, thetas[i], thetas[i + 1], grads[i], losses[i])
    ps, ds = path.on_step(ps, s), diag.on_step(ds, s)
  _, m, _ = path.on_epoch(ps, _info(params=thetas[3]))
  # The reference's path starts after the run's first step: theta_1 is the origin.
  want_path = sum(np.linalg.norm(flat(thetas[i + 1]) - flat(thetas[i])) for i in (1, 2))
  net = np.linalg.norm(flat(thetas[3]) - flat(thetas[1]))
  assert float(m['net_displacement']) == pytest.approx(net, rel=1e-5)
  assert float(m['path_length']) == pytest.approx(want_path, rel=1e-5)
  assert float(m['path_efficiency']) == pytest.approx(net / want_path, rel=1e-5)
  _, m, _ = diag.on_epoch(ds, _info())
  loss = np.array(losses)
  d = loss - loss.mean()
  g = np.array([np.linalg.norm(flat(x)) for x in grads])
  w = np.array([np.linalg.norm(flat(x)) for x in thetas[1:]])
  assert float(m['loss_std']) == pytest.approx(loss.std(ddof=1), rel=1e-5)
  assert float(m['loss_autocorrelation']) == pytest.approx((d[:-1] * d[1:]).sum() / (d * d).sum(),
                                                           rel=1e-5)
  assert float(m['grad_norm_cv']) == pytest.approx(g.std(ddof=1) / g.mean(), rel=1e-4)
  assert float(m['update_ratio_mean']) == pytest.approx((1e-2 * g / w).mean(), rel=1e-5)
  assert float(m['weight_norm']) == pytest.approx(w[-1], rel=1e-5)
  delta = dynamics.ParameterDelta()
  st, _, present = delta.on_epoch(delta.init(thetas[0]), _info(params=thetas[1]))
  assert not bool(present)  # as the reference, the first firing only stores its weights
  _, m, _ = delta.on_epoch(st, _info(params=thetas[2]))
  assert float(m['absolute_delta']) == pytest.approx(
      np.linalg.norm(flat(thetas[2]) - flat(thetas[1])), rel=1e-5)


# -- curvature against the explicit Hessian ---------------------------------------------

TINY = models.ModelConfig(vocab=5, embed_dim=4, num_heads=1, layers=1, mlp_dim=4)


@pytest.fixture(scope='module')
def dense():
  model = models.Model(TINY)
  params = model.init(jax.random.key(0))
  x = jnp.array([[a, b] for a in range(5) for b in range(5)])
  abc = jnp.concatenate([x, (x.sum(1, keepdims=True) % 5)], axis=1)
  trainer = train.Trainer(model, train.Hyper(batch_size=8, epochs=1, min_lr=0.0,
                                             target_correct=1))
  flat, unravel = ravel_pytree(params)
  loss = lambda f: trainer.loss(unravel(f), abc, jnp.ones((25,), bool), None)
  h = jax.jit(jax.hessian(loss))(flat)  # compiled: op-by-op it took 20 s
  return flat, loss, np.asarray(h, np.float64), trainer, abc, unravel


def test_hvp_equals_the_explicit_hessian(dense):
  flat, loss, h, *_ = dense
  v = jax.random.normal(jax.random.key(1), flat.shape)
  hv = jax.jit(lambda v: curvature.hvp(loss, flat, v))(v)
  np.testing.assert_allclose(np.asarray(hv), h @ np.asarray(v), rtol=1e-4, atol=1e-5)


def test_lanczos_and_hutchinson_against_eigvalsh(dense):
  flat, loss, h, *_ = dense
  dim = flat.shape[0]
  eig = np.linalg.eigvalsh(h)
  matvec = lambda v: curvature.hvp(loss, flat, v)
  ritz = np.asarray(curvature.lanczos(matvec, dim, 30, jax.random.key(2)))
  assert ritz[-1] == pytest.approx(eig[-1], rel=1e-3)
  assert ritz[-2] == pytest.approx(eig[-2], rel=1e-2)
  est = float(curvature.hutchinson_trace(matvec, dim, 2000, jax.random.key(3)))
  assert est == pytest.approx(np.trace(h), rel=0.1)


def test_curvature_probe_and_adam_preconditioning(dense):
  flat, loss, h, trainer, abc, unravel = dense
  params = unravel(flat)
  opt_state = trainer.tx.init(params)
  nu = jax.tree.map(lambda x: jnp.full_like(x, 4.0), params)  # v_hat = 4 / (1 - b2)
  inner = opt_state.inner_state
  opt_state = opt_state._replace(inner_state=(inner[0]._replace(nu=nu, count=jnp.int32(1)),)
                                 + tuple(inner[1:]))
  probe = curvature.Curvature(batch_size=25, k=2, lanczos_steps=flat.shape[0],
                              hutchinson_samples=4)
  _, m, _ = probe.on_epoch({}, _info(params=params, opt_state=opt_state, train_NxC=abc,
                                     loss_fn=trainer.loss, learning_rate=jnp.float32(0.1)))
  eig = np.linalg.eigvalsh(h)
  assert float(m['lambda_max']) == pytest.approx(eig[-1], rel=1e-3)
  np.testing.assert_allclose(np.asarray(m['top_eigenvalues']), eig[::-1][:2], rtol=1e-3)
  assert float(m['edge_of_stability_ratio']) == pytest.approx(eig[-1] * 0.1 / 2, rel=1e-3)
  scale = 1 / (np.sqrt(4.0 / (1 - 0.999)) + 1e-8)
  assert float(m['preconditioned_lambda_max']) == pytest.approx(eig[-1] * scale, rel=1e-3)


@pytest.mark.parametrize('spe,n,every,epochs', [(14, 1000, 10, 400), (4, 10, 3, 31),
                                                 (1172, 1000, 10, 60), (7, 7, 1, 12)])
def test_curvature_fires_once_per_every_n_steps(spe, n, every, epochs):
  """At the first probe epoch at or after each multiple of n steps (epoch 0 included), by
  brute force over the run's probe epochs (the last epoch is one too)."""
  probe = curvature.Curvature(every_n_steps=n, steps_per_epoch=spe, probe_every=every)
  probe_epochs = sorted({e for e in range(epochs) if e % every == 0} | {epochs - 1})
  want, last = [], None
  for e in probe_epochs:
    if last is None or any(last < m <= e * spe for m in range(0, e * spe + 1, n)):
      want.append(e)
    last = e * spe
  got = [e for e in probe_epochs if bool(probe.fires(jnp.int32(e)))]
  assert got == want
  assert curvature.Curvature().fires(jnp.int32(5))  # every_n_steps = 0: every probe epoch


# -- the framework -------------------------------------------------------------------------


def test_build_groups_and_errors():
  c = micro_config()
  assert probes.build(c) == []
  c.probes.group = 'observers'
  assert [p.name for p in probes.build(c)] == list(probes.OBSERVERS)
  c.probes.names = 'curvature, norms'
  assert [p.name for p in probes.build(c)][-1] == 'curvature'
  c.probes.names = 'counterfactuals'
  with pytest.raises(Exception, match=r"config\.probes\.names: unknown probe "
                     r"'counterfactuals'; available: .*counterfactual_validator"):
    probes.build(c)
  c.probes.names = ''
  c.probes.group = 'interventions'
  assert [p.name for p in probes.build(c)] == ['hessian', 'counterfactual', 'adam_dynamics']
  c.optimizer = 'sgd'
  assert [p.name for p in probes.build(c)] == ['hessian', 'counterfactual']
  c.probes.names = 'adam_dynamics'
  with pytest.raises(Exception, match=r"config\.probes\.names: probe 'adam_dynamics' reads"):
    probes.build(c)
  c.probes.names, c.optimizer = '', 'adamw'
  c.probes.counterfactual.k = 0
  with pytest.raises(Exception, match=r'config\.probes\.counterfactual\.k: must be'):
    probes.build(c)
  c.probes.counterfactual.k = 3
  c.probes.counterfactual.parallel = -1
  with pytest.raises(Exception, match=r'config\.probes\.counterfactual\.parallel: must be'):
    probes.build(c)
  c.probes.counterfactual.parallel = 1
  c.probes.curvature.every_n_steps = -5
  with pytest.raises(Exception, match=r'config\.probes\.curvature\.every_n_steps: must be'):
    probes.build(c)
  c.probes.curvature.every_n_steps = 0
  c.probes.group = 'everything'
  with pytest.raises(Exception, match=r'config\.probes\.group'):
    probes.build(c)
  c.probes.group = 'none'
  c.probes.hessian.burst_length = 0
  with pytest.raises(Exception, match=r'config\.probes\.hessian\.burst_length'):
    probes.build(c)


@pytest.fixture(scope='module')
def probed(tmp_path_factory):
  """The same two-run batch with every probe and with none."""
  out = {}
  for label, group in (('plain', 'none'), ('full', 'full')):
    c = micro_config(strategy='stride,random', probe_every=2)
    c.probes.group = group
    c.probes.curvature.batch_size = 32
    c.probes.curvature.lanczos_steps = 6
    d = str(tmp_path_factory.mktemp(label))
    experiment.run(c, d, quiet=True, probes=probes.build(c))
    out[label] = (c, d)
  return out


@pytest.mark.slow
def test_probes_never_change_the_trajectory(probed):
  (c, plain), (_, full) = probed['plain'], probed['full']
  model = models.Model(experiment.model_config(c))
  for run in ('stride', 'random'):
    a = checkpoint.load_params(os.path.join(plain, run), model)
    b = checkpoint.load_params(os.path.join(full, run), model)
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))
    rows_a = sinks.read_jsonl(os.path.join(plain, run, f'{run}.jsonl'))
    rows_b = sinks.read_jsonl(os.path.join(full, run, f'{run}.jsonl'))
    strip = lambda r: {k: v for k, v in r.items()
                       if k == 'epoch' or k.startswith('training_metrics/')}
    assert [strip(r) for r in rows_b] == rows_a
    fired = lambda key: [r['epoch'] for r in rows_b if key in r]
    # The reference's cadence: per-epoch hooks every epoch, snapshot hooks every
    # probe_every (2), the counterfactual family every epoch below 50.
    assert fired('norms/total_norm') == [0, 1, 2, 3, 4, 5]
    assert fired('parameter_delta/absolute_delta') == [1, 2, 3, 4, 5]  # none the 1st time
    assert fired('phases/phase_code') == [0, 2, 4]
    assert fired('progress/restricted_loss') == [0, 2, 4]
    assert fired('counterfactual/ordering_fraction') == [0, 1, 2, 3, 4, 5]
    assert fired('curvature/lambda_max') == [0]  # snapshots, at most once per 1000 steps
    assert all(math.isfinite(v) for r in rows_b for k, v in r.items()
               if isinstance(v, float))


@pytest.mark.slow
def test_every_written_key_is_in_the_catalog(probed):
  """--probes_describe and docs/probes.md list every key a probe writes, and every key
  the catalog says is written at each firing is there."""
  import re  # pylint: disable=g-import-not-at-top
  from probes import catalog  # pylint: disable=g-import-not-at-top
  _, full = probed['full']
  rows = sinks.read_jsonl(os.path.join(full, 'stride', 'stride.jsonl'))
  written = {k for r in rows for k in r if '/' in k and not k.startswith('training_metrics/')}

  def pattern(key):
    text = re.escape(key)
    text = re.sub(r'<[^>]+>', '.+', text.replace('\\<', '<').replace('\\>', '>'))
    return re.sub(r'\\\{([^}]*)\\\}', lambda m: '(' + m.group(1).replace(',', '|') + ')', text)

  for key in written:
    name, rest = key.split('/', 1)
    assert name in catalog.CATALOG, key
    assert any(re.fullmatch(pattern(m.key), rest) for m in catalog.CATALOG[name].metrics), key
  fired = {k.split('/', 1)[0] for k in written}
  for name in fired:
    for m in catalog.CATALOG[name].metrics:
      if not m.when and '<' not in m.key:
        assert f'{name}/{m.key}' in written, f'{name}/{m.key}'


@pytest.mark.slow
def test_resume_keeps_probe_state(probed, tmp_path):
  """The full-probe batch, cut back to its checkpoint after epoch 4 (as a crash in epoch 5
  leaves it), resumes to the same metric rows as the uninterrupted run."""
  c, full = probed['full']
  work = tmp_path / 'work'
  shutil.copytree(full, work)
  for run in ('stride', 'random'):
    d = work / run
    assert sorted(os.listdir(d / 'checkpoints')) == ['3', '5', '6']
    shutil.rmtree(d / 'checkpoints' / '6')
    shutil.rmtree(d / 'final_params')
    os.remove(d / 'summary.json')
    os.remove(d / 'complete.json')  # the marker of a finished run (docs/outputs.md)
  experiment.run(c, str(work), resume=True, quiet=True, probes=probes.build(c))
  for run in ('stride', 'random'):
    assert (sinks.read_jsonl(str(work / run / f'{run}.jsonl')) ==
            sinks.read_jsonl(os.path.join(full, run, f'{run}.jsonl')))


STEP_PROBES = 'hessian,adam_dynamics,training_diagnostics,batch_dynamics,path_length'


@pytest.mark.slow
def test_step_probes_between_probe_epochs_match_probing_every_epoch(tmp_path):
  """Thinned out (probes.every > 1), step probes measure only in probe epochs; what they
  carry across the others (the FIFO, the path, hessian's previous gradient and boundary
  entanglement) makes their values those of probing every epoch. Hessian bursts here cross epoch boundaries (4 steps per
  epoch, steps g % 5 < 3 active)."""
  rows = {}
  for every in (1, 3):
    c = micro_config(strategy='random', epochs=4)
    c.probes.every = every  # thinned out: per-epoch probes every 3rd epoch
    c.probes.names = STEP_PROBES
    c.probes.hessian.update(every_n_steps=5, burst_length=3, warmup=0)
    c.probes.adam_dynamics.update(every_n_steps=5, burst_length=3, warmup=0)
    experiment.run(c, str(tmp_path / str(every)), quiet=True, probes=probes.build(c))
    rows[every] = {r['epoch']: r for r in
                   sinks.read_jsonl(str(tmp_path / str(every) / 'random' / 'random.jsonl'))}
  probed = [e for e, r in rows[3].items() if 'path_length/path_length' in r]
  assert probed == [0, 3]
  for e in probed:
    want = {k: v for k, v in rows[1][e].items() if k.split('/')[0] in STEP_PROBES}
    got = {k: v for k, v in rows[3][e].items() if k.split('/')[0] in STEP_PROBES}
    assert sorted(got) == sorted(want)
    for k in want:
      assert np.asarray(got[k], float) == pytest.approx(np.asarray(want[k], float),
                                                        rel=1e-5, abs=1e-7, nan_ok=True), k
  # the boundary: epoch 3's first step (g = 12) is active after an active g = 11
  assert math.isfinite(rows[3][3]['hessian/entanglement_coherence'][0])


def test_variance_window_matches_numpy():
  probe = gradients.Variance(CFG, window=3)
  trees = [_tree(20 + i) for i in range(5)]
  state = probe.init(trees[0])
  state, _, present = probe.on_epoch(state, _info(grad_mean=trees[0]))
  assert not bool(present)  # needs two members
  for t in trees[1:]:
    state, m, present = probe.on_epoch(state, _info(grad_mean=t))
  w = np.stack([_numpy_flat_non_bias(t)[0] for t in trees[-3:]])  # the last 3 only
  mean = w.mean(0)
  unit = w / np.linalg.norm(w, axis=1, keepdims=True)
  pair_cos = [unit[j] @ unit[k] for j in range(3) for k in range(j + 1, 3)]
  assert bool(present)
  assert float(m['gradient_variance']) == pytest.approx(((w - mean) ** 2).mean(), rel=1e-4)
  assert float(m['mean_pairwise_cos']) == pytest.approx(np.mean(pair_cos), rel=1e-4, abs=1e-6)
  assert float(m['signal_to_noise']) == pytest.approx(
      np.linalg.norm(mean) / (np.linalg.norm(w.std(0, ddof=1)) + 1e-8), rel=1e-4)
  assert float(m['window_mean_norm']) == pytest.approx(np.linalg.norm(mean), rel=1e-5)


def test_token_gradient_matches_numpy():
  g = _tree(7)
  _, m, _ = gradients.TokenGradient(CFG).on_epoch({}, _info(grad_mean=g))
  r = np.linalg.norm(np.asarray(g['embedding']['embedding'], np.float64), axis=1)
  p, s = 13, 3
  asc = np.sort(r)
  gini = (2 * np.sum(np.arange(1, p + 1) * asc) - (p + 1) * r.sum()) / (p * r.sum() + 1e-8)
  groups = np.array([r[np.arange(p) % s == j].mean() for j in range(s)])
  share = np.cumsum(asc[::-1]) / r.sum()
  assert float(m['gradient_gini']) == pytest.approx(gini, rel=1e-4)
  assert float(m['gradient_sparsity']) == pytest.approx(np.mean(r < 0.1 * r.mean()))
  assert float(m['stride_group_variance']) == pytest.approx(groups.var(), rel=1e-4)
  assert float(m['stride_group_max_ratio']) == pytest.approx(groups.max() / groups.mean(),
                                                             rel=1e-5)
  assert int(m['tokens_for_50pct']) == int((share < 0.5).sum()) + 1
  assert int(m['tokens_for_90pct']) == int((share < 0.9).sum()) + 1


def test_weight_tracking_matches_numpy():
  params, g = _tree(8), _tree(9)
  probe = weights.WeightTracking(CFG)
  m = _host(probe, probe.on_epoch({}, _info(params=params, grad_mean=g))[1])
  w = {k: np.asarray(v, np.float64) for k, v in models.to_reference(params, CFG).items()}
  gw = {k: np.asarray(v, np.float64) for k, v in models.to_reference(g, CFG).items()}
  names = sorted(k for k in w if 'bias' not in k and w[k].ndim == 2)
  assert {f'top_sv/{n}' for n in names} <= set(m) and 'top_sv/decoder.weight' in m
  ranks = []
  for n in names:
    s = np.linalg.svd(w[n], compute_uv=False)
    ranks.append(s.sum() ** 2 / (s ** 2).sum())
    assert float(m[f'top_sv/{n}']) == pytest.approx(s[0], rel=1e-4)
    assert float(m[f'weight_norm/{n}']) == pytest.approx(np.linalg.norm(w[n]), rel=1e-5)
    want = gw[n].ravel() @ w[n].ravel() / (np.linalg.norm(gw[n]) * np.linalg.norm(w[n]) + 1e-8)
    assert float(m[f'grad_weight_align/{n}']) == pytest.approx(want, rel=1e-3, abs=1e-6)
  assert float(m['mean_effective_rank']) == pytest.approx(np.mean(ranks), rel=1e-4)


def test_attention_matches_a_direct_softmax():
  params = _tree(4)
  batch = jnp.array([[1, 2, 3], [4, 5, 9], [7, 7, 1], [0, 12, 12]])
  probe = weights.Attention(CFG)
  m = _host(probe, probe.on_epoch({}, _info(params=params, first_batch_BxC=batch))[1])
  sd = {k: np.asarray(v, np.float64) for k, v in models.to_reference(params, CFG).items()}
  # Layer 0's attention probabilities, written directly from the reference's weights.
  h = sd['embedding.weight'][np.asarray(batch[:, :2])] + sd['pos_embedding']
  z = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
  z = z * sd['transformer.layers.0.norm1.weight'] + sd['transformer.layers.0.norm1.bias']
  qkv = z @ sd['transformer.layers.0.self_attn.in_proj_weight'].T + sd[
      'transformer.layers.0.self_attn.in_proj_bias']
  q, k = qkv[..., :8].reshape(4, 2, 2, 4), qkv[..., 8:16].reshape(4, 2, 2, 4)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / 2.0
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a = a / a.sum(-1, keepdims=True)
  ent = (-(a * np.log(a + 1e-12)).sum(-1) / np.log(2)).mean()
  assert float(m['attn_entropy/0']) == pytest.approx(ent, rel=1e-4)
  assert float(m['attn_variance/0']) == pytest.approx(a.var(0, ddof=1).mean(), rel=1e-3)
  want = []
  for layer in range(2):
    qkv = sd[f'transformer.layers.{layer}.self_attn.in_proj_weight']
    for blk in range(3):
      sv = np.linalg.svd(qkv[8 * blk:8 * (blk + 1)], compute_uv=False)
      want.append((sv[:5] ** 2).sum() / (sv ** 2).sum())
  assert float(m['top5_explained_var']) == pytest.approx(np.mean(want), rel=1e-4)


def test_raw_flattening_is_a_permutation_of_the_reference_one():
  a, b = _tree(30), _tree(31)
  from probes import common  # pylint: disable=g-import-not-at-top
  ra, rb = common.flat_non_bias_raw(a), common.flat_non_bias_raw(b)
  fa, fb = _numpy_flat_non_bias(a)[0], _numpy_flat_non_bias(b)[0]
  assert ra.shape == fa.shape
  np.testing.assert_allclose(np.sort(np.asarray(ra)), np.sort(fa), rtol=1e-6)
  assert float(jnp.dot(ra, rb)) == pytest.approx(fa @ fb, rel=1e-4)


def test_batch_dynamics_matches_a_numpy_fifo():
  probe = dynamics.BatchDynamics(lags=(1, 2, 5), windows=(2, 3), max_lag=3)
  grads = [_tree(40 + i) for i in range(7)]
  xs = [_numpy_flat_non_bias(g)[0] for g in grads]
  state = probe.init(grads[0])
  fifo, cosines = [], {1: [], 2: [], 5: []}
  for i, g in enumerate(grads):
    state = probe.on_step(state, _step(i, grads[0], grads[0], g, 1.0))
    for lag in cosines:
      if lag <= len(fifo):
        y = fifo[-lag]
        cosines[lag].append(xs[i] @ y / (np.linalg.norm(xs[i]) * np.linalg.norm(y) + 1e-8))
    fifo = (fifo + [xs[i]])[-3:]
  _, m, present = probe.on_epoch(state, _info())
  host = probe.to_host({k: np.asarray(v) for k, v in m.items()})
  assert bool(present) and 'lag_5' not in host  # the FIFO is 3 deep
  for lag in (1, 2):
    assert host[f'lag_{lag}'] == pytest.approx(np.mean(cosines[lag]), rel=1e-4, abs=1e-6)
  assert host['autocorrelation_mean'] == pytest.approx(
      np.mean([np.mean(cosines[1]), np.mean(cosines[2])]), rel=1e-4, abs=1e-6)
  for w in (2, 3):
    last = fifo[-w:]
    want = np.linalg.norm(np.sum(last, 0)) / sum(np.linalg.norm(v) for v in last)
    assert host[f'efficiency_{w}'] == pytest.approx(want, rel=1e-4)
  lam = np.clip(np.linalg.eigvalsh(np.stack(fifo) @ np.stack(fifo).T), 0, None)
  q = lam / lam.sum()
  assert host['top1_variance'] == pytest.approx(lam.max() / lam.sum(), rel=1e-4)
  assert host['effective_rank'] == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-4)


def test_batch_dynamics_between_probe_epochs_keeps_the_fifo_of_stopped_runs():
  """Between probe epochs only the FIFO is written, and not for a stopped run (the trainer
  does not restore this probe's state: ``masks_inactive``)."""
  probe = dynamics.BatchDynamics(lags=(1,), windows=(2,), max_lag=3)
  grads = [_tree(70 + i) for i in range(3)]
  state = probe.init(grads[0])
  for i, g in enumerate(grads[:2]):
    state = probe.on_step(state, _step(i, grads[0], grads[0], g, 1.0))
  quiet = lambda st, g, active: probe.on_step(st, dataclasses.replace(
      _step(2, grads[0], grads[0], g, 1.0), record=False, active=jnp.array(active)))
  same = quiet(state, grads[2], False)
  assert all(np.array_equal(same[k], state[k]) for k in state)
  moved = quiet(state, grads[2], True)
  assert int(moved['count']) == 3
  np.testing.assert_array_equal(moved['buf'][2], common.flat_non_bias_raw(grads[2]))
  np.testing.assert_array_equal(moved['cos_sum'], state['cos_sum'])  # no cosine measured
  assert probe.masks_inactive


def test_window_keeps_its_gram_matrix_and_ignores_stopped_runs():
  """common.window_push's running Gram matrix equals numpy's rows @ rows.T through the
  ring's wrap-around; a push for a stopped run changes nothing."""
  rng = np.random.default_rng(0)
  xs = rng.normal(size=(7, 5)).astype(np.float32)
  state = common.window_init(5, 3)
  for i, x in enumerate(xs):
    state, n, valid, g = common.window_push(state, jnp.asarray(x))
    rows = np.zeros((3, 5), np.float32)
    for j in range(max(0, i - 2), i + 1):
      rows[j % 3] = xs[j]
    np.testing.assert_allclose(np.asarray(g), rows @ rows.T, rtol=1e-5, atol=1e-6)
    assert int(n) == min(i + 1, 3) and list(np.asarray(valid)) == [float(k < n) for k in range(3)]
  same, _, _, _ = common.window_push(state, jnp.ones((5,)), active=jnp.array(False))
  assert all(np.array_equal(same[k], state[k]) for k in state)


def test_phases_velocity_acceleration_and_codes():
  probe = gradients.Phases(CFG)
  trees = [_tree(50 + i) for i in range(3)]
  state = probe.init(trees[0])
  rows = []
  for t, acc in zip(trees, (4.9, 20.0, 99.5)):
    state, m, _ = probe.on_epoch(state, _info(params=t, grad_mean=t,
                                               validation_accuracy=jnp.float32(acc)))
    rows.append({k: float(v) for k, v in m.items()})
  n = [np.linalg.norm(_numpy_flat_non_bias(t)[0]) for t in trees]
  emb = [np.asarray(t['embedding']['embedding'], np.float64) for t in trees]
  assert rows[0]['grad_velocity'] == 0 and rows[0]['embedding_change'] == 0
  assert rows[1]['grad_velocity'] == pytest.approx(n[1] - n[0], rel=1e-4)
  # The reference's previous velocity starts at 0: the second firing's acceleration is v1.
  assert rows[1]['grad_acceleration'] == pytest.approx(n[1] - n[0], rel=1e-4)
  assert rows[2]['grad_acceleration'] == pytest.approx((n[2] - n[1]) - (n[1] - n[0]), rel=1e-3)
  assert rows[2]['embedding_change'] == pytest.approx(np.linalg.norm(emb[2] - emb[1]), rel=1e-5)
  assert rows[2]['embedding_change_normalized'] == pytest.approx(
      np.linalg.norm(emb[2] - emb[1]) / np.linalg.norm(emb[1]), rel=1e-5)
  assert [r['phase_code'] for r in rows] == [0, 2, 4]


def _nonbias_mask(tree):
  """Which entries of ravel_pytree(tree) are not biases (what flat_non_bias_raw keeps)."""
  marked = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, 0.0 if getattr(path[-1], 'key', None) == 'bias'
                                    else 1.0), tree)
  return np.asarray(ravel_pytree(marked)[0]) > 0


def test_hessian_probe_uses_the_exact_hessian(dense):
  from probes import steps  # pylint: disable=g-import-not-at-top
  flat, loss, h, trainer, abc, unravel = dense
  params = unravel(flat)
  g_a = unravel(jax.random.normal(jax.random.key(5), flat.shape))
  g_b = unravel(jax.random.normal(jax.random.key(6), flat.shape))
  probe = steps.Hessian(steps_per_epoch=4, every=10, burst=3, warmup=0,
                        keys=steps.hessian_keys(TINY, True), cfg=TINY)
  state = {**probe.init(params), 'prev_grads': g_a}
  after = unravel(flat + 0.01 * jax.random.normal(jax.random.key(7), flat.shape))
  ref = unravel(jax.random.normal(jax.random.key(8), flat.shape))
  info = instrument.StepInfo(step=jnp.int32(1), params_before=params, params_after=after,
                             grads=g_b, loss=jnp.float32(1.0), learning_rate=jnp.float32(0.5),
                             epoch=jnp.int32(0), batch_BxC=abc, mask_B=jnp.ones((25,), bool),
                             dropout_key=None, loss_fn=trainer.loss, reference=ref)
  state = probe.on_step(state, info)
  rec = {k: float(v[1]) for k, v in state['rec'].items() if k != 'active'}
  assert bool(state['rec']['active'][1]) and not bool(state['rec']['active'][0])
  keep = _nonbias_mask(params)
  ga, gb = np.asarray(ravel_pytree(g_a)[0]), np.asarray(ravel_pytree(g_b)[0])
  hv = (h @ ga)[keep]
  ent, gb_k, ga_k = 0.5 * hv, gb[keep], ga[keep]
  assert rec['entanglement_norm'] == pytest.approx(np.linalg.norm(ent), rel=1e-3)
  assert rec['content_norm'] == pytest.approx(np.linalg.norm(gb_k + ent), rel=1e-3)
  assert rec['rayleigh_quotient'] == pytest.approx(ga_k @ hv / (ga_k @ ga_k), rel=1e-3)
  assert rec['amplification_ratio'] == pytest.approx(np.linalg.norm(hv) / np.linalg.norm(ga_k),
                                                     rel=1e-3)
  assert rec['edge_of_stability'] == pytest.approx(rec['amplification_ratio'], rel=1e-5)
  assert math.isnan(rec['entanglement_coherence'])  # the first active step of a burst
  d = (np.asarray(ravel_pytree(ref)[0]) - np.asarray(ravel_pytree(after)[0]))[keep]
  cos = lambda u, v: u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
  assert rec['entanglement_cossim_to_solution'] == pytest.approx(cos(-ent, d), rel=1e-3,
                                                                 abs=1e-5)
  assert rec['content_cossim_to_solution'] == pytest.approx(cos(-(gb_k + ent), d), rel=1e-3,
                                                            abs=1e-5)
  # Per parameter, in the reference's names.
  named = lambda vec: {k: np.asarray(v, np.float64).ravel() for k, v in models.to_reference(
      unravel(jnp.asarray(vec, jnp.float32)), TINY).items()}
  ent_p = named(0.5 * (h @ ga))['transformer.layers.0.linear1.weight']
  gb_p = named(gb)['transformer.layers.0.linear1.weight']
  d_p = named(np.asarray(ravel_pytree(ref)[0]) - np.asarray(ravel_pytree(after)[0]))[
      'transformer.layers.0.linear1.weight']
  p = 'transformer.layers.0.linear1.weight'
  assert rec[f'entanglement_norm/{p}'] == pytest.approx(np.linalg.norm(ent_p), rel=1e-3)
  assert rec[f'content_norm/{p}'] == pytest.approx(np.linalg.norm(gb_p + ent_p), rel=1e-3)
  assert rec[f'entanglement_energy_ratio/{p}'] == pytest.approx(
      ent_p @ ent_p / (gb_p @ gb_p + 1e-12), rel=2e-3)
  assert rec[f'content_cossim_to_solution/{p}'] == pytest.approx(cos(-(gb_p + ent_p), d_p),
                                                                 rel=1e-3, abs=1e-5)
  assert 'entanglement_norm/decoder.bias' not in rec
  # The schedule: steps g >= warmup with g % every < burst.
  sched = steps.Hessian(steps_per_epoch=7, every=5, burst=2, warmup=3)
  on = [int(e * 7 + i) for e in range(3) for i in range(7)
        if bool(sched.active(instrument.StepInfo(jnp.int32(i), None, None, None, None, None,
                                                 epoch=jnp.int32(e))))]
  assert on == [5, 6, 10, 11, 15, 16, 20]


def test_adam_dynamics_matches_numpy():
  from probes import steps  # pylint: disable=g-import-not-at-top
  trainer = train.Trainer(MODEL, train.Hyper(batch_size=8, epochs=1, min_lr=0.0,
                                             target_correct=1))
  params = _tree(60)
  opt = trainer.tx.init(params)
  for seed in (61, 62):
    _, opt = trainer.tx.update(_tree(seed), opt, params)
  g = _tree(63)
  probe = steps.AdamDynamics(steps_per_epoch=2, every=1, burst=1, warmup=0,
                             keys=steps.ADAM_KEYS + steps.ADAM_REFERENCE_KEYS)
  ref = _tree(64)
  info = instrument.StepInfo(step=jnp.int32(0), params_before=params, params_after=params,
                             grads=g, loss=jnp.float32(1.0), learning_rate=jnp.float32(1e-3),
                             epoch=jnp.int32(0), opt_state=opt, reference=ref)
  rec = {k: float(v[0]) for k, v in probe.on_step(probe.init(params), info)['rec'].items()
         if k != 'active'}
  adam = opt.inner_state[0]
  keep = _nonbias_mask(params)
  f = lambda t: np.asarray(ravel_pytree(t)[0], np.float64)[keep]
  m, v, gg = f(adam.mu), f(adam.nu), f(g)
  u = 1e-3 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
  eff = 1e-3 / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
  proj = (u @ gg) / (gg @ gg) * gg
  assert rec['momentum_grad_cossim'] == pytest.approx(
      m @ gg / (np.linalg.norm(m) * np.linalg.norm(gg)), rel=1e-4)
  assert rec['amplification_ratio'] == pytest.approx(
      np.linalg.norm(u) / (1e-3 * np.linalg.norm(gg)), rel=1e-4)
  assert rec['update_deflection'] == pytest.approx(
      np.linalg.norm(u - proj) / np.linalg.norm(u), rel=1e-4)
  assert rec['effective_lr_cv'] == pytest.approx(eff.std(ddof=1) / eff.mean(), rel=1e-4)
  d = f(ref) - f(params)
  cos = lambda a, b: a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  assert rec['momentum_solution_cossim'] == pytest.approx(cos(-m, d), rel=1e-4, abs=1e-6)
  assert rec['update_solution_cossim'] == pytest.approx(cos(-u, d), rel=1e-4, abs=1e-6)
  assert rec['grad_solution_cossim'] == pytest.approx(cos(-gg, d), rel=1e-4, abs=1e-6)
  assert rec['optimizer_solution_amplification'] == pytest.approx(
      cos(-u, d) - cos(-gg, d), rel=1e-3, abs=1e-6)


def test_gradient_projection_matches_numpy():
  from probes import solution  # pylint: disable=g-import-not-at-top
  prev, now, ref, g = _tree(70), _tree(71), _tree(72), _tree(73)
  probe = solution.GradientProjection(CFG)
  first = probe.on_epoch(probe.init(prev), _info(params=prev, grad_mean=g, reference=ref))
  assert set(_host(probe, first[1])) == {'distance_to_reference'}  # as the reference
  _, m, present = probe.on_epoch(first[0], _info(params=now, grad_mean=g, reference=ref))
  sd = lambda t: {k: np.asarray(v, np.float64) for k, v in models.to_reference(t, CFG).items()}
  p, n, r, gg = sd(prev), sd(now), sd(ref), sd(g)
  names = list(r)
  cat = lambda f: np.concatenate([f(k).ravel() for k in names])
  cosine = lambda u, v: u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
  d = cat(lambda k: r[k] - p[k])
  assert bool(present)
  assert float(m['overall_grad_cossim_to_solution']) == pytest.approx(
      cosine(cat(lambda k: -gg[k]), d), rel=1e-4)
  assert float(m['overall_disp_cossim_to_solution']) == pytest.approx(
      cosine(cat(lambda k: n[k] - p[k]), d), rel=1e-4)
  assert float(m['distance_to_reference']) == pytest.approx(
      np.linalg.norm(cat(lambda k: r[k] - n[k])), rel=1e-5)
  per = {k: cosine(-gg[k].ravel(), (r[k] - p[k]).ravel()) for k in names
         if np.linalg.norm(gg[k]) > 1e-12 and np.linalg.norm(r[k] - p[k]) > 1e-12}
  assert len(per) < len(names)  # zero-initialised biases have no direction: skipped
  assert float(m['mean_layer_grad_cossim_to_solution']) == pytest.approx(
      np.mean(list(per.values())), rel=1e-4)
  assert float(m['grad_cossim_to_solution/decoder.weight']) == pytest.approx(
      per['decoder.weight'], rel=1e-4)
  assert 'grad_cossim_to_solution/decoder.bias' not in m


def test_subspace_gradient_info_matches_numpy_svd():
  from probes import solution  # pylint: disable=g-import-not-at-top
  probe = solution.SubspaceGradientInfo(CFG, window=4, n_components=3, with_reference=True)
  grads = [_tree(80 + i) for i in range(6)]
  params, ref = _tree(90), _tree(91)
  state = probe.init(params)
  for g in grads:
    state, m, present = probe.on_epoch(state, _info(params=params, grad_mean=g, reference=ref))
  m = _host(probe, m)
  w = np.stack([_numpy_flat_non_bias(g)[0] for g in grads[-4:]])
  centred = w - w.mean(0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  s, vt = s[:3], vt[:3]
  total = (s ** 2).sum() + 1e-8
  cum = np.cumsum(s ** 2) / total
  assert bool(present)
  assert float(m['svd_total_variance']) == pytest.approx(total, rel=1e-4)
  assert int(m['dims_for_90pct']) == int((cum < 0.9).sum()) + 1
  assert float(m['participation_ratio']) == pytest.approx(
      (s ** 2).sum() ** 2 / ((s ** 4).sum() + 1e-8), rel=1e-4)
  assert float(m['top_sv_ratio']) == pytest.approx(s[0] / s.sum(), rel=1e-4)
  assert float(m['top1_explained']) == pytest.approx(cum[0], rel=1e-4)
  assert float(m['top5_explained']) == pytest.approx(cum[2], rel=1e-4)  # min(5, q) - 1
  sol = _numpy_flat_non_bias(ref)[0] - _numpy_flat_non_bias(params)[0]
  proj = vt @ (sol / np.linalg.norm(sol))
  assert float(m['grad_energy_fraction_toward_solution']) == pytest.approx(
      (s ** 2 * proj ** 2).sum() / total, rel=1e-3)
  assert float(m['top1_energy_fraction_toward_solution']) == pytest.approx(
      s[0] ** 2 * proj[0] ** 2 / total, rel=1e-3, abs=1e-8)  # a fraction: abs is enough


@pytest.mark.slow
def test_reference_weights_auto_and_missing(tmp_path):
  c = micro_config(epochs=2)
  c.probes.names = 'gradient_projection'
  with pytest.raises(Exception, match=r'config\.probes\.reference_weights: probe'):
    probes.build(c)
  c.probes.reference_weights = 'auto'
  with pytest.raises(Exception, match=r'config\.probes\.reference_weights: cannot read'):
    experiment.run(c, str(tmp_path), quiet=True, probes=probes.build(c))
  experiment.run(micro_config(epochs=2), str(tmp_path), quiet=True)  # the paper's first run
  experiment.run(c, str(tmp_path), overwrite=True, quiet=True, probes=probes.build(c))
  rows = sinks.read_jsonl(str(tmp_path / 'stride' / 'stride.jsonl'))
  assert rows[-1]['gradient_projection/distance_to_reference'] == 0.0  # its own end point
  # A run folder itself (not a workdir of runs) is the reference of every run.
  c.probes.reference_weights = str(tmp_path / 'stride')
  experiment.run(c, str(tmp_path / 'other'), quiet=True, probes=probes.build(c))
  rows = sinks.read_jsonl(str(tmp_path / 'other' / 'stride' / 'stride.jsonl'))
  assert rows[0]['gradient_projection/distance_to_reference'] > 0.0
  assert rows[-1]['gradient_projection/distance_to_reference'] == 0.0


def test_no_lapack_inside_the_probed_epoch():
  """jaxlib 0.10's CPU LAPACK kernels deadlock XLA:CPU when several run at once (see
  probes.spectra): no probe may put one in the jitted epoch."""
  c = micro_config(strategy='stride,random')
  c.probes.group = 'full'
  c.probes.reference_weights = 'given'
  ps = probes.build(c)
  assert {'subspace_gradient_info', 'gradient_projection', 'curvature', 'attention',
          'weight_tracking', 'batch_dynamics', 'counterfactual', 'progress'} <= {
              p.name for p in ps}
  model = models.Model(experiment.model_config(c))
  ref = model.init(jax.random.key(5))
  b = experiment.build(c, ps, reference=[ref, ref])
  fn = lambda *a: b.trainer._batched_epoch(*a, do_eval=True, do_probe=True)  # pylint: disable=protected-access
  names = jaxpr_primitives(jax.make_jaxpr(fn)(b.state, b.spec, b.data, jnp.int32(1)).jaxpr)
  assert 'scan' in names and 'dot_general' in names  # the walk reaches the epoch's body
  assert not names & LAPACK_PRIMITIVES, names & LAPACK_PRIMITIVES


def test_step_probe_bursts_stay_conditional_under_vmap():
  """The burst test reads only the shared step count: under the runs vmap it stays a
  ``cond`` (a per-run predicate turns it into a select that runs the measurement, an HVP
  for hessian, at every step of every epoch)."""
  c = micro_config(strategy='stride,random')
  c.probes.names = 'hessian,adam_dynamics'
  b = experiment.build(c, probes.build(c))
  for record in (True, False):
    fn = lambda *a: b.trainer._batched_epoch(*a, do_eval=False, do_probe=record)  # pylint: disable=protected-access
    counts = jaxpr_primitive_counts(
        jax.make_jaxpr(fn)(b.state, b.spec, b.data, jnp.int32(1)).jaxpr)
    assert counts['cond'] >= (2 if record else 1), (record, counts)


def _fake_replay(n):
  """A stand-in for Trainer._replay whose gradient depends on the shuffle and the key."""
  base, other = _tree(60), _tree(61)

  def replay(order, key):
    shift = order[0].astype(jnp.float32) / n + jnp.sin(order[1].astype(jnp.float32))
    return jax.tree.map(lambda b, o: b * (1 + shift) + o * jax.random.normal(key, ()),
                        base, other)
  return replay


def _numpy_decompose(g, cf):
  a, c, d = g @ g, cf @ cf, g @ cf
  ordering_sq = max(0.0, a - d * d / c)
  return abs(d) / np.sqrt(c), np.sqrt(ordering_sq), ordering_sq / a, d / (np.sqrt(a * c) + 1e-8)


def test_counterfactual_matches_numpy():
  from probes import counterfactual  # pylint: disable=g-import-not-at-top
  n = 40
  train = jnp.zeros((n, 3), jnp.int32)
  g, pre, ref = _tree(62), _tree(63), _tree(64)
  probe = counterfactual.Counterfactual(CFG, k=3, window=2, with_reference=True)
  info = lambda seed: _info(grad_mean=g, params_before=pre, reference=ref, train_NxC=train,
                            key=jax.random.key(seed), replay=_fake_replay(n))
  stacked = counterfactual._shuffled_grads(info(0), 3)  # pylint: disable=protected-access
  flat_k = np.stack([np.concatenate([np.asarray(x[i], np.float64).ravel()
                                     for x in jax.tree.leaves(stacked)]) for i in range(3)])
  assert len({tuple(np.round(r[:5], 6)) for r in flat_k}) == 3  # K distinct replicates
  at_once = counterfactual._shuffled_grads(info(0), 3, parallel=0)  # pylint: disable=protected-access
  for a, b in zip(jax.tree.leaves(at_once), jax.tree.leaves(stacked)):  # same replicates
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  state, m, present = probe.on_epoch(probe.init(pre), info(0))
  flat = lambda t: np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(t)])
  gv, cf = flat(g), flat_k.mean(0)
  want = _numpy_decompose(gv, cf)
  assert bool(present)
  assert float(m['counterfactual_mean_norm']) == pytest.approx(np.linalg.norm(cf), rel=1e-5)
  for key, w in zip(('content_component_norm', 'ordering_component_norm', 'ordering_fraction',
                     'ordering_alignment'), want):
    assert float(m[key]) == pytest.approx(w, rel=1e-4, abs=1e-7)
  # Per parameter, in the reference's names.
  ref_g = {k: np.asarray(v, np.float64) for k, v in models.to_reference(g, CFG).items()}
  cf_tree = jax.tree.map(lambda x: jnp.mean(x, 0), stacked)
  ref_cf = {k: np.asarray(v, np.float64) for k, v in models.to_reference(cf_tree, CFG).items()}
  p = 'transformer.layers.1.linear1.weight'
  assert float(m[f'ordering_fraction/{p}']) == pytest.approx(
      _numpy_decompose(ref_g[p].ravel(), ref_cf[p].ravel())[2], rel=1e-4)
  assert 'ordering_fraction/decoder.bias' not in m
  # Solution tier: d = theta_ref - theta_pre; content = (delta / C) cf.
  d = flat(ref) - flat(pre)
  # Parameters where d = 0 (the zero-initialised biases of both inits) drop out.
  keep = flat(jax.tree.map(lambda a, b: jnp.full(a.shape, float(jnp.any(a != b))), ref, pre))
  assert 0 < keep.sum() < keep.size
  content = (gv @ cf) / (cf @ cf) * cf * keep  # the projection uses every parameter
  gv, cf = gv * keep, cf * keep
  cos = lambda u, v: u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8)
  assert float(m['content_grad_cossim_to_solution']) == pytest.approx(cos(-content, d), rel=1e-4)
  assert float(m['ordering_grad_cossim_to_solution']) == pytest.approx(
      cos(-(gv - content), d), rel=1e-4, abs=1e-6)
  assert float(m['cf_grad_cossim_to_solution']) == pytest.approx(cos(-cf, d), rel=1e-4)
  host = probe.to_host({k: np.asarray(v) for k, v in m.items()})
  assert 'content_energy_fraction_toward_solution' not in host  # one window member
  # A second firing: the window's energy fraction equals the SVD definition.
  _, m2, _ = probe.on_epoch(state, info(1))
  flat_k2 = np.stack([flat(jax.tree.map(lambda x: x[i], counterfactual._shuffled_grads(  # pylint: disable=protected-access
      info(1), 3))) for i in range(3)])
  cf2 = flat_k2.mean(0)
  g_all = flat(g)
  content2 = (g_all @ cf2) / (cf2 @ cf2) * cf2 * keep  # the projection uses every parameter
  content1 = (flat(g) @ flat_k.mean(0)) / (flat_k.mean(0) @ flat_k.mean(0)) * flat_k.mean(0) * keep
  rows = np.stack([-content1, -content2])
  _, s, vt = np.linalg.svd(rows, full_matrices=False)
  d_hat = d / np.linalg.norm(d)
  want = (s ** 2 * (vt @ d_hat) ** 2).sum() / (s ** 2).sum()
  assert float(m2['content_energy_fraction_toward_solution']) == pytest.approx(want, rel=1e-3)


def test_counterfactual_validator_matches_numpy():
  from probes import counterfactual  # pylint: disable=g-import-not-at-top
  n = 40
  pre, ref = _tree(65), _tree(66)
  probe = counterfactual.CounterfactualValidator(CFG, k=3, with_reference=True)
  info = _info(params_before=pre, reference=ref, train_NxC=jnp.zeros((n, 3), jnp.int32),
               key=jax.random.key(3), replay=_fake_replay(n))
  _, m, _ = probe.on_epoch({}, info)
  stacked = counterfactual._shuffled_grads(info, 4)  # pylint: disable=protected-access
  x = np.stack([_numpy_flat_non_bias(jax.tree.map(lambda v: v[i], stacked))[0]
                for i in range(4)])
  kp1 = x.mean(0)
  subsets = [x[[j for j in range(4) if j != i]].mean(0) for i in range(4)]
  norms = np.array([np.linalg.norm(s) for s in subsets])
  cos = lambda u, v: u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8)
  assert float(m['kp1_content_norm']) == pytest.approx(np.linalg.norm(kp1), rel=1e-5)
  assert float(m['k_content_norm_max']) == pytest.approx(norms.max(), rel=1e-5)
  assert float(m['norm_convergence_gap']) == pytest.approx(
      (norms.mean() - np.linalg.norm(kp1)) / np.linalg.norm(kp1), rel=1e-3, abs=1e-6)
  assert float(m['kp1_norm_strictly_lower']) == float(np.linalg.norm(kp1) < norms.min())
  assert float(m['k_to_kp1_cossim_min']) == pytest.approx(
      min(cos(s, kp1) for s in subsets), rel=1e-5)
  d = _numpy_flat_non_bias(ref)[0] - _numpy_flat_non_bias(pre)[0]
  sol = np.array([cos(-s, d) for s in subsets])
  assert float(m['kp1_cossim_to_solution']) == pytest.approx(cos(-kp1, d), rel=1e-4)
  assert float(m['k_cossim_to_solution_std']) == pytest.approx(sol.std(), rel=1e-3, abs=1e-7)
  assert float(m['k_cossim_to_solution_spread']) == pytest.approx(sol.max() - sol.min(),
                                                                  rel=1e-3, abs=1e-7)


def test_replay_with_the_epochs_own_order_and_keys_is_the_epoch():
  """Trainer._replay (the counterfactual intervention) retraces the real epoch exactly when
  given the epoch's own order and dropout key."""
  c = micro_config(strategy='random')
  b = experiment.build(c)
  t, state, spec, data = b.trainer, b.state, b.spec, b.data
  one = lambda tree: jax.tree.map(lambda x: x[0], tree)
  s1, sp1 = one(state), one(spec)
  epoch = jnp.int32(3)
  root = jax.random.wrap_key_data(s1.key)
  order = t.epoch_order(root, sp1, epoch, data.train_NxC.shape[0])
  key = jax.random.fold_in(jax.random.fold_in(root, train.DROPOUT_STREAM), epoch)
  got = jax.jit(t._replay)(s1, sp1, data, epoch, order, key)  # pylint: disable=protected-access
  want = t._train_epoch(s1, sp1, data, epoch, grad_mean=True)[4]  # pylint: disable=protected-access
  for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(w), rtol=1e-5, atol=1e-7)


def test_evaluate_only_probes_the_given_weights(tmp_path):
  """epochs = 0 with init_from: the weight-only probes run on exactly those weights."""
  c = micro_config(epochs=3)
  experiment.run(c, str(tmp_path / 'trained'), quiet=True)
  c = micro_config(epochs=0)
  c.init_from = str(tmp_path / 'trained' / 'stride')
  c.probes.group = 'observers'
  experiment.run(c, str(tmp_path / 'eval'), quiet=True, probes=probes.build(c))
  rows = sinks.read_jsonl(str(tmp_path / 'eval' / 'stride' / 'stride.jsonl'))
  assert len(rows) == 1 and rows[0]['epoch'] == 0
  names = {k.split('/')[0] for k in rows[0]}
  assert {'fourier', 'attention', 'weight_tracking', 'training_metrics'} <= names
  assert 'norms' not in names and 'batch_dynamics' not in names  # they need training
  model = models.Model(experiment.model_config(c))
  params = checkpoint.load_params(str(tmp_path / 'trained' / 'stride'), model)
  w = models.to_reference(params, experiment.model_config(c))['decoder.weight']
  assert rows[0]['weight_tracking/weight_norm/decoder.weight'] == pytest.approx(
      float(np.linalg.norm(np.asarray(w, np.float64))), rel=1e-5)
  summary = json.load(open(tmp_path / 'trained' / 'stride' / 'summary.json'))
  assert rows[0]['training_metrics/validation_accuracy'] == pytest.approx(
      summary['final_eval']['validation_accuracy'])
