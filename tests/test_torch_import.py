"""Reading the reference's .pt files without torch, and starting runs from them (init_from).

The files are written by hand here (tests/ptfiles.py) with torch's zip layout and pickle
records; one optional test cross-checks against torch itself when it is installed.
"""

import collections
import json
import os
import pickle
import random
import zipfile

import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import pytest

import ptfiles
from ptfiles import random_state_dict, write_layout
from ordered_jax import checkpoint, experiment, models, runs, tasks, torch_import
from tests.conftest import micro_config

CFG = models.ModelConfig(vocab=11, embed_dim=8, num_heads=4, layers=2, mlp_dim=16)


def numpy_logits(sd: dict, x_Nx2: np.ndarray, heads: int) -> np.ndarray:
  """The reference's eval-mode forward pass, from its state_dict, in float64."""
  w = {k: v.astype(np.float64) for k, v in sd.items()}
  h = w['embedding.weight'][x_Nx2] + w['pos_embedding']
  n, t, d = h.shape
  dh = d // heads

  def norm(z, name):
    z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
    return z * w[name + '.weight'] + w[name + '.bias']

  layer = 0
  while f'transformer.layers.{layer}.linear1.weight' in w:
    pre = f'transformer.layers.{layer}.'
    qkv = norm(h, pre + 'norm1') @ w[pre + 'self_attn.in_proj_weight'].T + \
        w[pre + 'self_attn.in_proj_bias']
    q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(n, t, heads, dh) for j in range(3))
    logits = np.einsum('nqhc,nkhc->nhqk', q, k) / np.sqrt(dh)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    att = np.einsum('nhqk,nkhc->nqhc', probs, v).reshape(n, t, d)
    h = h + att @ w[pre + 'self_attn.out_proj.weight'].T + w[pre + 'self_attn.out_proj.bias']
    mlp = np.maximum(norm(h, pre + 'norm2') @ w[pre + 'linear1.weight'].T
                     + w[pre + 'linear1.bias'], 0)
    h = h + mlp @ w[pre + 'linear2.weight'].T + w[pre + 'linear2.bias']
    layer += 1
  return h.mean(1) @ w['decoder.weight'].T + w['decoder.bias']


@pytest.mark.parametrize('layout', ['final', 'flat', 'components'])
def test_imported_weights_give_the_reference_logits(tmp_path, layout):
  sd = random_state_dict(CFG, seed=1)
  path = write_layout(str(tmp_path / f'{layout}.pt'), sd, layout)
  loaded = torch_import.state_dict(torch_import.load(path))
  assert list(loaded) == list(sd)
  assert all(np.array_equal(loaded[k], sd[k]) and loaded[k].dtype == np.float32 for k in sd)
  params, cfg = torch_import.load_params(path)  # the shape is read off the file
  assert (cfg.vocab, cfg.embed_dim, cfg.layers, cfg.mlp_dim, cfg.num_heads) == (11, 8, 2, 16, 4)
  x = np.stack(np.meshgrid(np.arange(11), np.arange(11)), -1).reshape(-1, 2)
  got = np.asarray(models.Model(cfg).apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, numpy_logits(sd, x, heads=4), rtol=1e-5, atol=1e-5)


def test_checkpoint_contents_are_read(tmp_path):
  sd = random_state_dict(CFG)
  obj = torch_import.load(write_layout(str(tmp_path / 'checkpoint_50.pt'), sd, 'components'))
  opt = obj['components']['optimizer']
  assert obj['step'] == 50 and obj['training_state'] is None
  assert opt['state'][3]['step'].shape == () and float(opt['state'][3]['step']) == 7.0
  assert np.array_equal(opt['state'][1]['exp_avg'], np.full(sd['embedding.weight'].shape, 0.5))
  assert opt['param_groups'][0]['betas'] == (0.9, 0.999)
  assert obj['components']['scheduler']['last_epoch'] == 50
  assert obj['rng_states']['python'] == random.Random(3).getstate()
  assert np.array_equal(obj['rng_states']['torch'], np.arange(16, dtype=np.uint8))
  # numpy's records (the numpy RNG state) are accepted but never built.
  numpy_state = obj['rng_states']['numpy']
  assert numpy_state[0] == 'MT19937' and isinstance(numpy_state[1], torch_import.Opaque)
  assert isinstance(obj['components']['model'], collections.OrderedDict)


def test_views_dtypes_and_byte_order(tmp_path):
  st: list = []
  base = ptfiles.Tensor.of(np.arange(12, dtype=np.float32).reshape(3, 4), st)
  obj = {'base': base,
         'transposed_tail': ptfiles.Tensor(base.storage, 1, (3, 2), (1, 4)),  # shared storage
         'scalar': ptfiles.Tensor.of(np.float64(2.5), st),
         'long': ptfiles.Tensor.of(np.array([-3, 2**40]), st),
         'bf16': ptfiles.Tensor.of(np.array([1.5, -2.0], ml_dtypes.bfloat16), st),
         'mask': ptfiles.Tensor.of(np.array([True, False]), st),
         'empty': ptfiles.Tensor.of(np.zeros((0, 4), np.float32), st)}
  for order in ('little', 'big'):
    got = torch_import.load(ptfiles.write_pt(str(tmp_path / f'{order}.pt'), obj, st,
                                             byteorder=order))
    full = np.arange(12, dtype=np.float32)
    assert np.array_equal(got['base'], full.reshape(3, 4))
    assert np.array_equal(got['transposed_tail'],
                          np.lib.stride_tricks.as_strided(full[1:], (3, 2), (4, 16)))
    assert got['scalar'].shape == () and got['scalar'] == 2.5
    assert got['long'].dtype == np.int64 and got['long'].tolist() == [-3, 2**40]
    assert got['bf16'].dtype == ml_dtypes.bfloat16 and got['bf16'].astype(float).tolist() == [
        1.5, -2.0]
    assert got['mask'].tolist() == [True, False] and got['empty'].shape == (0, 4)


def _raw_pt(path, pickle_bytes, records=()):
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle_bytes)
    for name, data in records:
      z.writestr(f'archive/{name}', data)
  return path


def test_refuses_code_and_runs_none_of_it(tmp_path):
  marker = tmp_path / 'marker'

  class Evil:
    def __reduce__(self):
      return (os.system, (f'touch {marker}',))

  path = _raw_pt(str(tmp_path / 'evil.pt'), pickle.dumps({'model_state_dict': Evil()},
                                                            protocol=2))
  with pytest.raises(torch_import.UnsafeFileError, match=r'refusing to load (posix|os)\.system'):
    torch_import.load(path)
  assert not marker.exists()
  builtins_eval = _raw_pt(str(tmp_path / 'eval.pt'), b'\x80\x02cbuiltins\neval\nq\x00.')
  with pytest.raises(torch_import.UnsafeFileError, match='builtins.eval'):
    torch_import.load(builtins_eval)


def test_malformed_files_are_clear_errors(tmp_path):
  text = tmp_path / 'notes.pt'
  text.write_text('not a zip')
  with pytest.raises(torch_import.UnsafeFileError, match='not a torch zip archive'):
    torch_import.load(str(text))
  with pytest.raises(FileNotFoundError):
    torch_import.load(str(tmp_path / 'missing.pt'))
  st: list = []
  good = ptfiles.write_pt(str(tmp_path / 'good.pt'),
                          {'w': ptfiles.Tensor.of(np.ones(4, np.float32), st)}, st)
  with zipfile.ZipFile(good) as z:
    pkl = z.read('archive/data.pkl')
  with pytest.raises(torch_import.UnsafeFileError, match='storage archive/data/0 is missing'):
    torch_import.load(_raw_pt(str(tmp_path / 'nostorage.pt'), pkl))
  with pytest.raises(torch_import.UnsafeFileError, match='has 8 bytes'):
    torch_import.load(_raw_pt(str(tmp_path / 'short.pt'), pkl, [('data/0', b'\0' * 8)]))
  st = []
  bad_view = {'w': ptfiles.Tensor(ptfiles.Storage('0', np.ones(4, np.float32)), 2, (4,), (1,))}
  with pytest.raises(torch_import.UnsafeFileError, match='reads past its storage'):
    torch_import.load(ptfiles.write_pt(str(tmp_path / 'view.pt'), bad_view,
                                       [bad_view['w'].storage]))
  with pytest.raises(torch_import.UnsafeFileError, match='no model state_dict'):
    torch_import.state_dict({'step': 3})


def test_shape_checks(tmp_path):
  sd = random_state_dict(CFG)
  path = write_layout(str(tmp_path / 'final.pt'), sd, 'final')
  other = models.ModelConfig(vocab=13, embed_dim=8, num_heads=4, layers=2, mlp_dim=16)
  with pytest.raises(torch_import.UnsafeFileError, match=r'embedding.weight has shape \(11, 8\)'):
    torch_import.load_params(path, other)
  missing = dict(sd)
  del missing['decoder.bias']
  with pytest.raises(torch_import.UnsafeFileError, match="no 'decoder.bias'"):
    torch_import.check_shapes(missing, CFG)
  prefixed = torch_import.state_dict({'model_state_dict': {f'_orig_mod.{k}': v
                                                           for k, v in sd.items()}})
  assert list(prefixed) == list(sd)  # torch.compile's prefix is stripped


def test_matches_torch_when_installed(tmp_path):
  """Optional cross-check of both directions against torch itself."""
  torch = pytest.importorskip('torch')
  sd = random_state_dict(CFG, seed=4)
  ours = write_layout(str(tmp_path / 'ours.pt'), sd, 'final')
  back = torch.load(ours, weights_only=True)['model_state_dict']
  assert all(np.array_equal(back[k].numpy(), v) for k, v in sd.items())
  layer = torch.nn.TransformerEncoderLayer(8, 4, 16, norm_first=True, batch_first=True)
  opt = torch.optim.AdamW(layer.parameters())
  layer(torch.randn(3, 2, 8)).sum().backward()
  opt.step()
  torch.save({'step': 1, 'components': {'model': layer.state_dict(),
                                        'optimizer': opt.state_dict()},
              'rng_states': {'torch': torch.get_rng_state(),
                             'numpy': np.random.RandomState(0).get_state()}},
             str(tmp_path / 'torch.pt'))
  got = torch_import.load(str(tmp_path / 'torch.pt'))
  for k, v in layer.state_dict().items():
    assert np.array_equal(got['components']['model'][k], v.numpy()), k
  exp_avg = opt.state_dict()['state'][0]['exp_avg'].numpy()
  assert np.array_equal(got['components']['optimizer']['state'][0]['exp_avg'], exp_avg)


# -- init_from -------------------------------------------------------------------------

def _micro_sd(config, seed=0):
  return random_state_dict(experiment.model_config(config), seed)


def test_init_from_reference_file_evaluates_its_weights(tmp_path):
  config = micro_config(epochs=0)
  sd = _micro_sd(config)
  pt = write_layout(str(tmp_path / 'stride_final.pt'), sd, 'final')
  config.unlock()
  config.init_from = pt
  config.lock()
  summary, = experiment.run(config, str(tmp_path / 'w'), quiet=True)
  # The summary evaluates the imported weights; the reference forward pass agrees.
  train_NxC, test_NxC = tasks.make_mod_add(config.p, config.train_size, config.test_size,
                                           config.seed, config.data_generator)
  for key, abc in (('validation_accuracy', test_NxC), ('training_accuracy', train_NxC)):
    pred = numpy_logits(sd, abc[:, :2], config.num_heads).argmax(-1)
    want = 100.0 * np.mean(pred == abc[:, 2])
    assert summary['init_eval'][key] == pytest.approx(want)
    assert summary['final_eval'][key] == pytest.approx(want)
  run_dir = str(tmp_path / 'w' / 'stride')
  model = models.Model(experiment.model_config(config))
  saved = models.to_reference(checkpoint.load_params(run_dir, model),
                              experiment.model_config(config))
  assert all(np.array_equal(np.asarray(saved[k]), sd[k]) for k in sd)
  with open(os.path.join(run_dir, 'experiment_config.json')) as f:
    assert json.load(f)['init_from'] == pt


def test_init_from_one_of_our_runs_continues_from_its_weights(tmp_path):
  first = micro_config(epochs=2)
  done, = experiment.run(first, str(tmp_path / 'a'), quiet=True)
  assert done['final_eval'] != done['init_eval']  # else the check below proves nothing
  config = micro_config(epochs=1)
  config.unlock()
  config.init_from = str(tmp_path / 'a' / 'stride')
  config.lock()
  again, = experiment.run(config, str(tmp_path / 'b'), quiet=True)
  assert again['init_eval'] == done['final_eval']  # starts where the first run ended
  # A checkpoint folder works too (the completion checkpoint holds the final weights).
  model = models.Model(experiment.model_config(config))
  step_dir = os.path.join(str(tmp_path / 'a' / 'stride'), 'checkpoints', '2')
  from_step = checkpoint.load_weights(step_dir, model)
  final = checkpoint.load_params(str(tmp_path / 'a' / 'stride'), model)
  assert all(np.array_equal(np.asarray(from_step['decoder'][k]), np.asarray(final['decoder'][k]))
             for k in ('kernel', 'bias'))


def test_init_from_errors_are_one_line_config_errors(tmp_path):
  small = write_layout(str(tmp_path / 'small.pt'), random_state_dict(CFG), 'final')
  for path, match in ((str(tmp_path / 'nothing.pt'), 'no such file'),
                      (small, r'pos_embedding has shape \(2, 8\), the config needs \(2, 16\)')):
    config = micro_config()
    config.unlock()
    config.init_from = path
    config.lock()
    with pytest.raises(runs.ConfigError, match=match) as e:
      experiment.run(config, str(tmp_path / 'w'), quiet=True)
    assert e.value.field == 'init_from' and '\n' not in str(e.value)
    assert not os.path.exists(tmp_path / 'w' / 'stride')  # nothing was started
  bad = ml_collections.ConfigDict({**micro_config().to_dict(), 'init_from': 3})
  with pytest.raises(runs.ConfigError, match='init_from'):
    runs.validate(bad)
