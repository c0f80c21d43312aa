"""Tasks and models end to end (issue 6, parts 1 and 2): they train under the same core."""

import numpy as np
import pytest

import probes
from configs import tian
from ordered_jax import experiment, runs
from tests.conftest import micro_config


def test_tian_sqr_mlp_reaches_100_percent_on_add_mod_23(tmp_path):
  """Tian's setting (configs/tian.py): the two-layer sqr MLP, centred MSE, full batch."""
  (s,) = experiment.run(tian.get_config(), str(tmp_path), quiet=True)
  assert s['final_eval']['validation_accuracy'] == 100.0
  assert s['grokking']['generalization_epoch'] is not None
  assert s['training']['steps_per_epoch'] == 1  # full batch


@pytest.mark.parametrize('overrides', [
    dict(model='power', task='div', data_generator='fast'),
    dict(model='reference', task='add3', p=5, data_generator='fast', train_size=70,
         test_size=40),
    dict(model='mlp', task='sym:3', data_generator='fast', train_fraction=0.6, test_size=0,
         batch_size=8),
])
def test_models_and_tasks_train_and_probe(overrides, tmp_path):
  """Two epochs train (finite accuracies, the task's own sizes); the full probe group keeps
  what the model and task can run: on power over Z_p every probe but the progress measures
  (defined for the reference on add), elsewhere only the model-agnostic probes (which run,
  on the MLP), and naming another one stops."""
  c = micro_config(epochs=2, probe_every=1, **overrides)
  with c.unlocked():
    c.probes.group = 'full'
  built = probes.build(c)
  if overrides['model'] == 'power':
    assert [p.name for p in built] == [n for n in probes.GROUPS['full'] if n != 'progress']
  else:
    assert {p.name for p in built} == set(probes.MODEL_AGNOSTIC) & set(probes.GROUPS['full'])
  # The model-agnostic probes run on one of the models (compile time).
  (s,) = experiment.run(c, str(tmp_path), quiet=True,
                        probes=built if overrides['model'] == 'mlp' else [])
  assert s['training']['epochs_trained'] == 2
  assert np.isfinite(s['final_eval']['validation_accuracy'])
  n_train, _ = runs.sizes(c)
  assert s['training']['steps_per_epoch'] == -(-n_train // c.batch_size)
  with c.unlocked():
    c.probes.names = 'fourier' if overrides['model'] != 'power' else 'progress'
  with pytest.raises(runs.ConfigError, match="probe '(fourier|progress)'"):
    probes.build(c)
