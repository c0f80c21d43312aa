"""The registries of task kinds, optimisers and models (issue 15 part 1): each is declared
once, in its own module, with its factory and description; validation, --list and the
error texts read the registries; docs/extending.md's examples are one file each."""

import os
import re
import types

import pytest

from ordered_jax import listing, tasks
from tests.conftest import ROOT


def test_the_built_in_kinds_are_registered_in_order_with_a_description():
  assert tuple(tasks.KINDS)[:len(tasks.TASK_NAMES)] == tasks.TASK_NAMES
  rows = {t: r for t, _, r in listing.sections()}
  assert list(rows['Tasks']) == list(tasks.KINDS)
  assert all(rows['Tasks'].values())


@pytest.mark.parametrize('spec, want', [
    ('add:3', r"^task: add takes no argument \(.*\); got 'add:3'$"),
    ('poly', r"^task: poly needs an argument, poly:<arg> \(poly:.*\); got 'poly'$"),
    ('sym', r"^task: sym needs an argument, sym:<arg> \(sym:N .*\); got 'sym'$"),
    ('nope:1', r"^task: must be one of add, .*; got 'nope:1'$"),
    ('Add', r"^task: must be one of add, .*; got 'Add'$")])
def test_a_spec_its_kind_does_not_take_is_one_line(spec, want):
  with pytest.raises(ValueError, match=want) as e:
    tasks.parse_task(spec, 13)
  assert '\n' not in str(e.value)


def test_registering_twice_or_a_bad_name_is_refused():
  with pytest.raises(ValueError, match='registered twice'):
    tasks.register_kind('add', lambda arg, **kw: None, 'again')
  with pytest.raises(ValueError, match='lower-case'):
    tasks.register_kind('Bad-Name', lambda arg, **kw: None, 'bad')


def _example(first: int, name: str):
  """docs/extending.md's python blocks ``first`` (a module, executed as ``name``.py, which
  registers itself) and ``first + 1`` (its test file): returns the test file's scope."""
  text = open(os.path.join(ROOT, 'docs', 'extending.md')).read()
  module_src, test_src = re.findall(r'```python\n(.*?)```', text, re.S)[first:first + 2]
  exec(compile(module_src, f'{name}.py', 'exec'),  # pylint: disable=exec-used
       types.ModuleType(name).__dict__)
  scope = {}
  exec(compile(test_src, f'test_{name}.py', 'exec'), scope)  # pylint: disable=exec-used
  return scope


def test_the_extending_pages_task_is_one_working_file():
  """docs/extending.md's task (its third python block) registers, is listed and named in
  the error text, and its test (the fourth block) passes; the registry is left as it
  was."""
  try:
    scope = _example(2, 'xor')
    assert 'xor' in {n for t, _, r in listing.sections() if t == 'Tasks' for n in r}
    with pytest.raises(ValueError, match=r', or (\w+, )*xor; got'):
      tasks.parse_task('nope', 13)
    with pytest.raises(ValueError, match=r'xor:N needs an integer 1 <= N <= 15'):
      tasks.parse_task('xor:16', 13)
    scope['test_xor_tables_against_numpy']()
    scope['test_xor_builds_a_run']()
  finally:
    tasks.unregister_kind('xor')
  assert 'xor' not in tasks.KINDS


def test_a_registered_optimizer_is_validated_listed_and_built():
  """An optimiser declared with optim.register_optimizer (issue 15 part 1) is accepted by
  the config's validation, listed, and built with the learning rate in its state: sign
  descent's update is -lr sign(g)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ordered_jax import optim, runs  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  optim.register_optimizer(
      'signsgd', lambda lr, wd, h: optax.chain(optax.scale_by_sign(),
                                               optax.scale_by_learning_rate(lr)),
      'sign descent')
  try:
    runs.validate(micro_config(optimizer='signsgd'))
    assert {t: r for t, _, r in listing.sections()}['Optimizers']['signsgd'] == 'sign descent'
    tx = optim.make_optimizer('signsgd', lr=0.25, weight_decay=0.0, grad_clip=1.0)
    g = {'w': jnp.asarray([0.5, -2.0, 0.0])}
    update, _ = tx.update(g, tx.init(g), g)
    np.testing.assert_array_equal(update['w'], [-0.25, 0.25, 0.0])
  finally:
    optim.REGISTRY.pop('signsgd')
  with pytest.raises(runs.ConfigError, match=r"config.optimizer: must be one of adamw, adam, "
                     r"sgd, muon; got 'signsgd'"):
    runs.validate(micro_config(optimizer='signsgd'))


def test_the_extending_pages_model_is_one_working_file(tmp_path):
  """docs/extending.md's model (its seventh python block) registers, is listed, trains
  and is sized by the memory estimate, and its test (the eighth block) passes; the
  registry is left as it was."""
  from ordered_jax import models, runs  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  try:
    scope = _example(6, 'embed_mlp')
    assert 'embed_mlp' in {n for t, _, r in listing.sections() if t == 'Models' for n in r}
    scope['test_embed_mlp_against_numpy']()
    scope['test_embed_mlp_trains'](tmp_path)
  finally:
    models.REGISTRY.pop('embed_mlp', None)
  with pytest.raises(runs.ConfigError, match=r"config.model: must be one of .*; got "
                     r"'embed_mlp'"):
    runs.validate(micro_config(model='embed_mlp'))


def test_each_model_validates_its_own_config_section():
  """runs.validate calls every registered model's validate (the built-ins check config.mlp,
  config.gpt2, config.dln there), whatever the config's model, since a sweep may switch."""
  from ordered_jax import models, runs  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  seen = []

  def validate(config):
    seen.append(config.model)
    runs.check(config.mlp_dim <= 64, 'mlp_dim', 'must be <= 64 for model strict')

  models.register_model('strict', models.TwoLayerMLP, 'a test model', validate=validate)
  try:
    runs.validate(micro_config())
    assert seen == ['reference']
    with pytest.raises(runs.ConfigError, match=r'^config.mlp_dim: must be <= 64 for model '):
      runs.validate(micro_config(mlp_dim=65))
  finally:
    models.REGISTRY.pop('strict')
  c = micro_config()
  c.gpt2.value_mode = 'nope'
  with pytest.raises(runs.ConfigError, match=r'^config.gpt2.value_mode: must be one of '):
    runs.validate(c)
  # A validate reading a section this config lacks: one line naming the field.
  models.register_model('sectioned', models.TwoLayerMLP, 'a test model', validate=lambda c: (
      runs.number(c, 'sectioned.rank', integer=True, lo=1)))
  try:
    with pytest.raises(runs.ConfigError, match=r'^config.sectioned.rank: missing from this '):
      runs.validate(micro_config())
  finally:
    models.REGISTRY.pop('sectioned')


def test_a_model_and_a_task_read_their_own_config_sections_which_a_sweep_reaches():
  """A model and a task registered with ``section=`` get their config section (the model
  as ``models.options(cfg)``, the task's parse as ``options=``); a config that adds those
  sections and calls ``sweep.remirror`` sweeps their fields like any other."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ordered_jax import budget, experiment, models, runs, sweep  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top

  class Hidden(nnx.Module):
    def __init__(self, cfg, *, rngs):
      h = models.options(cfg)['hidden']
      self.embed = nnx.Embed(cfg.vocab, 4, rngs=rngs)
      self.mid = nnx.Linear(4 * cfg.n_ops, h, rngs=rngs)
      self.out = nnx.Linear(h, cfg.vocab, rngs=rngs)

    def __call__(self, x_BxK, key=None, return_attn=False):
      y = self.out(nnx.relu(self.mid(self.embed(x_BxK).reshape(x_BxK.shape[0], -1))))
      return (y, None) if return_attn else y

  def parse(arg, *, name, spec, p, dim, options):
    m = options.get('order', 5)
    return tasks.Task(name, order=m, n_ops=2, n_codes=m * m, c=1.0, radices=(m, m),
                      offsets=(0, 0), labeller=lambda ops: (ops[:, 0] + 2 * ops[:, 1]) % m)

  models.register_model('hidden', Hidden, 'a test model', section='hidden')
  tasks.register_kind('lin', parse, 'a test task', arg=False, section='lin')
  try:
    c = micro_config(model='hidden', task='lin', train_size=40, test_size=0)
    with c.unlocked():
      c.hidden = ml_collections.ConfigDict(dict(hidden=6))
      c.lin = ml_collections.ConfigDict(dict(order=7))
      c.sweep.grid.seed = '1'  # set before: kept
    # A locked config takes a flag's value only for a field it has (--config.sweep.grid...).
    with pytest.raises(AttributeError):
      c.sweep.grid.hidden.hidden = '3,9'
    sweep.remirror(c)
    assert c.is_locked and c.sweep.grid.seed == '1' and c.sweep.zip.lin.order == ''
    c.sweep.grid.seed = ''
    c.sweep.grid.hidden.hidden = '3,9'
    c.sweep.grid.lin.order = '7,11'
    pts = sweep.points(c)
    assert pts == [{'hidden.hidden': h, 'lin.order': o} for h in (3, 9) for o in (7, 11)]
    for point in pts:
      run = sweep.apply(c, point)
      runs.validate(run)
      t = runs.task(run)
      assert t.order == point['lin.order']
      train, _ = tasks.make_task(t, 40, 0, seed=0)
      np.testing.assert_array_equal(train[:, 2], (train[:, 0] + 2 * train[:, 1]) % t.order)
      cfg = experiment.model_config(run)
      assert models.options(cfg) == {'hidden': point['hidden.hidden']}
      h, v = point['hidden.hidden'], t.order
      want = v * 4 + (8 * h + h) + (h * v + v)
      assert models.param_count(models.Model(cfg).abstract_params()) == want
      assert budget.param_count(run) == want
  finally:
    models.REGISTRY.pop('hidden', None)
    tasks.unregister_kind('lin')


def test_the_extending_pages_config_file_mirrors_its_section():
  """docs/extending.md's config file (its last python block) adds a section the sweep
  reaches."""
  text = open(os.path.join(ROOT, 'docs', 'extending.md')).read()
  src = re.findall(r'```python\n(.*?)```', text, re.S)[-1]
  scope = {}
  exec(compile(src, 'my_model.py', 'exec'), scope)  # pylint: disable=exec-used
  c = scope['get_config']()
  c.lock()
  c.sweep.grid.my_model.hidden = '32,64'
  from ordered_jax import sweep  # pylint: disable=g-import-not-at-top
  assert sweep.points(c) == [{'my_model.hidden': 32}, {'my_model.hidden': 64}]


def test_a_task_kind_over_z_p_gets_the_fourier_probes(tmp_path):
  """A kind registered with zp=True (two operands and the label in Z_p) is admitted by the
  probes that read the Fourier structure over Z_p, listed as such, and they run on it;
  without zp it is refused in one line."""
  import probes  # pylint: disable=g-import-not-at-top
  from probes import registry  # pylint: disable=g-import-not-at-top
  from ordered_jax import experiment, runs, sinks  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top

  def parse(arg, *, name, spec, p, dim):
    return tasks.Task(name, order=p, n_ops=2, n_codes=p * p, c=1.0, radices=(p, p),
                      offsets=(0, 0), labeller=lambda ops: (ops[:, 0] + 2 * ops[:, 1]) % p)

  tasks.register_kind('affine', parse, 'a + 2b mod p', arg=False)
  try:
    config = micro_config(task='affine', epochs=2)
    config.probes.names = 'fourier'
    with pytest.raises(runs.ConfigError, match=r"probe 'fourier' needs a two-operand task "
                       r"over Z_p \(add, sub, mul, div, poly\); task is 'affine'"):
      probes.build(config)
  finally:
    tasks.unregister_kind('affine')
  tasks.register_kind('affine', parse, 'a + 2b mod p', arg=False, zp=True)
  try:
    assert 'affine' in registry.support_text(registry.entries()['fourier'])
    assert 'fourier' not in probes.unsupported(config)
    experiment.run(config, str(tmp_path), quiet='silent', probes=probes.build(config))
    rows = sinks.read_jsonl(os.path.join(tmp_path, 'stride', 'stride.jsonl'))
    assert any('fourier/spectral_entropy' in r for r in rows)
  finally:
    tasks.unregister_kind('affine')
