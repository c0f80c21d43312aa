"""Models expose semantic views (issue 15 part 3): the power transformer's parameters have
PyTorch-style names and roles, so the probes written against roles run on it."""

import math

import jax
import numpy as np
import pytest

import probes
from ordered_jax import experiment, models, sinks
from probes import common, fourier
from tests.conftest import epoch_info, micro_config

POWER = models.ModelConfig(vocab=13, embed_dim=16, num_heads=2, layers=2, mlp_dim=32,
                           kind='power')
PROBED = ('norms', 'consecutive', 'variance', 'attention', 'fourier', 'phases',
          'weight_tracking', 'token_gradient', 'subspace_gradient_info', 'hessian',
          'counterfactual', 'adam_dynamics')


@pytest.mark.parametrize('kind,tied,mode', [('gpt2', True, 'resformer'),
                                            ('gpt2_resv', False, 'resformer'),
                                            ('gpt2_resv', True, 'svformer')])
def test_the_gpt2_layouts_name_every_parameter_once(kind, tied, mode):
  cfg = models.ModelConfig(vocab=13, embed_dim=16, num_heads=2, layers=2, mlp_dim=32,
                           kind=kind, tied_head=tied, value_mode=mode)
  params = models.Model(cfg).init(jax.random.key(0))
  view = common.reference_view(params, cfg)
  assert len(view) == len(jax.tree.leaves(params))
  assert sum(v.size for v in view.values()) == models.param_count(params)
  r = models.roles(cfg)
  assert r.unembedding == ('embedding.weight' if tied else 'head.weight')
  assert models.operand_rows(view[r.unembedding], cfg).shape == (13, 16)
  assert view[r.qkv[1]].shape == ((2 if mode == 'svformer' and kind == 'gpt2_resv' else 3)
                                  * 16, 16)
  assert view[r.mlp_in[0]].shape == (32, 16)


def test_the_power_layout_names_every_parameter_once_in_pytorch_layout():
  params = models.Model(POWER).init(jax.random.key(0))
  view = common.reference_view(params, POWER)
  leaves = jax.tree.leaves(params)
  assert len(view) == len(leaves) and sum(v.size for v in view.values()) == sum(
      x.size for x in leaves)
  r = models.roles(POWER)
  d, f, v = POWER.embed_dim, POWER.mlp_dim, POWER.vocab
  assert view[r.token_embedding].shape == (v + 2, d)  # the operands, op and '='
  assert models.operand_rows(view[r.token_embedding], POWER).shape == (v, d)
  assert view[r.unembedding].shape == (v, d) and view[r.pos_embedding].shape == (4, d)
  for layer in range(POWER.layers):
    assert view[r.qkv[layer]].shape == (3 * d, d)
    assert view[r.attn_out[layer]].shape == (d, d)
    assert view[r.mlp_in[layer]].shape == (f, d) and view[r.mlp_out[layer]].shape == (d, f)
  # PyTorch layout: y = x W^T + b, as nn.Linear; the query block is the first d rows.
  x = np.random.default_rng(0).normal(size=(3, d)).astype(np.float32)
  np.testing.assert_allclose(
      x @ np.asarray(view['layers.0.attn.qkv.weight']).T + np.asarray(view['layers.0.attn.qkv.bias']),
      x @ np.asarray(params['layers'][0]['attn']['qkv']['kernel'])
      + np.asarray(params['layers'][0]['attn']['qkv']['bias']), rtol=1e-5)
  with pytest.raises(ValueError, match="named parameters exist for models reference, power, "
                     "gpt2, gpt2_resv"):
    models.roles(models.ModelConfig(vocab=13, kind='mlp'))


def test_fourier_on_power_reads_the_operand_rows():
  """The embedding spectrum of the power model is that of its p operand rows (numpy FFT),
  not of the whole table with the op and '=' tokens."""
  params = models.Model(POWER).init(jax.random.key(1))
  probe = fourier.Fourier(POWER)
  _, m, _ = probe.on_epoch(probe.init(params), epoch_info(params=params))
  e = np.asarray(params['embedding']['embedding'])[:POWER.vocab]
  power = np.mean(np.abs(np.fft.fft(e, axis=0)) ** 2, axis=1)
  q = power / power.sum()
  entropy = -np.sum(q * np.log(q + 1e-12)) / math.log(POWER.vocab)
  np.testing.assert_allclose(m['spectral_entropy'], entropy, rtol=1e-5)
  head = np.asarray(params['head']['kernel']).T  # [p, d]
  pd = np.mean(np.abs(np.fft.fft(head, axis=0)) ** 2, axis=1)
  np.testing.assert_allclose(m['decoder_spectral_entropy'],
                             -np.sum(pd / pd.sum() * np.log(pd / pd.sum() + 1e-12))
                             / math.log(POWER.vocab), rtol=1e-5)


@pytest.mark.parametrize('model,tied,mode', [('power', True, 'resformer'),
                                             ('gpt2_resv', False, 'svformer')])
@pytest.mark.slow
def test_the_transformer_probes_run_on_decoders(model, tied, mode, tmp_path):
  """Two probed epochs of a decoder-only transformer with every probe the issue names (the
  step bursts made to fire): each writes its keys, finite, under the model's names."""
  c = micro_config(model=model, epochs=2, probe_every=1)
  c.gpt2.tied_head, c.gpt2.value_mode = tied, mode
  c.probes.names = ','.join(PROBED)
  for burst in (c.probes.hessian, c.probes.adam_dynamics):
    burst.every_n_steps, burst.burst_length, burst.warmup = 2, 2, 0
  built = probes.build(c)
  assert [p.name for p in built] == list(PROBED)
  experiment.run(c, str(tmp_path), quiet=True, probes=built)
  rows = sinks.read_jsonl(str(tmp_path / 'stride' / 'stride.jsonl'))
  keys = set().union(*rows)
  for name in PROBED:
    assert any(k.startswith(name + '/') for k in keys), name
  assert 'norms/norm_layers.1.attn.qkv.weight' in keys
  assert 'weight_tracking/weight_norm/head.weight' in keys
  assert f'norms/norm_layers.0.{"ff1" if model == "power" else "fc1"}.weight' in keys
  for row in rows:
    for k, v in row.items():
      if k.split('/')[0] in PROBED and isinstance(v, float):
        assert np.isfinite(v), k
