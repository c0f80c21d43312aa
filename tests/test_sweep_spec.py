"""The sweep spec (ordered_jax.sweep): value syntax, grid / zip points, apply, run ids."""

import hashlib

import ml_collections
import pytest
from ml_collections import config_dict

from ordered_jax import sweep
from ordered_jax.sweep import SweepError


def small(**grid):
  """A small locked config with int, float, bool, str, tuple, object and nested fields,
  its sweep mirrored, and ``grid`` set (dotted keys as 'a__b')."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.lr = 1e-3
  c.weight_decay = 0.1
  c.tensorboard = True
  c.strategy = 'stride'
  c.seeds = ()
  c.train_size = config_dict.FieldReference(100, field_type=object)
  c.probe_every = 10
  c.grokfast = ml_collections.ConfigDict(dict(kind='none', alpha=0.98))
  c.probes = ml_collections.ConfigDict()
  c.probes.every = c.get_ref('probe_every')
  c.sweep = ml_collections.ConfigDict()
  c.sweep.max_runs_per_batch = 0
  c.sweep.grid = sweep.mirror(c)
  c.sweep.zip = sweep.mirror(c)
  for k, v in grid.items():
    group, _, name = k.rpartition('__')
    node = c.sweep.grid if not group else c.sweep.grid[group]
    node[name] = v
  c.lock()
  return c


@pytest.mark.parametrize('text, like, want', [
    ('0..8', 0, list(range(8))),
    ('0..100..10', 0, list(range(0, 100, 10))),
    ('10..0..-5', 0, [10, 5]),
    ('-2..1', 0, [-2, -1, 0]),
    ('0..3,10', 0, [0, 1, 2, 10]),
    ('0.1..1.0..0.3', 1.0, [0.1, 0.4, 0.7]),       # decimal arithmetic: stop is exact
    ('0..1..0.25', 1.0, [0.0, 0.25, 0.5, 0.75]),
    ('1e-4..5e-4..1e-4', 1.0, [1e-4, 2e-4, 3e-4, 4e-4]),
    ('1.0..0.0..-0.5', 1.0, [1.0, 0.5]),
    ('1,2', 1.0, [1.0, 2.0]),
    ('0.1, 1.0', 1.0, [0.1, 1.0]),
    ('7', 0, [7]),
    ('1e-3', 1.0, [1e-3]),
    ('true,False', True, [True, False]),
    ('stride, random', 'x', ['stride', 'random']),
    ('../runs/a', 'x', ['../runs/a']),               # str fields: no ranges
    ('critical,300,0.5', object, ['critical', 300, 0.5]),
    ('1..3', object, [1, 2]),
])
def test_parse_values(text, like, want):
  got = sweep.parse_values(text, 'sweep.grid.x', like)
  assert got == want
  assert [type(v) for v in got] == [type(v) for v in want]


@pytest.mark.parametrize('text, like, what', [
    ('5..5', 0, 'empty'),
    ('0..10..-1', 0, 'empty'),
    ('0.5..0.5', 1.0, 'empty'),
    ('0..10..0', 0, 'cannot be 0'),
    ('0.0..1.0..0', 1.0, 'cannot be 0'),
    ('1.5', 0, 'whole numbers'),
    ('0..2.5', 0, 'whole numbers'),
    ('abc', 1.0, 'finite numbers'),
    ('1,,2', 0, 'whole numbers'),
    ('1..2..3..4', 0, 'a range is'),
    ('yes', True, 'true or false'),
    ('1,2', (), 'tuple fields cannot be swept'),
    ('', 0, 'at least one value'),
])
def test_parse_values_errors(text, like, what):
  with pytest.raises(SweepError) as e:
    sweep.parse_values(text, 'sweep.grid.seed', like)
  msg = str(e.value)
  assert msg.startswith('config.sweep.grid.seed: ') and what in msg
  assert msg.endswith(f"; got '{text}'") and '\n' not in msg


def test_mirror_every_leaf_empty_skips_sweep():
  c = small()
  m = sweep.mirror(c)
  assert 'sweep' not in m
  leaves = dict(sweep._leaves(m))
  assert set(leaves) == {k for k, _ in sweep._leaves(c)}
  assert 'grokfast.kind' in leaves and 'probes.every' in leaves
  assert all(v == '' for v in leaves.values())


def test_mirror_real_config():
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.unlock()
  c.sweep = ml_collections.ConfigDict()
  c.sweep.grid = sweep.mirror(c)
  c.sweep.zip = sweep.mirror(c)
  c.lock()
  want = {k for k, _ in sweep._leaves(c)}
  assert want and all(not k.startswith('sweep') for k in want)
  assert {k for k, _ in sweep._leaves(c.sweep.grid)} == want
  assert {'seed', 'grokfast.kind', 'probes.curvature.k', 'train_size'} <= want
  assert sweep.points(c) == [{}]
  c.sweep.grid.seed = '0..3'
  c.sweep.grid.train_size = '100,critical'
  c.sweep.zip.grokfast.kind = 'ema,ma'
  c.sweep.zip.grokfast.alpha = '0.9,0.99'
  pts = sweep.points(c)
  assert len(pts) == 2 * 3 * 2
  assert pts[0] == {'grokfast.alpha': 0.9, 'grokfast.kind': 'ema', 'seed': 0,
                    'train_size': 100}
  run = sweep.apply(c, pts[-1])
  assert (run.seed, run.train_size, run.grokfast.kind) == (2, 'critical', 'ma')
  with pytest.raises(AttributeError):  # typos fail on the locked mirror
    c.sweep.grid.sede = '1'


def test_values_cast_by_field_type():
  c = small(seed='1,2', lr='0.01', tensorboard='true,false', strategy='a,b',
            grokfast__kind='ema', train_size='critical')
  pts = sweep.points(c)
  assert len(pts) == 2 * 2 * 2
  p = pts[0]
  assert p == {'grokfast.kind': 'ema', 'lr': 0.01, 'seed': 1, 'strategy': 'a',
               'tensorboard': True, 'train_size': 'critical'}
  assert type(p['seed']) is int and type(p['lr']) is float


def test_grid_product_order_last_key_fastest():
  c = small(seed='0..2', weight_decay='0.1,1')
  assert sweep.points(c) == [{'seed': 0, 'weight_decay': 0.1}, {'seed': 0, 'weight_decay': 1.0},
                             {'seed': 1, 'weight_decay': 0.1}, {'seed': 1, 'weight_decay': 1.0}]


def test_no_sweep_is_one_point():
  assert sweep.points(small()) == [{}]
  c = ml_collections.ConfigDict(dict(seed=1))
  assert sweep.points(c) == [{}]
  assert 'nothing swept' in sweep.describe([{}])


def test_zip_and_grid_x_zip():
  c = small(seed='0..2')
  with c.unlocked():
    c.sweep.zip.lr = '0.1,0.2,0.3'
    c.sweep.zip.weight_decay = '1,2,3'
  pts = sweep.points(c)
  assert len(pts) == 6
  assert [(p['lr'], p['weight_decay'], p['seed']) for p in pts] == [
      (0.1, 1.0, 0), (0.1, 1.0, 1), (0.2, 2.0, 0), (0.2, 2.0, 1), (0.3, 3.0, 0),
      (0.3, 3.0, 1)]
  d = sweep.describe(pts)
  assert d.startswith('6 points') and 'seed x2' in d and 'lr x3' in d


def test_zip_unequal_lengths():
  c = small()
  c.sweep.zip.lr = '0.1,0.2,0.3'
  c.sweep.zip.seed = '0..2'
  with pytest.raises(SweepError, match=r'^config\.sweep\.zip\.seed: zip keys covary and need '
                     r'equal lengths: seed has 2 values, lr has 3; got \'0\.\.2\'$'):
    sweep.points(c)


def test_key_in_grid_and_zip():
  c = small(seed='0..2')
  c.sweep.zip.seed = '3,4'
  with pytest.raises(SweepError, match='grid or by zip, not both'):
    sweep.points(c)


def test_spec_errors_name_the_key():
  with pytest.raises(SweepError, match=r"^config\.sweep\.grid\.seed: an int field .*got '1\.5'$"):
    sweep.points(small(seed='1.5'))
  with pytest.raises(SweepError, match=r'^config\.sweep\.grid\.seeds: tuple fields cannot'):
    sweep.points(small(seeds='1,2'))
  c = small()
  with c.unlocked():  # structure the config lacks (an unlocked, hand-built spec)
    c.sweep.grid.grokfast.beta = '1,2'
  with pytest.raises(SweepError, match=r'^config\.sweep\.grid\.grokfast\.beta: not a field'):
    sweep.points(c)
  c = small()
  with c.unlocked():  # a hand-built spec naming a group as a leaf
    c.sweep.grid = ml_collections.ConfigDict(dict(grokfast='ema'))
  with pytest.raises(SweepError, match=r'^config\.sweep\.grid\.grokfast: is a group of fields'):
    sweep.points(c)


@pytest.mark.parametrize('grid, zipped, what', [
    ({'seed': '1,1'}, {}, r"^config\.sweep\.grid\.seed: lists 1 twice"),
    ({'seed': '0..3,2'}, {}, r"^config\.sweep\.grid\.seed: lists 2 twice"),
    ({'lr': '0.1,0.10'}, {}, r"^config\.sweep\.grid\.lr: lists 0\.1 twice"),
    ({'strategy': 'stride, stride'}, {}, "grid.strategy: lists 'stride' twice"),
    ({}, {'seed': '1,2,1', 'lr': '0.1,0.2,0.1'},
     r"^config\.sweep\.zip\.lr: the row \(0\.1, 1\) \(lr, seed\) is listed twice"),
])
def test_a_run_listed_twice_is_refused(grid, zipped, what):
  c = small(**grid)
  for k, v in zipped.items():
    c.sweep.zip[k] = v
  with pytest.raises(SweepError, match=what) as e:
    sweep.points(c)
  assert '\n' not in str(e.value)


def test_a_run_repeated_in_zip_is_allowed_when_its_row_differs():
  c = small()
  c.sweep.zip.seed, c.sweep.zip.lr = '1,1', '0.1,0.2'
  assert sweep.points(c) == [{'lr': 0.1, 'seed': 1}, {'lr': 0.2, 'seed': 1}]


def test_apply_sets_nested_keys_on_a_locked_copy():
  c = small(seed='0..2', grokfast__kind='ema,ma')
  c.sweep.max_runs_per_batch = 4
  run = sweep.apply(c, {'seed': 5, 'grokfast.kind': 'ema', 'probe_every': 3})
  assert (run.seed, run.grokfast.kind, run.probe_every) == (5, 'ema', 3)
  assert run.probes.every == 3                  # the field reference survives the copy
  assert run.is_locked and run.grokfast.is_locked
  assert run.sweep.grid.seed == '' and run.sweep.grid.grokfast.kind == ''
  assert run.sweep.max_runs_per_batch == 4
  assert sweep.points(run) == [{}]
  # The original is untouched.
  assert (c.seed, c.grokfast.kind, c.probe_every, c.probes.every) == (0, 'none', 10, 10)
  assert c.sweep.grid.seed == '0..2'
  with pytest.raises(SweepError, match='not a field'):
    sweep.apply(c, {'grokfast.nope': 1})
  unlocked = ml_collections.ConfigDict(dict(seed=1))
  assert sweep.apply(unlocked, {'seed': 2}).is_locked and not unlocked.is_locked


def test_run_id():
  a = {'seed': 1, 'lr': 0.001, 'grokfast': {'kind': 'ema', 'alpha': 0.98}, 'seeds': []}
  b = {'seeds': (), 'grokfast': {'alpha': 0.98, 'kind': 'ema'}, 'lr': 0.001, 'seed': 1}
  rid = sweep.run_id(a)
  assert rid == sweep.run_id(b) and len(rid) == 12 and int(rid, 16) >= 0
  assert rid == sweep.run_id(ml_collections.ConfigDict(a))
  assert sweep.run_id({**a, 'seed': 2}) != rid
  assert sweep.run_id({**a, 'lr': 0.0010000000000000002}) != rid  # floats by repr
  # Types count (typed config fields keep them consistent): 1 and 1.0 differ.
  assert sweep.run_id({**a, 'seed': 1.0}) != rid
  # Canonical JSON: sorted keys, no spaces.
  assert sweep.run_id({'y': [1.5, None], 'x': 1}) == hashlib.sha256(
      b'{"x":1,"y":[1.5,null]}').hexdigest()[:12]
  with pytest.raises(TypeError):
    sweep.run_id({'x': object()})


def test_rerun_filters():
  c = small()
  filters = sweep.parse_rerun('seed=1,2;weight_decay=0.1|seed=5..7', c)
  assert filters == [{'seed': [1, 2], 'weight_decay': [0.1]}, {'seed': [5, 6]}]
  assert sweep.matches({'seed': 1, 'weight_decay': 0.1, 'lr': 0.1}, filters)
  assert not sweep.matches({'seed': 1, 'weight_decay': 1.0}, filters)   # AND within a filter
  assert sweep.matches({'seed': 6, 'weight_decay': 1.0}, filters)       # OR across filters
  assert not sweep.matches({'weight_decay': 0.1}, filters)              # missing key
  assert sweep.parse_rerun('', c) == [] and not sweep.matches({'seed': 1}, [])
  assert sweep.parse_rerun('grokfast.kind=ema', c) == [{'grokfast.kind': ['ema']}]
  for bad, what in (('seed', "key=values"), ('sede=1', 'not a field'),
                    ('seed=1.5', 'whole numbers'), ('seed=1|', 'empty filter'),
                    ('seed=1;seed=2', 'twice'), (';;;', 'without a key=values'),
                    ('seed=1| ; ', 'without a key=values')):
    with pytest.raises(SweepError, match=what) as e:
      sweep.parse_rerun(bad, c)
    assert str(e.value).startswith('--rerun') and '\n' not in str(e.value)
