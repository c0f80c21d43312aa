"""The jitted epoch: batching, masking, vmap over runs, determinism, stopping."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ordered_jax import experiment, optim, orderings, tasks, train
from tests.conftest import micro_config

STRATEGIES = ('stride', 'random', 'target', 'alternating')


@functools.lru_cache(maxsize=None)
def _setup(shared=True):
  """A trainer (compiled once for the whole module), its data and the micro config."""
  config = micro_config()
  trainer = experiment.make_trainer(config, shared_data=shared)
  tr, te = tasks.make_mod_add(config.p, config.train_size, config.test_size, config.seed)
  return config, trainer, train.make_data(tr, te, config.eval_batch_size), tr


def _spec(config, tr, strategies, lrs=None, wds=None):
  r = len(strategies)
  lrs = lrs or [config.lr] * r
  wds = wds or [config.weight_decay] * r
  return jax.device_put(train.RunSpec(
      lr=np.array(lrs, np.float32), weight_decay=np.array(wds, np.float32),
      **orderings.spec_parts(config, list(strategies), [tr] * r)))  # stride 3 = isqrt(13)


def _state(trainer, config, r, lrs=None, wds=None):
  return trainer.init_state([config.seed] * r, lrs or [config.lr] * r,
                            wds or [config.weight_decay] * r)


def _comparable(params):
  """Params without the attention key bias. Its gradient is exactly zero in exact arithmetic
  (softmax ignores a shift shared by all keys), so Adam turns rounding noise into O(lr)
  steps there; it never changes an output, so programs of different shapes may differ in it."""
  d = params['embedding']['embedding'].shape[-1]
  out = jax.tree.map(lambda x: x, params)
  for layer in out['layers'].values():
    b = layer['self_attn']['in_proj']['bias']
    layer['self_attn']['in_proj']['bias'] = b.at[..., d:2 * d].set(0.0)
  return out


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def test_masked_last_batch_equals_mean_over_real_rows():
  config, trainer, data, tr = _setup()
  params = _state(trainer, config, 1).params
  p0 = train.run_slice(params, 0)
  idx, mask = orderings.batch_indices(np.arange(60), 16)  # last batch: 12 real rows
  key = jax.random.key(0)
  padded = trainer.loss(p0, jnp.asarray(tr)[idx[-1]], jnp.asarray(mask[-1]), key)
  logits = trainer.model.apply(p0, jnp.asarray(tr[48:60, :2]), dropout_key=key)
  direct = optax.softmax_cross_entropy_with_integer_labels(logits, tr[48:60, 2]).mean()
  assert padded == pytest.approx(float(direct), rel=1e-6)


def test_epoch_equals_a_plain_python_loop_over_batches():
  """The scanned, vmapped epoch against one step at a time, written out by hand."""
  config, trainer, data, tr = _setup()
  state = _state(trainer, config, 1)
  spec = _spec(config, tr, ['random'])
  p, opt = train.run_slice(state.params, 0), train.run_slice(state.opt_state, 0)
  epoch = 2
  root = jax.random.key(config.seed)
  order = orderings.random_order(jax.random.fold_in(root, train.ORDER_STREAM), epoch, 60)
  idx, mask = orderings.batch_indices(np.asarray(order), config.batch_size)
  opt = optim.set_hparams(opt, learning_rate=optim.cosine_lr(epoch, config.lr, config.min_lr,
                                                             config.epochs))
  ekey = jax.random.fold_in(jax.random.fold_in(root, train.DROPOUT_STREAM), epoch)
  losses = []
  for i in range(idx.shape[0]):
    loss, g = jax.value_and_grad(trainer.loss)(p, jnp.asarray(tr[idx[i]]), jnp.asarray(mask[i]),
                                               jax.random.fold_in(ekey, i))
    upd, opt = trainer.tx.update(g, opt, p)
    p = optax.apply_updates(p, upd)
    losses.append(float(loss))
  new, m = trainer.epoch(state, spec, data, jnp.int32(epoch), do_eval=False)
  for a, b in zip(jax.tree.leaves(_comparable(train.run_slice(new.params, 0))),
                  jax.tree.leaves(_comparable(p))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
  assert float(m['loss'][0]) == pytest.approx(np.mean(losses), rel=1e-5)
  assert int(new.epoch[0]) == epoch + 1


@pytest.mark.slow
def test_vmapped_runs_equal_runs_alone():
  config, trainer, data, tr = _setup()
  lrs, wds = [1e-3, 3e-3, 1e-3, 2e-3], [0.1, 0.1, 1.0, 0.0]
  state = _state(trainer, config, 4, lrs, wds)
  spec = _spec(config, tr, STRATEGIES, lrs, wds)
  for e in range(3):
    state, m = trainer.epoch(state, spec, data, jnp.int32(e), do_eval=True)
  for i, s in enumerate(STRATEGIES):
    alone = _state(trainer, config, 1, [lrs[i]], [wds[i]])
    spec1 = _spec(config, tr, [s], [lrs[i]], [wds[i]])
    for e in range(3):
      alone, m1 = trainer.epoch(alone, spec1, data, jnp.int32(e), do_eval=True)
    for a, b in zip(jax.tree.leaves(_comparable(train.run_slice(state.params, i))),
                    jax.tree.leaves(_comparable(train.run_slice(alone.params, 0)))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert float(m['loss'][i]) == pytest.approx(float(m1['loss'][0]), rel=1e-4)


def test_same_seed_is_bit_identical_and_orders_differ():
  config, trainer, data, tr = _setup()
  spec = _spec(config, tr, STRATEGIES)
  runs = []
  for _ in range(2):
    state = _state(trainer, config, 4)
    for e in range(2):
      state, m = trainer.epoch(state, spec, data, jnp.int32(e), do_eval=True)
    runs.append((jax.device_get(state), jax.device_get(m)))
  assert _equal(runs[0][0].params, runs[1][0].params)
  assert _equal(runs[0][1], runs[1][1])
  first = jax.device_get(_state(trainer, config, 4).params)  # one seed: one initialisation
  assert all(_equal(train.run_slice(first, 0), train.run_slice(first, i)) for i in range(4))
  p = runs[0][0].params  # different orderings from one init end in different places
  assert not jnp.array_equal(p['decoder']['bias'][0], p['decoder']['bias'][1])


def test_random_and_alternating_orders():
  config, trainer, data, tr = _setup()
  spec = train.run_slice(_spec(config, tr, ['random', 'alternating']), 0)
  key = jax.random.key(1)
  o0, o1 = (np.asarray(trainer.epoch_order(key, spec, e, 60)) for e in (0, 1))
  assert sorted(o0) == list(range(60)) and not (o0 == o1).all()
  assert (o0 == np.asarray(trainer.epoch_order(key, spec, 0, 60))).all()
  alt = train.run_slice(_spec(config, tr, ['random', 'alternating']), 1)
  even, odd = (np.asarray(trainer.epoch_order(key, alt, e, 60)) for e in (4, 7))
  assert (even == orderings.static_order('stride', tr, stride=3)).all()
  assert (odd == orderings.static_order('target', tr, stride=3)).all()


def test_stopped_runs_freeze_and_others_go_on():
  config, trainer, data, tr = _setup()
  state = _state(trainer, config, 3)
  # Run 1 stopped earlier; run 2 has a non-finite weight (its loss will be NaN).
  state = state.replace(active=state.active.at[1].set(False))
  bias = state.params['decoder']['bias']
  state = state.replace(params={**state.params,
                                'decoder': {**state.params['decoder'],
                                            'bias': bias.at[2, 0].set(jnp.nan)}})
  before = jax.device_get(state)
  spec = _spec(config, tr, ['stride'] * 3)
  new, m = trainer.epoch(state, spec, data, jnp.int32(0), do_eval=False)
  new = jax.device_get(new)
  assert _equal(train.run_slice(new.params, 1), train.run_slice(before.params, 1))
  assert _equal(train.run_slice(new.opt_state, 1), train.run_slice(before.opt_state, 1))
  assert not bool(new.active[2]) and int(new.stop_reason[2]) == train.NON_FINITE
  assert int(new.epoch[2]) == 0 and not np.isfinite(m['loss'][2])
  assert _equal(train.run_slice(new.opt_state, 2), train.run_slice(before.opt_state, 2))
  assert bool(new.active[0]) and int(new.epoch[0]) == 1
  assert not _equal(train.run_slice(new.params, 0), train.run_slice(before.params, 0))
  assert list(m['trained']) == [True, False, True]


def test_reaching_the_target_stops_after_that_epoch():
  config = micro_config(target_acc=1.0)  # 1 % of 40 test pairs: reached at once
  trainer = experiment.make_trainer(config)
  _, _, data, tr = _setup()
  assert trainer.hyper.target_correct == 1
  state = trainer.init_state([config.seed], [config.lr], [config.weight_decay])
  new, m = trainer.epoch(state, _spec(config, tr, ['stride']), data, jnp.int32(0), do_eval=True)
  if int(m['validation_correct'][0]) >= 1:
    assert not bool(new.active[0]) and int(new.stop_reason[0]) == train.REACHED_TARGET
    assert int(new.epoch[0]) == 1  # the epoch that reached the target is kept
  else:
    assert bool(new.active[0])


@pytest.mark.parametrize('target,n,want', [(99.5, 1_000_000, 995_000), (99.5, 40, 40),
                                           (50.0, 40, 20), (100.0, 7, 7), (1e-9, 40, 1)])
def test_target_correct(target, n, want):
  c = train.target_correct(target, n)
  assert c == want and 100.0 * c / n >= target and (c == 0 or 100.0 * (c - 1) / n < target)
