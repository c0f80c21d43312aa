"""The memory estimate (ordered_jax.budget): exact parameter counts from the shapes, and
refusals that name the field responsible (issue 19, item 9)."""

import pytest

from ordered_jax import budget, experiment, models, runs
from tests.conftest import micro_config


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
