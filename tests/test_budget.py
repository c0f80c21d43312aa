"""The memory estimate (ordered_jax.budget): exact parameter counts from the shapes, and
refusals that name the field responsible (issue 19, item 9)."""

import pytest

from ordered_jax import budget, experiment, models, runs
from tests.conftest import micro_config, set_fields


@pytest.mark.parametrize('overrides', [
    {}, {'model': 'power'}, {'model': 'mlp'}, {'task': 'add3', 'layers': 3},
    {'task': 'sym:4', 'model': 'power', 'mlp_dim': 24}, {'embed_dim': 32, 'num_heads': 4}])
def test_param_count_equals_the_built_model(overrides):
  c = micro_config(**overrides)
  built = models.param_count(models.Model(experiment.model_config(c)).abstract_params())
  assert budget.param_count(c) == built


@pytest.mark.parametrize('model,group,values', [
    ('gpt2', 'gpt2', {'tied_head': True}), ('gpt2', 'gpt2', {'tied_head': False}),
    ('gpt2_resv', 'gpt2', {'value_mode': 'resformer'}),
    ('gpt2_resv', 'gpt2', {'value_mode': 'svformer', 'tied_head': False}),
    ('mlp', 'mlp', {'other_layers': 2}),
    ('mlp', 'mlp', {'other_layers': 1, 'complex_weights': True})])
def test_param_count_of_the_other_models(model, group, values):
  c = micro_config(model=model, layers=3)
  with c.unlocked():
    for k, v in values.items():
      c[group][k] = v
  built = models.param_count(models.Model(experiment.model_config(c)).abstract_params())
  assert budget.param_count(c) == built


def test_param_count_of_the_trainable_mlp():
  c = micro_config(model='mlp')
  with c.unlocked():
    c.mlp.embed_trainable, c.mlp.inner_product = True, True
  built = models.param_count(models.Model(experiment.model_config(c)).abstract_params())
  assert budget.param_count(c) == built


def test_the_paper_config_fits_a_small_machine(monkeypatch):
  from configs import paper  # pylint: disable=g-import-not-at-top
  c = paper.get_config()
  need = sum(budget.estimate(c, 1).values())
  assert need < 2 * 2**30, need  # about 0.7 GiB
  monkeypatch.setattr(budget, 'host_available', lambda: 4 * 2**30)
  budget.check(c, 1)


@pytest.mark.parametrize('overrides,field', [
    ({'embed_dim': 4096, 'num_heads': 4}, 'embed_dim'),
    ({'mlp_dim': 2**22}, 'mlp_dim'),
    ({'layers': 100, 'embed_dim': 512}, 'layers'),
    ({'eval_batch_size': 10**6, 'p': 9973, 'train_size': 10**6, 'test_size': 10**6,
      'embed_dim': 512}, 'eval_batch_size'),
])
def test_a_refusal_names_the_field_that_grew(overrides, field, monkeypatch):
  monkeypatch.setattr(budget, 'host_available', lambda: 2**30)
  c = micro_config(**overrides)
  runs.validate(c)
  with pytest.raises(runs.ConfigError) as e:
    budget.check(c, 1)
  assert str(e.value).startswith(f'config.{field}: needs about ') and 'GiB' in str(e.value)


def test_many_runs_are_refused_by_their_number(monkeypatch):
  c = micro_config(embed_dim=256, mlp_dim=1024, seeds=tuple(range(64)))
  one = sum(budget.estimate(c, 1).values())
  monkeypatch.setattr(budget, 'host_available', lambda: 8 * one)
  budget.check(c, 1)
  with pytest.raises(runs.ConfigError, match=r'^config\.seeds: 64 runs need about'):
    budget.check(c, 64)


@pytest.mark.parametrize('fields,field', [
    ({'probes.names': 'curvature', 'probes.curvature.lanczos_steps': 10**6},
     'probes.curvature.lanczos_steps'),
    ({'probes.names': 'curvature', 'probes.curvature.hutchinson_samples': 10**6},
     'probes.curvature.hutchinson_samples'),
    ({'probes.names': 'counterfactual', 'probes.counterfactual.window': 10**6},
     'probes.counterfactual.window'),
    ({'trajectory.every': 1, 'trajectory.projection': 'random:1000000'},
     'trajectory.projection'),
])
def test_probe_and_trajectory_sizes_are_counted_and_named(fields, field, monkeypatch):
  monkeypatch.setattr(budget, 'host_available', lambda: 2**30)
  c = set_fields(micro_config(), fields)
  runs.validate(c)
  with pytest.raises(runs.ConfigError, match=rf'^config\.{field}: needs about '):
    budget.check(c, 1)
  # Probes that are not enabled, or a trajectory that is off, cost nothing.
  quiet = set_fields(micro_config(), {k: v for k, v in fields.items()
                                      if k not in ('probes.names', 'trajectory.every')})
  assert budget.estimate(quiet, 1)['probes'] == budget.estimate(quiet, 1)['trajectory'] == 0
  # The probes actually built decide, when given (experiment.run passes their names).
  assert budget.estimate(c, 1, probe_names=[])['probes'] == 0


def test_declared_probe_memory_bounds_what_xla_allocates():
  """The oracle is XLA's own buffer assignment for the compiled functions."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ordered_jax import trajectory  # pylint: disable=g-import-not-at-top
  from probes import curvature, registry  # pylint: disable=g-import-not-at-top
  for dim, steps, samples in ((200_000, 30, 8), (50_000, 100, 40)):
    f = jax.jit(lambda key, dim=dim, steps=steps, samples=samples: (
        curvature.lanczos(lambda v: 2.0 * v, dim, steps, key),
        curvature.hutchinson_trace(lambda v: 2.0 * v, dim, samples, key)))
    xla = f.lower(jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes
    declared = registry.entries()['curvature'].memory(
        curvature.Options(lanczos_steps=steps, hutchinson_samples=samples, k=1),
        registry.Sizes(params=dim, example_bytes=0, batch_size=1))
    assert xla <= declared <= 2 * xla, (dim, steps, samples, xla, declared)
  for k in (256, 4096):
    params = {'a': jnp.zeros((3, 30_000)), 'b': jnp.zeros((3, 20_000))}
    m = trajectory.make_vectors(f'random:{k}', 0).lower(params).compile().memory_analysis()
    xla = m.temp_size_in_bytes + m.output_size_in_bytes + m.argument_size_in_bytes
    declared = trajectory.memory(f'random:{k}', 50_000, 3)
    assert 0.9 * xla <= declared <= 2 * xla, (k, xla, declared)


def test_probes_that_declare_no_memory_count_their_state(monkeypatch):
  """A probe without ``memory=`` counts what its ``init`` returns (traced), and a config
  too big because of it is refused naming probes.names; a declared probe is not counted
  twice."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from probes import registry  # pylint: disable=g-import-not-at-top
  c = micro_config()
  n_params = budget.param_count(c)

  class Window:  # a window of 1000 parameter vectors (float32) and a step counter (int32)
    name = 'big_window'

    def init(self, params):
      flat = jnp.concatenate([x.reshape(-1) for x in jax.tree.leaves(params)])
      return {'w': jnp.zeros((1000,) + flat.shape), 'n': jnp.int32(0)}

  assert budget.undeclared_bytes(c, [Window()]) == 4 * 1000 * n_params + 4
  assert budget.undeclared_bytes(c, []) == 0
  declared = registry.entries()['counterfactual']
  probe = type('P', (), {'name': declared.name, 'init': Window.init})()
  assert budget.undeclared_bytes(c, [probe]) == 0  # its memory= counts instead
  base = sum(budget.estimate(c, 2).values())
  monkeypatch.setattr(budget, 'host_available', lambda: int(1.5 * base))
  budget.check(c, 2, [])
  with pytest.raises(runs.ConfigError, match=r'^config\.probes\.names: 2 runs need about'):
    budget.check(c, 2, [Window()])


def test_a_probe_whose_state_cannot_be_traced_is_named_and_not_counted(caplog):
  class Broken:
    name = 'broken'

    def init(self, params):
      raise KeyError('layers')

  assert budget.undeclared_bytes(micro_config(), [Broken()]) == 0
  assert "probe broken: its state cannot be traced (KeyError: 'layers')" in caplog.text
