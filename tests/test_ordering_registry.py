"""Orderings as registered objects (issue 15 part 2): the registry, strategy=file and
strategy=curriculum end to end, against independent numpy references."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ordered_jax import experiment, listing, orderings, runs, tasks, train
from tests import golden
from tests.conftest import ROOT, micro_config

N, B = 60, 16  # the micro config's training set and batch size: 4 steps, the last of 12


class _SeenBatches:
  """A step probe recording every batch the epoch trains on (rows and mask)."""
  name, needs = 'seen', frozenset({'steps'})

  def init(self, params):
    del params
    steps = -(-N // B)
    return {'rows': jnp.zeros((steps, B, 3), jnp.int32), 'mask': jnp.zeros((steps, B), bool)}

  def on_step(self, state, s):
    return {'rows': state['rows'].at[s.step].set(s.batch_BxC),
            'mask': state['mask'].at[s.step].set(s.mask_B)}

  def on_epoch(self, state, info):
    del info
    return state, dict(state), jnp.array(True)


def _micro(curriculum=(), **kw):
  """micro_config with ``curriculum.<k>`` fields set from ``curriculum`` (pairs)."""
  c = micro_config(**kw)
  for k, v in dict(curriculum).items():
    c.curriculum[k] = v
  return c


def _save(tmp_path, array, name='order.npy'):
  path = str(tmp_path / name)
  np.save(path, array)
  return path


def test_registry_names_every_ordering_and_list_reads_it():
  assert orderings.STRATEGIES[:6] == ('stride', 'target', 'random', 'fixed-random',
                                      'alternating', 'resonant')
  assert {'file', 'curriculum'} <= set(orderings.STRATEGIES)
  assert set(orderings.PAPER_STRATEGIES) <= set(orderings.STRATEGIES)
  table = dict((t, rows) for t, _, rows in listing.sections())['Orderings']
  assert list(table) == list(orderings.STRATEGIES) and all(table.values())
  with pytest.raises(runs.ConfigError, match=r"config\.strategy: unknown strategy 'spiral'"):
    runs.validate(micro_config(strategy='spiral'))


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
  """One batch of alternating, file and curriculum (one compile for three tests), trained
  4 epochs with every batch recorded: the file holds [stride's, target's, a random]
  order, so it is alternating for two epochs, then the random row, then cycles;
  curriculum (easiest first) refreshes its losses every 2 epochs. Before each epoch the
  curriculum run's losses are computed independently (numpy, float64)."""
  config = _micro(strategy='alternating', curriculum={'every': 2})
  task, (n_train, n_test) = runs.task(config), runs.sizes(config)
  table, _ = tasks.make_task(task, n_train, n_test, config.seed, runs.generator(config))
  s = runs.stride(config)
  orders = np.stack([orderings.static_order('alternating', table, stride=s, parity=k)
                     for k in (0, 1)] + [np.random.default_rng(0).permutation(N)])
  path = _save(tmp_path_factory.mktemp('order'), orders.astype(np.int64))
  config = _micro(strategy='alternating,file,curriculum', order_file=path,
                  curriculum={'every': 2})
  runs.validate(config)
  b = experiment.build(config, probes=(_SeenBatches(),))
  assert np.array_equal(next(iter(b.train_sets.values())), table)
  state, seen, losses, params = b.state, [], [], []
  for e in range(4):
    losses.append(_numpy_losses(b.trainer, train.run_slice(state.params, 2), table))
    state, m = b.trainer.epoch(state, b.spec, b.data, jnp.int32(e), do_eval=False,
                               do_probe=True)
    rows, mask = (np.asarray(m['probes'][f'seen/{k}']) for k in ('rows', 'mask'))
    seen.append([rows[r][mask[r]] for r in range(3)])
    params.append(jax.device_get(state.params))
  return dict(b=b, table=table, orders=orders, seen=seen, losses=losses, params=params,
              state=state)


def test_file_ordering_trains_on_exactly_the_files_rows(mixed):
  """[E, N] file: epoch e trains on row e mod E, batch by batch (epoch 3 cycles to row 0)."""
  assert [o.name for o in mixed['b'].spec.orderings] == ['alternating', 'file', 'curriculum']
  for e in range(4):
    np.testing.assert_array_equal(mixed['seen'][e][1], mixed['table'][mixed['orders'][e % 3]])


def test_file_and_alternating_in_one_batch_train_identically(mixed):
  """A file holding [stride's, target's] order is alternating: in one batch (a switch over
  the runs' orderings) both train to the same weights, bit for bit, while it is."""
  for e in range(4):
    np.testing.assert_array_equal(mixed['seen'][e][0], mixed['seen'][e][1] if e < 2 else
                                  mixed['table'][mixed['orders'][e % 2]])
  a, f = (train.run_slice(mixed['params'][1], r) for r in (0, 1))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, f)))


def test_one_order_for_every_epoch_and_the_run_identity(tmp_path):
  order = np.random.default_rng(1).permutation(N).astype(np.int32)
  path = _save(tmp_path, order)
  config = micro_config(strategy='file', order_file=path)
  b = experiment.build(config)
  one = train.run_slice(b.spec, 0)
  key = jax.random.key(0)
  for e in (0, 5):
    np.testing.assert_array_equal(b.trainer.epoch_order(key, one, jnp.int32(e), N), order)
  (r,) = runs.expand(config)
  cfg = experiment.run_config(config, r, {})
  assert cfg['order_file_sha256'] == hashlib.sha256(open(path, 'rb').read()).hexdigest()
  other = experiment.run_config(micro_config(), runs.expand(micro_config())[0], {})
  assert 'order_file_sha256' not in other  # other orderings: ids as before


@pytest.mark.parametrize('content, needle', [
    (None, 'no such file'),
    (b'not a numpy file', 'not a readable .npy array'),
    (np.arange(N, dtype=np.float32), 'must be integers'),
    (np.arange(N - 1), 'has shape (59,)'),
    (np.zeros((2, 3, N), np.int64), 'has shape (2, 3, 60)'),
    (np.r_[np.arange(N - 1), 0], 'row 0 is not a permutation'),
    (np.stack([np.arange(N), np.r_[1, 1, np.arange(2, N)]]), 'row 1 is not a permutation'),
    (np.r_[np.arange(N - 1), N], 'outside [0, 60)'),
    ('', 'must name a .npy file'),
])
def test_bad_order_files_are_one_line(tmp_path, content, needle):
  if isinstance(content, str):
    path = content
  else:
    path = str(tmp_path / 'order.npy')
    if isinstance(content, bytes):
      open(path, 'wb').write(content)
    elif content is not None:
      np.save(path, content)
  with pytest.raises(runs.ConfigError) as e:
    runs.validate(micro_config(strategy='file', order_file=path))
  assert str(e.value).startswith('config.order_file: ') and needle in str(e.value)
  assert '\n' not in str(e.value)


def test_curriculum_fields_are_validated():
  with pytest.raises(runs.ConfigError, match=r'config\.curriculum\.direction: must be one '):
    runs.validate(_micro(strategy='curriculum', curriculum={'direction': 'up'}))
  with pytest.raises(runs.ConfigError, match=r'config\.curriculum\.every: must be >= 1'):
    runs.validate(_micro(strategy='curriculum', curriculum={'every': 0}))


def test_loss_order_matches_numpy_stable_argsort_with_ties():
  losses = np.array([1.0, 0.0, 2.0, 1.0, -0.0, 0.0, np.float32(1.5)], np.float32)
  from ordered_jax.orderings import curriculum  # pylint: disable=g-import-not-at-top
  for hardest, want in ((False, np.argsort(losses, kind='stable')),
                        (True, np.argsort(-losses, kind='stable'))):
    got = jax.jit(curriculum.loss_order, static_argnums=1)(jnp.asarray(losses), hardest)
    np.testing.assert_array_equal(got, want)
  assert list(np.argsort(losses, kind='stable')) == [1, 4, 5, 0, 3, 6, 2]


def _numpy_losses(trainer, params, table):
  """Per-example cross-entropy in float64 numpy from the model's logits (no dropout)."""
  logits = np.asarray(trainer.model.apply(params, jnp.asarray(table[:, :-1])), np.float64)
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(table)), table[:, -1]]


def test_curriculum_trains_by_numpy_argsort_of_independent_losses(mixed):
  """Easiest first: epoch e trains in the order np.argsort(losses, stable) of the losses,
  computed independently in numpy, at the weights before the last refresh (every=2:
  epochs 0 and 2)."""
  b, table = mixed['b'], mixed['table']
  for e in range(4):
    losses = mixed['losses'][e - e % 2]
    assert np.diff(np.sort(losses)).min() > 1e-6, 'near-ties: the float32 order is ill-defined'
    want = np.argsort(losses, kind='stable')
    np.testing.assert_array_equal(mixed['seen'][e][2], table[want], err_msg=f'epoch {e}')
  assert not np.array_equal(*(np.argsort(mixed['losses'][e]) for e in (0, 2)))  # refreshed
  assert mixed['state'].order_state['at'].tolist() == [-1, -1, 2]  # only curriculum's
  last = train.run_slice(mixed['params'][-1], 2)
  np.testing.assert_allclose(np.asarray(b.trainer.example_losses(last, b.data)),
                             _numpy_losses(b.trainer, last, table), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_curriculum_resumes_as_if_uninterrupted(tmp_path):
  """The losses live in the checkpoint: a resume between refreshes keeps the old order."""
  kw = dict(strategy='curriculum', epochs=3,
            curriculum={'direction': 'hardest', 'every': 3})
  experiment.run(_micro(stop_after=2, **kw), str(tmp_path / 'a'), quiet='silent')
  (resumed,) = experiment.run(_micro(**kw), str(tmp_path / 'a'), resume=True, quiet='silent')
  (whole,) = experiment.run(_micro(**kw), str(tmp_path / 'b'), quiet='silent')
  assert resumed['final_eval'] == whole['final_eval']
  model = experiment.make_trainer(_micro(**kw)).model
  from ordered_jax import checkpoint  # pylint: disable=g-import-not-at-top
  sha = [golden.params_sha256(checkpoint.load_params(str(tmp_path / d / 'curriculum'), model))
         for d in ('a', 'b')]
  assert sha[0] == sha[1]
  rows = [json.loads(line) for line in open(tmp_path / 'b' / 'curriculum' / 'curriculum.jsonl')]
  assert len(rows) == 3
  assert os.path.exists(tmp_path / 'a' / 'curriculum' / 'summary.json')


def test_the_extending_pages_example_is_one_working_file():
  """docs/extending.md's ordering (its first python block) registers and trains, and its
  test (the second block) passes; the registry is left as it was."""
  import re  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  text = open(os.path.join(ROOT, 'docs', 'extending.md')).read()
  module_src, test_src = re.findall(r'```python\n(.*?)```', text, re.S)[:2]
  before = dict(orderings.REGISTRY)
  try:
    exec(compile(module_src, 'stride_shuffled.py', 'exec'),  # pylint: disable=exec-used
         types.ModuleType('stride_shuffled').__dict__)
    assert 'stride-shuffled' in orderings.REGISTRY
    runs.validate(micro_config(strategy='stride-shuffled,stride'))
    scope = {}
    exec(compile(test_src, 'test_stride_shuffled.py', 'exec'), scope)  # pylint: disable=exec-used
    scope['test_classes_in_order_rows_shuffled']()
  finally:
    orderings.REGISTRY.clear()
    orderings.REGISTRY.update(before)


def test_checkpoints_written_before_order_state_existed_restore(tmp_path):
  """RunState gained order_state (None unless an ordering reads losses): a checkpoint
  saved from the old RunState (no such field), checksum included, restores into the new
  one and still passes its checksum."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from flax import struct  # pylint: disable=g-import-not-at-top
  from ordered_jax import checkpoint  # pylint: disable=g-import-not-at-top

  @struct.dataclass
  class OldRunState:  # train.RunState as it was
    params: object
    opt_state: object
    key: object
    epoch: object
    active: object
    stop_reason: object
    probes: object = None

  like = train.run_slice(experiment.build(micro_config()).state, 0)
  assert like.order_state is None
  old = OldRunState(**{f: getattr(like, f) for f in OldRunState.__dataclass_fields__})
  old = jax.device_get(old.replace(epoch=np.int32(7)))
  meta = {'x': 1, checkpoint.CHECKSUM: {'blake2b': checkpoint.digest(old, {'x': 1})}}
  mgr = checkpoint.manager(str(tmp_path / 'run'))
  mgr.save(8, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                      meta=ocp.args.JsonSave(meta)))
  mgr.wait_until_finished()
  state, got = checkpoint.restore(mgr, 8, like)
  assert isinstance(state, train.RunState) and state.order_state is None
  assert int(state.epoch) == 7 and got == {'x': 1}
  mgr.close()
