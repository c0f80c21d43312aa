"""The probe registry (issue 15 parts 1 and 4): probes declare what they need, their groups
and options in their own module; validation, groups and the catalog read the declarations."""

import os
import re
import types

import pytest

import probes
from ordered_jax import runs
from probes import catalog, registry
from tests.conftest import ROOT, micro_config


def test_groups_keep_the_reference_hook_order():
  assert probes.GROUPS['observers'] == (
      'norms', 'consecutive', 'variance', 'attention', 'fourier', 'phases', 'weight_tracking',
      'token_gradient', 'subspace_gradient_info', 'parameter_delta', 'path_length',
      'batch_dynamics', 'training_diagnostics')
  assert probes.GROUPS['interventions'] == ('hessian', 'counterfactual', 'adam_dynamics')
  assert probes.GROUPS['full'] == (probes.GROUPS['observers'] + probes.GROUPS['interventions']
                                   + ('curvature', 'progress'))
  assert registry.group('observers', reference=True)[-1] == 'gradient_projection'
  assert set(probes.MODEL_AGNOSTIC) == {'parameter_delta', 'path_length', 'batch_dynamics',
                                        'training_diagnostics', 'curvature', 'gradient_noise'}


@pytest.mark.parametrize('model,task,probe,why', [
    ('mlp', 'add', 'fourier', "reads a model's named parameters (model reference, power, "
                              "gpt2 or gpt2_resv; model is 'mlp')"),
    ('power', 'add', 'progress', "reads the reference transformer's parameters (model is "
                                 "'power')"),
    ('reference', 'sym:3', 'norms', 'needs a two-operand task over Z_p'),
    ('reference', 'sub', 'progress', "is defined for task add; task is 'sub'"),
    ('reference', 'add', 'dln', "reads a deep linear network (model=dln; model is 'reference')"),
])
def test_what_a_probe_cannot_run_comes_from_its_needs(model, task, probe, why):
  c = micro_config(model=model, task=task)
  assert why in probes.unsupported(c)[probe]
  c.probes.names = probe
  with pytest.raises(runs.ConfigError, match=re.escape(f"config.probes.names: probe '{probe}'")):
    probes.build(c)


def test_options_are_validated_with_their_full_path():
  c = micro_config()
  c.probes.hessian.warmup = -1
  with pytest.raises(runs.ConfigError,
                     match=re.escape('config.probes.hessian.warmup: must be an integer >= 0; '
                                     'got -1')):
    probes.build(c)
  c = micro_config()
  c.probes.curvature.k = 30
  with pytest.raises(runs.ConfigError, match=r'config.probes.curvature.k: must be <= '):
    probes.build(c)


def test_check_errors_name_the_options_full_path():
  """A ``check`` raising ``ConfigError`` on one of its options reads like a
  ``__post_init__`` error (``config.probes.<name>.<field>``); other fields stay."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass(frozen=True)
  class Options:
    param: str = 'embedding'

  def check(o, ctx):
    if o.param == 'nope':
      raise runs.ConfigError('param', f'{o.param!r} is not a parameter')
    if o.param == 'p':
      raise runs.ConfigError('p', f'too small for this probe; got {ctx.config.p}')

  registry.register('param_check', lambda ctx, o: object(), options=Options, check=check)
  try:
    for value, want in (('nope', "config.probes.param_check.param: 'nope' is not a "
                                 'parameter'),
                        ('p', 'config.p: too small for this probe; got ')):
      c = micro_config()
      c.probes.names = 'param_check'
      with c.unlocked():
        c.probes.param_check = {'param': value}
      with pytest.raises(runs.ConfigError, match=re.escape(want)):
        probes.build(c)
  finally:
    registry.unregister('param_check')
  c = micro_config(p=11)
  c.probes.names = 'progress'
  c.probes.progress.n_key = 6
  with pytest.raises(runs.ConfigError, match=re.escape(
      'config.probes.progress.n_key: must be an integer in [1, 5]; got 6')):
    probes.build(c)


def test_a_declared_probe_is_refused_where_its_needs_are_not_met():
  made = []
  registry.register('only_mlp_sgd', lambda ctx, o: made.append(ctx) or object(),
                    needs=registry.Needs(models=('mlp',), optimizers=('sgd',)))
  try:
    with pytest.raises(ValueError, match='registered twice'):
      registry.register('only_mlp_sgd', lambda ctx, o: None)
    c = micro_config()
    c.probes.names = 'only_mlp_sgd'
    with pytest.raises(runs.ConfigError, match=r"reads the parameters of model mlp \(model is "):
      probes.build(c)
    c = micro_config(model='mlp')
    c.probes.names = 'only_mlp_sgd'
    with pytest.raises(runs.ConfigError, match="needs optimizer sgd; got 'adamw'"):
      probes.build(c)
    assert registry.support_text(registry.entries()['only_mlp_sgd']) == (
        'model mlp; any task; optimizer sgd')
    assert not made
  finally:
    registry.unregister('only_mlp_sgd')
  assert 'only_mlp_sgd' not in registry.entries()


def test_the_extending_pages_probe_is_one_working_file():
  """docs/extending.md's probe (its fifth python block) registers, is listed, described
  and built by name, and its test (the sixth block) passes; the registry is left as it
  was."""
  text = open(os.path.join(ROOT, 'docs', 'extending.md')).read()
  module_src, test_src = re.findall(r'```python\n(.*?)```', text, re.S)[4:6]
  try:
    exec(compile(module_src, 'weight_rms.py', 'exec'),  # pylint: disable=exec-used
         types.ModuleType('weight_rms').__dict__)
    assert 'weight_rms' in registry.entries() and 'weight_rms' in catalog.entries()
    assert 'weight_rms' in catalog.markdown()
    assert catalog.support('weight_rms') == 'any model, any task'
    assert catalog.groups('weight_rms') == 'by name only'
    scope = {}
    exec(compile(test_src, 'test_weight_rms.py', 'exec'), scope)  # pylint: disable=exec-used
    scope['test_weight_rms_against_numpy']()
  finally:
    registry.unregister('weight_rms')
  assert 'weight_rms' not in catalog.entries()
