"""Stable run identity: a field added with a default renames no run and blocks no resume."""

import json

import ml_collections
import pytest

from configs import default
from ordered_jax import experiment, identity, runs
from tests import golden
from tests.conftest import micro_config


@pytest.fixture
def added_field(monkeypatch):
  """configs/default.py with two fields it does not have: ``new_knob`` (top level) and
  ``probes.new_probe.x`` (nested), both at defaults that keep the old behaviour."""
  real = default.get_config

  def get_config():
    c = real()
    c.new_knob = 0.5
    c.probes.new_probe = ml_collections.ConfigDict(dict(x=1))
    return c

  monkeypatch.setattr(default, 'get_config', get_config)
  identity._code_defaults_cached.cache_clear()  # pylint: disable=protected-access
  yield
  identity._code_defaults_cached.cache_clear()  # pylint: disable=protected-access


def _recorded_ids():
  with open(golden.path('sweep_ids')) as f:
    return json.load(f)['outputs']


def test_adding_a_field_keeps_every_id(added_field):
  assert 'new_knob' in micro_config()
  assert golden.sweep_ids() == _recorded_ids()


def test_a_new_field_off_its_default_is_a_new_run(added_field, monkeypatch):
  monkeypatch.setattr(golden, 'micro_config', lambda **kw: micro_config(new_knob=0.7, **kw))
  ids = golden.sweep_ids()  # the runs set 0.7; the default is 0.5
  assert set(ids) == set(_recorded_ids())
  assert not set(ids.values()) & set(_recorded_ids().values())


def _set(c, **kw):
  for k, v in kw.items():
    c[k] = v
  return c


def test_identity_reads_the_schema_and_the_defaults():
  base = identity.schema()
  assert identity.identity(base) == base  # schema 1's own values: the full dict
  partial = {k: v for k, v in base.items() if k not in ('task', 'lockstep')}
  assert identity.identity(partial) == base  # absent = what the run had
  assert identity.identity({**base, 'brand_new': 1})['brand_new'] == 1  # no default known
  assert 'brand_new' not in identity.identity({**base, 'brand_new': 1},
                                              defaults={'brand_new': 1})
  # Types count, as in the hash: 1 and 1.0 differ.
  assert identity.first_difference(base, {**base, 'brand_new': 1.0}) == 'brand_new'
  assert identity.first_difference({**base, 'seed': 1}, {**base, 'seed': 1.0}) == 'seed'
  no_curv = json.loads(json.dumps(base))
  del no_curv['probes']['curvature']['every_n_steps']
  assert identity.identity(no_curv)['probes']['curvature']['every_n_steps'] == 0


@pytest.mark.slow
def test_resume_after_a_field_was_added(tmp_path, monkeypatch):
  """A run written before the field existed resumes under the new code (to the same end
  as an uninterrupted run); one that sets the field off its default is refused."""
  workdir = str(tmp_path / 'w')
  config = micro_config(epochs=3, strategy='stride')
  experiment.run(micro_config(epochs=3, strategy='stride', stop_after=1), workdir, quiet=True)
  real = default.get_config
  monkeypatch.setattr(default, 'get_config', lambda: _set(real(), new_knob=0.5))
  identity._code_defaults_cached.cache_clear()  # pylint: disable=protected-access
  try:
    moved = micro_config(epochs=3, strategy='stride', new_knob=0.7)
    with pytest.raises(experiment.WorkdirError,
                       match=r'config\.new_knob differs from the saved run \(0\.5 -> 0\.7\)'):
      experiment.run(moved, workdir, resume=True, quiet=True)
    (s,) = experiment.run(micro_config(epochs=3, strategy='stride'), workdir, resume=True,
                          quiet=True)
  finally:
    identity._code_defaults_cached.cache_clear()  # pylint: disable=protected-access
  (ref,) = experiment.run(config, str(tmp_path / 'ref'), quiet=True)
  assert s['training']['epochs_trained'] == 3
  assert s['final_eval'] == ref['final_eval']
  assert runs.expand(config)[0].name == 'stride'
