"""Reading the reference's .pt files without torch, starting runs from them (init_from) and
continuing them (init_optimizer).

The real files are in tests/data/reference/ (written by the reference itself, see its
README; expected.json is what torch itself reads from them). Other shapes, byte orders and
hostile files are written by hand (tests/ptfiles.py), with the real files' structure.
"""

import collections
import hashlib
import json
import math
import os
import pickle
import random
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import optax
import pytest

import ptfiles
from ptfiles import random_state_dict, write_layout
from ordered_jax import (checkpoint, experiment, models, runs, sinks, tasks, torch_import,
                         torch_pickle)
from tests.conftest import ROOT, micro_config

CFG = models.ModelConfig(vocab=11, embed_dim=8, num_heads=4, layers=2, mlp_dim=16)
REF = os.path.join(ROOT, 'tests', 'data', 'reference')
SHARED = os.path.join(ROOT, '..', 'shared', 'data', 'reference-files')
VERSIONS = ('head', 'v3')
# The reference run that wrote tests/data/reference/<version>/stride (see its README).
REF_RUN = dict(p=11, train_size=60, test_size=40, batch_size=16, embed_dim=4, num_heads=2,
               layers=2, mlp_dim=2048, epochs=2, seed=199, lr=1e-3, min_lr=5e-7,
               weight_decay=0.1)


def ref_path(version: str, name: str = 'stride_final.pt') -> str:
  return os.path.join(REF, version, 'stride', name)


def ref_ckpt(version: str) -> str:
  return ref_path(version, os.path.join('checkpoints', 'checkpoint_0.pt'))


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


def skeleton(obj, *, values: bool = True):
  """tests/data/reference/make_expected.py's skeleton of a loaded object; ``values=False``
  keeps only the structure (container types, keys, leaf types, array dtypes)."""
  if isinstance(obj, np.ndarray):
    a = np.ascontiguousarray(obj)
    if not values:
      return {'array': a.dtype.str.lstrip('<|=')}
    return {'array': [a.dtype.str.lstrip('<|='), list(a.shape),
                      hashlib.sha256(a.tobytes()).hexdigest()]}
  if isinstance(obj, dict):
    kind = 'OrderedDict' if isinstance(obj, collections.OrderedDict) else 'dict'
    items = [[k, skeleton(v, values=values)] for k, v in obj.items()]
    if not values and items and all(isinstance(k, int) for k, _ in items):
      items = [['<index>', items[0][1]]]  # optimizer state: one entry stands for all
    return {kind: items}
  if isinstance(obj, (list, tuple)):
    items = [skeleton(v, values=values) for v in obj]
    if not values and len(items) > 8:
      items = items[:1]  # the python RNG state's 625 ints, the param indices
    return {type(obj).__name__: items}
  if not values:
    return type(obj).__name__
  return obj


def _json_form(x):
  """``x`` as a JSON round trip gives it (tuples -> lists, int keys kept by the skeleton)."""
  return json.loads(json.dumps(x))


# -- the reference's own files --------------------------------------------------------------

@pytest.mark.parametrize('rel', ['head/stride/stride_final.pt',
                                 'head/stride/checkpoints/checkpoint_0.pt',
                                 'v3/stride/stride_final.pt',
                                 'v3/stride/checkpoints/checkpoint_0.pt'])
def test_real_files_read_as_torch_reads_them(rel):
  """Every container, key, scalar and array of the reference's files, as torch.load
  (weights_only=False) gives them (expected.json); TorchVersion becomes its string."""
  with open(os.path.join(REF, 'expected.json')) as f:
    expected = json.load(f)[rel]
  assert _json_form(skeleton(torch_pickle.load(os.path.join(REF, rel)))) == expected


@pytest.mark.parametrize('version', VERSIONS)
def test_real_checkpoint_contents(version):
  obj = torch_import.load(ref_ckpt(version))
  c = torch_import.contents(obj)
  assert c.kind == {'head': 'HEAD checkpoint', 'v3': 'paper-data-v3 checkpoint'}[version]
  assert c.step == 0 and c.next_epoch == 1 and c.describe().endswith(
      '(weights + optimizer state + epoch 0)')
  env, rng = obj['environment'], obj['rng_states']
  assert type(env['torch_version']) is str and env['torch_version'] == '2.13.0+cpu'
  # numpy's RNG: seeded (199) and never drawn from by the reference.
  name, key, pos, has_gauss, gauss = rng['numpy']
  ref = np.random.RandomState(199).get_state()
  assert name == 'MT19937' and key.dtype == np.uint32 and np.array_equal(key, ref[1])
  assert (pos, has_gauss, gauss) == ref[2:]
  random.Random().setstate(rng['python'])  # a valid random.getstate() tuple
  assert rng['torch'].dtype == np.uint8 and rng['torch'].shape == (5056,)
  assert obj['training_state'] is None
  adam = torch_import.adam_state(c)
  assert adam.kind == 'adamw' and adam.step == 4  # 60 rows in batches of 16
  assert list(adam.exp_avg) == list(c.model) and adam.group['initial_lr'] == 1e-3
  assert adam.group['betas'] == (0.9, 0.999) and adam.group['weight_decay'] == 0.1


@pytest.mark.parametrize('version', VERSIONS)
def test_real_final_weights_give_the_reference_accuracies(version):
  """The reference's own final weights, on our copy of its data, give the accuracies of
  its summary.json (numpy forward pass)."""
  with open(ref_path(version, 'summary.json')) as f:
    final = json.load(f)['final_eval']
  params, cfg = torch_import.load_params(ref_path(version), num_heads=2)
  assert (cfg.vocab, cfg.embed_dim, cfg.layers, cfg.mlp_dim) == (11, 4, 2, 2048)
  sd = {k: np.asarray(v) for k, v in models.to_reference(params, cfg).items()}
  train, test = tasks.make_mod_add(11, 60, 40, 199, 'reference')
  keys = {'head': ('validation_accuracy', 'training_accuracy'), 'v3': ('val_acc', 'train_acc')}
  for key, abc in zip(keys[version], (test, train)):
    pred = numpy_logits(sd, abc[:, :2], 2).argmax(-1)
    assert 100.0 * np.mean(pred == abc[:, 2]) == pytest.approx(final[key], abs=1e-9)


@pytest.mark.skipif(not os.path.isdir(SHARED), reason='../shared/data/reference-files absent')
@pytest.mark.parametrize('version', ['head', 'paper-data-v3'])
def test_shared_reference_files_load(version):
  """The larger (d = 64, p = 97) files of ../shared: every one loads, its checkpoint's AdamW
  state maps, and its final weights give the reference's accuracies."""
  run = os.path.join(SHARED, version, 'stride')
  with open(os.path.join(run, 'summary.json')) as f:
    final = json.load(f)['final_eval']
  ckpt, cfg = torch_import.read(os.path.join(run, 'checkpoints', 'checkpoint_1.pt'))
  assert (cfg.vocab, cfg.embed_dim, cfg.mlp_dim, ckpt.step, ckpt.next_epoch) == (
      97, 64, 2048, 1, 2)
  adam = torch_import.adam_state(ckpt)
  assert adam.kind == 'adamw' and adam.step == 4
  c, _ = torch_import.read(os.path.join(run, 'stride_final.pt'))
  assert c.kind == 'final weights' and c.optimizer is None
  train, test = tasks.make_mod_add(97, 500, 500, 199, 'reference')
  for key, abc in zip(list(final), (test, train)):
    pred = numpy_logits(c.model, abc[:, :2], 4).argmax(-1)
    assert 100.0 * np.mean(pred == abc[:, 2]) == pytest.approx(final[key], abs=1e-9)


@pytest.mark.parametrize('layout,real', [
    ('final', 'head/stride/stride_final.pt'),
    ('components', 'head/stride/checkpoints/checkpoint_0.pt'),
    ('flat', 'v3/stride/checkpoints/checkpoint_0.pt')])
def test_generated_files_have_the_real_structure(tmp_path, layout, real):
  """ptfiles' envelopes have the real files' containers, keys and leaf types."""
  cfg = models.ModelConfig(vocab=11, embed_dim=4, num_heads=2, layers=2, mlp_dim=16)
  ours = torch_import.load(write_layout(str(tmp_path / 'x.pt'), random_state_dict(cfg), layout))
  theirs = torch_import.load(os.path.join(REF, real))
  assert skeleton(ours, values=False) == skeleton(theirs, values=False)


def test_matches_torch_when_installed(tmp_path):
  """Optional cross-check against torch itself (not a dependency; skipped without it)."""
  torch = pytest.importorskip('torch')
  sd = random_state_dict(CFG, seed=4)
  ours = write_layout(str(tmp_path / 'ours.pt'), sd, 'components')
  back = torch.load(ours, weights_only=False)['components']['model']
  assert all(np.array_equal(back[k].numpy(), v) for k, v in sd.items())
  layer = torch.nn.TransformerEncoderLayer(8, 4, 16, norm_first=True, batch_first=True)
  opt = torch.optim.AdamW(layer.parameters())
  layer(torch.randn(3, 2, 8)).sum().backward()
  opt.step()
  torch.save({'step': 1, 'components': {'model': layer.state_dict(),
                                        'optimizer': opt.state_dict()},
              'rng_states': {'torch': torch.get_rng_state(),
                             'numpy': np.random.RandomState(0).get_state()},
              'environment': {'torch_version': torch.__version__}},
             str(tmp_path / 'torch.pt'))
  got = torch_import.load(str(tmp_path / 'torch.pt'))
  for k, v in layer.state_dict().items():
    assert np.array_equal(got['components']['model'][k], v.numpy()), k
  exp_avg = opt.state_dict()['state'][0]['exp_avg'].numpy()
  assert np.array_equal(got['components']['optimizer']['state'][0]['exp_avg'], exp_avg)
  assert got['environment']['torch_version'] == str(torch.__version__)


# -- files written here: shapes, layouts, dtypes ------------------------------------------

@pytest.mark.parametrize('layout', ['final', 'flat', 'components', 'bare'])
def test_imported_weights_give_the_reference_logits(tmp_path, layout, caplog):
  sd = random_state_dict(CFG, seed=1)
  path = str(tmp_path / f'{layout}.pt')
  if layout == 'bare':
    st: list = []
    ptfiles.write_pt(path, ptfiles.state_dict_pt(sd, st), st)
  else:
    write_layout(path, sd, layout)
  loaded = torch_import.state_dict(torch_import.load(path))
  assert list(loaded) == list(sd)
  assert all(np.array_equal(loaded[k], sd[k]) and loaded[k].dtype == np.float32 for k in sd)
  caplog.set_level('INFO')
  params, cfg = torch_import.load_params(path)  # the shape is read off the file
  said = {'final': 'final weights (weights)', 'bare': 'bare state dict (weights)',
          'flat': 'paper-data-v3 checkpoint (weights + optimizer state + epoch 50)',
          'components': 'HEAD checkpoint (weights + optimizer state + epoch 50)'}[layout]
  assert f'{said}; taking its weights only' in caplog.text
  assert (cfg.vocab, cfg.embed_dim, cfg.layers, cfg.mlp_dim, cfg.num_heads) == (11, 8, 2, 16, 4)
  x = np.stack(np.meshgrid(np.arange(11), np.arange(11)), -1).reshape(-1, 2)
  got = np.asarray(models.Model(cfg).apply(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, numpy_logits(sd, x, heads=4), rtol=1e-5, atol=1e-5)


def test_views_dtypes_and_byte_order(tmp_path):
  st: list = []
  base = ptfiles.Tensor.of(np.arange(12, dtype=np.float32).reshape(3, 4), st)
  obj = {'base': base,
         'transposed_tail': ptfiles.Tensor(base.storage, 1, (3, 2), (1, 4)),  # shared storage
         'scalar': ptfiles.Tensor.of(np.float64(2.5), st),
         'long': ptfiles.Tensor.of(np.array([-3, 2**40]), st),
         'bf16': ptfiles.Tensor.of(np.array([1.5, -2.0], ml_dtypes.bfloat16), st),
         'mask': ptfiles.Tensor.of(np.array([True, False]), st),
         'empty': ptfiles.Tensor.of(np.zeros((0, 4), np.float32), st),
         'np_scalar': np.float64(0.25), 'np_big_endian': np.arange(3, dtype='>i4'),
         'sets': (frozenset({1, 2}), {3}), 'complex': 1 + 2j}
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
    assert got['np_scalar'] == 0.25 and got['np_big_endian'].tolist() == [0, 1, 2]
    assert got['sets'] == (frozenset({1, 2}), {3}) and got['complex'] == 1 + 2j
  # pickle's own protocol 2 writes Python 2 names (__builtin__.set), mapped back as pickle does.
  py2 = _raw_pt(str(tmp_path / 'py2.pt'), pickle.dumps({'s': {1, 2}}, protocol=2))
  assert b'__builtin__' in zipfile.ZipFile(py2).read('archive/data.pkl')
  assert torch_import.load(py2) == {'s': {1, 2}}


def _raw_pt(path, pickle_bytes, records=(), compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, 'w', compression) as z:
    z.writestr('archive/data.pkl', pickle_bytes)
    for name, data in records:
      z.writestr(f'archive/{name}', data)
  return path


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
  with pytest.raises(torch_import.UnsafeFileError, match='archive/data/0 is missing'):
    torch_import.load(_raw_pt(str(tmp_path / 'nostorage.pt'), pkl))
  with pytest.raises(torch_import.UnsafeFileError, match='has 8 bytes, expected 16'):
    torch_import.load(_raw_pt(str(tmp_path / 'short.pt'), pkl, [('data/0', b'\0' * 8)]))
  bad_view = {'w': ptfiles.Tensor(ptfiles.Storage('0', np.ones(4, np.float32)), 2, (2,), (2,))}
  with pytest.raises(torch_import.UnsafeFileError, match='reads past its storage'):
    torch_import.load(ptfiles.write_pt(str(tmp_path / 'view.pt'), bad_view,
                                       [bad_view['w'].storage]))
  with pytest.raises(torch_import.UnsafeFileError, match='malformed'):
    torch_import.load(_raw_pt(str(tmp_path / 'cut.pt'), pkl[:-3], [('data/0', b'\0' * 16)]))
  with pytest.raises(torch_import.UnsafeFileError, match='no model state_dict'):
    torch_import.state_dict({'step': 3})


def test_shape_checks(tmp_path):
  sd = random_state_dict(CFG)
  path = write_layout(str(tmp_path / 'final.pt'), sd, 'final')
  for other, match in (
      (models.ModelConfig(vocab=13, embed_dim=8, num_heads=4, layers=2, mlp_dim=16),
       r'^embedding.weight has shape \(11, 8\), the config needs \(13, 8\)$'),
      (models.ModelConfig(vocab=11, embed_dim=12, num_heads=4, layers=2, mlp_dim=16),
       r'^pos_embedding has shape \(2, 8\), the config needs \(2, 12\)$'),
      (models.ModelConfig(vocab=11, embed_dim=8, num_heads=4, layers=3, mlp_dim=16),
       r'^transformer.layers has 2 layers, the config needs 3$'),
      (models.ModelConfig(vocab=11, embed_dim=8, num_heads=4, layers=1, mlp_dim=16),
       r'^transformer.layers has 2 layers, the config needs 1$'),
      (models.ModelConfig(vocab=11, embed_dim=8, num_heads=4, layers=2, mlp_dim=32),
       r'^transformer.layers.0.linear1.weight has shape \(16, 8\), the config needs '
       r'\(32, 8\)$')):
    with pytest.raises(torch_import.UnsafeFileError, match=match):
      torch_import.load_params(path, other)
  missing = {k: v for k, v in sd.items() if k != 'decoder.bias'}
  with pytest.raises(torch_import.UnsafeFileError, match="^state_dict has no 'decoder.bias'$"):
    torch_import.check_shapes(missing, CFG)
  prefixed = torch_import.state_dict({'model_state_dict': {f'_orig_mod.{k}': v
                                                           for k, v in sd.items()}})
  assert list(prefixed) == list(sd)  # torch.compile's prefix is stripped


def test_adam_state_errors(tmp_path):
  sd = random_state_dict(CFG)

  def contents(**opt):
    return torch_import.contents(torch_import.load(write_layout(
        str(tmp_path / 'c.pt'), sd, 'components', optimizer=opt)))

  assert torch_import.adam_state(contents(kind=None)).kind is None  # torch < 2.8
  emergency = torch_import.contents(torch_import.load(write_layout(
      str(tmp_path / 'emergency_50.pt'), sd, 'components', emergency=True)))
  assert (emergency.step, emergency.next_epoch) == (50, 50)  # saved before epoch 50
  fresh = torch_import.Contents(sd, 'HEAD checkpoint', 0, {'state': {}, 'param_groups': [
      {'params': list(range(len(sd))), 'decoupled_weight_decay': True}]}, None)
  a = torch_import.adam_state(fresh)  # an optimizer that has not stepped yet
  assert a.step == 0 and a.kind == 'adamw' and not a.exp_avg_sq['decoder.bias'].any()
  assert torch_import.adam_state(contents(kind='adam')).kind == 'adam'
  c = contents()
  sgd = {**c.optimizer, 'state': {i: {'momentum_buffer': s['exp_avg']}
                                  for i, s in c.optimizer['state'].items()}}
  two = {**c.optimizer, 'param_groups': c.optimizer['param_groups'] * 2}
  short = {**c.optimizer, 'state': {i: s for i, s in c.optimizer['state'].items() if i}}
  for opt, match in ((sgd, 'SGD'), (two, '2 parameter groups'),
                     (short, r'parameter 0 \(pos_embedding\)')):
    with pytest.raises(ValueError, match=match):
      torch_import.adam_state(torch_import.Contents(c.model, c.kind, 50, opt, None))


# -- code in a file is refused and never run ---------------------------------------------------

class _Call:
  """Pickles as ``fn(*args)`` (a REDUCE of the global ``fn``)."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def malicious_files(tmp_path) -> dict:
  """{name: path} of files whose unpickling would create ``tmp_path/marker``."""
  marker = tmp_path / 'marker'
  cmd = f'touch {marker}'
  out = {}
  cases = {
      'os.system': {'model_state_dict': _Call(os.system, cmd)},
      'exec': {'environment': {'x': [_Call(exec, f'open({str(marker)!r}, "w")')]}},
      'eval': _Call(eval, f'__import__("os").system({cmd!r})'),
  }
  for name, obj in cases.items():
    out[name] = _raw_pt(str(tmp_path / f'{name}.pt'), pickle.dumps(obj, protocol=2))
  out['stack_global'] = _raw_pt(str(tmp_path / 'sg.pt'), pickle.dumps(
      {'w': _Call(os.system, cmd)}, protocol=4))
  out['inst'] = _raw_pt(str(tmp_path / 'inst.pt'), f"(S'{cmd}'\nios\nsystem\n.".encode())
  # Inside a real checkpoint's structure, deep in its environment block.
  sd = random_state_dict(CFG)
  st: list = []
  obj = {'step': 1, 'components': {'model': ptfiles.state_dict_pt(sd, st),
                                   'optimizer': ptfiles.optimizer_pt(sd, st)},
         'environment': {**ptfiles.environment(), 'extra': (_Call(os.system, cmd),)}}
  out['in_checkpoint'] = ptfiles.write_pt(str(tmp_path / 'ck.pt'), obj, st)
  return out


def test_refuses_code_and_runs_none_of_it(tmp_path):
  for name, path in malicious_files(tmp_path).items():
    with pytest.raises(torch_import.UnsafeFileError) as e:
      torch_import.load(path)
    msg = str(e.value)
    assert '\n' not in msg, name
    want = {'exec': 'builtins.exec', 'eval': 'builtins.eval', 'inst': 'opcode INST'}.get(
        name, 'system')
    assert want in msg, (name, msg)
    assert not (tmp_path / 'marker').exists(), name
  # numpy arrays of objects or records are not plain data: refused at their dtype.
  for i, arr in enumerate((np.array([1, None], dtype=object),
                           np.zeros(2, dtype=[('a', 'i4'), ('b', 'f4')]))):
    path = _raw_pt(str(tmp_path / f'np{i}.pt'), ptfiles.pickle_bytes({'a': arr}))
    with pytest.raises(torch_import.UnsafeFileError, match=r'refusing to load numpy.dtype'):
      torch_import.load(path)


def test_malicious_files_run_nothing_through_every_entry_point(tmp_path):
  files = malicious_files(tmp_path)
  config = micro_config()
  for path in files.values():
    c = config.copy_and_resolve_references()
    c.init_from = path
    with pytest.raises(runs.ConfigError, match='refusing') as e:
      experiment.run(c, str(tmp_path / 'w'), quiet=True)
    assert e.value.field == 'init_from' and not os.path.exists(tmp_path / 'w')
    with pytest.raises(runs.ConfigError) as e:
      experiment.load_reference(config, runs.expand(config), path)
    assert e.value.field == 'probes.reference_weights'
  run_dir = tmp_path / 'paper' / 'stride'
  run_dir.mkdir(parents=True)
  with open(files['os.system'], 'rb') as src, open(run_dir / 'stride_final.pt', 'wb') as dst:
    dst.write(src.read())
  (run_dir / 'stride.jsonl').write_text('{"epoch": 0}\n')
  proc = subprocess.run([sys.executable, '-m', 'analysis', 'weight_compare', '--workdir',
                         str(tmp_path / 'paper')], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
  assert proc.stderr.count('\n') == 1 and 'refusing to load' in proc.stderr
  assert not (tmp_path / 'marker').exists()


# -- hostile sizes: refused before anything large is allocated -----------------------------

def hostile_files(tmp_path) -> dict:
  out = {}
  one = ptfiles.Storage('0', np.ones(1, np.float32))
  out['zero_stride'] = ptfiles.write_pt(str(tmp_path / 'zs.pt'), {'w': ptfiles.Tensor(
      one, 0, (512, 1 << 20), (0, 0))}, [one])
  # A storage declared as 1 GiB whose member deflates 256 MiB of zeros into ~0.25 MB.
  big = ptfiles.Storage('0', np.ones(1, np.float32))
  pkl = ptfiles.pickle_bytes({'w': ptfiles.Tensor(big, 0, (1 << 28,), (1,))}).replace(
      b'K\x01', b'J' + (1 << 28).to_bytes(4, 'little'), 1)
  bomb = str(tmp_path / 'bomb.pt')
  with zipfile.ZipFile(bomb, 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('archive/data.pkl', pkl)
    with z.open('archive/data/0', 'w', force_zip64=True) as f:
      zeros = bytes(1 << 20)
      for _ in range(256):
        f.write(zeros)
  out['deflate_bomb'] = bomb
  # A memo entry at index 2**31 - 1, then a read of one never stored.
  out['memo_index'] = _raw_pt(str(tmp_path / 'memo.pt'),
                              b'\x80\x02}r\xff\xff\xff\x7fj\xfe\xff\xff\x7f.')
  out['bytes8'] = _raw_pt(str(tmp_path / 'b8.pt'),
                          b'\x80\x04\x8e' + (1 << 40).to_bytes(8, 'little') + b'.')
  out['unicode8'] = _raw_pt(str(tmp_path / 'u8.pt'),
                            b'\x80\x04\x8d' + (1 << 40).to_bytes(8, 'little') + b'.')
  # One 1 MiB storage rebuilt 2000 times (2 GiB of copies).
  mib = ptfiles.Storage('0', np.zeros(1 << 18, np.float32))
  out['many_views'] = ptfiles.write_pt(str(tmp_path / 'views.pt'), [
      ptfiles.Tensor(mib, 0, (1 << 18,), (1,)) for _ in range(2000)], [mib])
  # A storage that claims 2**40 elements over 4 stored bytes.
  claim = ptfiles.pickle_bytes({'w': ptfiles.Tensor(one, 0, (1,), (1,))}).replace(
      b'K\x01', b'\x8a\x06' + (1 << 40).to_bytes(6, 'little'), 1)
  out['huge_numel'] = _raw_pt(str(tmp_path / 'numel.pt'), claim,
                              [('data/0', np.ones(1, np.float32).tobytes())])
  # A numpy array record declaring 2**40 elements.
  arr = ptfiles.pickle_bytes(np.zeros(3, np.float32)).replace(
      b'K\x03\x85', b'\x8a\x06' + (1 << 40).to_bytes(6, 'little') + b'\x85', 1)
  out['numpy_shape'] = _raw_pt(str(tmp_path / 'np.pt'), arr)
  return out


HOSTILE_PROBE = r'''
import json, resource, sys, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a regression fails, not swaps
from ordered_jax import torch_pickle
out = {'rss_before': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
tracemalloc.start()
for name, path in json.loads(sys.argv[1]).items():
  tracemalloc.reset_peak()
  try:
    torch_pickle.load(path)
    out[name] = ['loaded', 0]
  except torch_pickle.UnsafeFileError as e:
    out[name] = [str(e), tracemalloc.get_traced_memory()[1]]
  except Exception as e:
    out[name] = [f'{type(e).__name__}: {e}', tracemalloc.get_traced_memory()[1]]
out['rss_after'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
'''


def test_hostile_files_are_refused_in_bounded_memory(tmp_path):
  files = hostile_files(tmp_path)
  # Each is small on disk.
  assert all(os.path.getsize(p) < 2 << 20 for p in files.values())
  env = {**os.environ, 'OPENBLAS_NUM_THREADS': '1'}
  proc = subprocess.run([sys.executable, '-c', HOSTILE_PROBE, json.dumps(files)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = json.loads(proc.stdout)
  why = {'zero_stride': 'more elements than its storage', 'deflate_bomb': 'stored',
         'memo_index': 'never stored', 'bytes8': 'malformed', 'unicode8': 'malformed',
         'many_views': 'larger than twice', 'huge_numel': 'expected 4398046511104',
         'numpy_shape': 'does not match'}
  for name, want in why.items():
    msg, peak = out[name]
    assert want in msg and '\n' not in msg, (name, msg)
    assert peak < 8 << 20, (name, peak)  # bytes traced while refusing it
  grown_kib = out['rss_after'] - out['rss_before']
  assert grown_kib < 64 << 10, grown_kib


# -- init_from: weights only ----------------------------------------------------------------

def _micro_sd(config, seed=0):
  return random_state_dict(experiment.model_config(config), seed)


def _with(config, **kw):
  c = config.copy_and_resolve_references()
  for k, v in kw.items():
    c[k] = v
  c.lock()
  return c


def test_init_from_reference_final_weights_evaluates_them(tmp_path):
  """The reference's own final weights through init_from (epochs = 0): the summary's
  accuracies are the reference's."""
  config = micro_config(**REF_RUN)
  with open(ref_path('head', 'summary.json')) as f:
    want = json.load(f)['final_eval']
  summary, = experiment.run(_with(config, epochs=0, init_from=ref_path('head')),
                            str(tmp_path), quiet=True)
  with open(os.path.join(str(tmp_path), 'stride', 'experiment_config.json')) as f:
    assert json.load(f)['init_from'] == ref_path('head')
  for key in ('validation_accuracy', 'training_accuracy'):
    assert summary['final_eval'][key] == pytest.approx(want[key], abs=1e-9)


def test_init_from_one_of_our_runs_continues_from_its_weights(tmp_path):
  first = micro_config(epochs=2)
  done, = experiment.run(first, str(tmp_path / 'a'), quiet=True)
  assert done['final_eval'] != done['init_eval']  # else the check below proves nothing
  config = _with(micro_config(epochs=1), init_from=str(tmp_path / 'a' / 'stride'))
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
  (tmp_path / 'empty').mkdir()
  for path, match in ((str(tmp_path / 'nothing.pt'), 'no such file'),
                      (str(tmp_path / 'empty'), 'no final_params or checkpoints'),
                      (small, r'pos_embedding has shape \(2, 8\), the config needs \(2, 16\)')):
    config = _with(micro_config(), init_from=path)
    with pytest.raises(runs.ConfigError, match=match) as e:
      experiment.run(config, str(tmp_path / 'w'), quiet=True)
    assert e.value.field == 'init_from' and '\n' not in str(e.value)
    assert not os.path.exists(tmp_path / 'w')  # nothing was written
  assert not os.listdir(tmp_path / 'empty')
  bad = ml_collections.ConfigDict({**micro_config().to_dict(), 'init_from': 3})
  with pytest.raises(runs.ConfigError, match='init_from'):
    runs.validate(bad)


# -- init_optimizer: continue a reference run -------------------------------------------------

def numpy_adamw(p, g, m, v, step, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.AdamW's step from state (m, v, step), float64: (new p, new v)."""
  p, g, m, v = (np.asarray(x, np.float64) for x in (p, g, m, v))
  t = step + 1
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  p = p * (1 - lr * wd)
  return p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), v


def cosine_closed_form(epoch, lr=1e-3, min_lr=5e-7, epochs=2):
  """ordered-learning.md section 1.6: the rate used during ``epoch``."""
  return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2


@pytest.mark.parametrize('version', VERSIONS)
def test_continuing_a_reference_checkpoint_takes_one_adamw_step_from_its_moments(
    tmp_path, version):
  """checkpoint_0.pt (after epoch 0, 4 AdamW steps) continued for epoch 1 as one full
  batch, without dropout: the new weights are torch's AdamW step from the file's moments
  with the reference's learning rate of epoch 1."""
  ckpt = ref_ckpt(version)
  config = micro_config(**{**REF_RUN, 'batch_size': 60, 'dropout': 0.0, 'init_from': ckpt,
                           'init_optimizer': True, 'eval_batch_size': 64})
  c = torch_import.contents(torch_import.load(ckpt))
  adam = torch_import.adam_state(c)
  lr = cosine_closed_form(1)
  # The reference's own rate for epoch 1 (its recursive scheduler) is the closed form.
  assert adam.group['lr'] == pytest.approx(lr, rel=1e-12)
  assert c.scheduler['_last_lr'][0] == pytest.approx(lr, rel=1e-12)

  summary, = experiment.run(config, str(tmp_path), quiet=True)
  t = summary['training']
  assert (t['last_epoch'], t['actual_epochs'], t['epochs_trained'],
          t['total_gradient_steps']) == (1, 1, 2, adam.step + 1)
  rows = sinks.read_jsonl(str(tmp_path / 'stride' / 'stride.jsonl'))
  assert [r['epoch'] for r in rows] == [1]
  # The row's rate is the next epoch's (the reference's convention): epoch 2 = T_max.
  assert rows[0]['training_metrics/learning_rate'] == pytest.approx(cosine_closed_form(2))

  cfg = experiment.model_config(config)
  model = models.Model(cfg)
  before = torch_import.to_params(c.model, cfg)
  train, _ = tasks.make_mod_add(11, 60, 40, 199, 'reference')
  x, y = jnp.asarray(train[:, :2]), jnp.asarray(train[:, 2])
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()
  g = {k: np.asarray(v) for k, v in models.to_reference(jax.grad(loss)(before), cfg).items()}
  after = {k: np.asarray(v) for k, v in models.to_reference(
      checkpoint.load_params(str(tmp_path / 'stride'), model), cfg).items()}
  noise = 0
  for name, p in c.model.items():
    want, v = numpy_adamw(p, g[name], adam.exp_avg[name], adam.exp_avg_sq[name], adam.step,
                          lr, 0.1)
    # The attention key bias has an exactly zero gradient (softmax ignores it): its moments
    # are rounding noise (~1e-11, far below eps), so its update is noise too; bounded only.
    # (Dead ReLU units have v = 0 exactly and no update: compared.)
    quiet = (v > 0) & (np.sqrt(v) < 1e-9)
    noise += int(quiet.sum())
    np.testing.assert_allclose(after[name][~quiet], want[~quiet], rtol=1e-5, atol=2e-6,
                               err_msg=name)
    assert np.all(np.abs(after[name] - p * (1 - lr * 0.1))[quiet] < lr), name
  assert noise == 2 * 4  # the key bias of both layers (d = 4)
  # The moments mattered: a fresh AdamW (step 0, zero moments) lands far from this step.
  name = 'transformer.layers.0.linear1.weight'
  fresh, _ = numpy_adamw(c.model[name], g[name], 0, 0, 0, lr, 0.1)
  assert np.abs(fresh - after[name]).max() > 100 * 2e-6


def test_init_optimizer_errors_are_one_line(tmp_path):
  config = micro_config(epochs=60, init_optimizer=True)
  sd = _micro_sd(config)
  final = write_layout(str(tmp_path / 'final.pt'), sd, 'final')
  ckpt = lambda name, **kw: write_layout(str(tmp_path / f'{name}.pt'), sd, 'components',
                                         epochs=60, **kw)
  opt = dict(lr=config.lr, weight_decay=config.weight_decay)
  good = ckpt('good', epoch=9, optimizer=opt)
  (tmp_path / 'ours').mkdir()
  # torch < 2.8 does not say Adam or AdamW: the run's experiment_config.json beside
  # checkpoints/ does (without it the config's optimizer is taken, with a warning).
  (tmp_path / 'old' / 'checkpoints').mkdir(parents=True)
  old_adam = write_layout(str(tmp_path / 'old' / 'checkpoints' / 'checkpoint_9.pt'), sd,
                          'components', epoch=9, epochs=60, optimizer={**opt, 'kind': None})
  (tmp_path / 'old' / 'experiment_config.json').write_text('{"optimizer": "adam"}')
  cases = [
      (dict(init_from=final), 'init_optimizer', 'final weights (weights): no optimizer state'),
      (dict(init_from=str(tmp_path / 'ours')), 'init_optimizer', 'use --resume'),
      (dict(init_from=good, optimizer='adam'), 'init_optimizer',
       "holds AdamW state but config.optimizer is 'adam'"),
      (dict(init_from=ckpt('adam', optimizer={**opt, 'kind': 'adam'})), 'init_optimizer',
       "holds Adam state but config.optimizer is 'adamw'"),
      (dict(init_from=old_adam), 'init_optimizer',
       "holds Adam state but config.optimizer is 'adamw'"),
      (dict(init_from=good, lr=2e-3), 'lr', "differs from the checkpoint's initial_lr"),
      (dict(init_from=good, weight_decay=1.0), 'weight_decay', 'differs'),
      (dict(init_from=good, adam_b2=0.98), 'adam_b2', 'betas[1] = 0.999'),
      (dict(init_from=good, epochs=50), 'epochs', 'T_max = 60'),
      (dict(init_from=good, min_lr=1e-6), 'min_lr', 'eta_min'),
      (dict(init_from=ckpt('last', epoch=59, optimizer=opt)), 'epochs',
       'nothing is left to train'),
      (dict(init_from=write_layout(str(tmp_path / 'small.pt'), random_state_dict(CFG),
                                   'components')), 'init_from',
       r'pos_embedding has shape (2, 8), the config needs (2, 16)'),
  ]
  for overrides, field, needle in cases:
    c = _with(config, **overrides)
    with pytest.raises(runs.ConfigError) as e:
      experiment.run(c, str(tmp_path / 'w'), quiet=True)
    msg = str(e.value)
    assert e.value.field == field and needle in msg and '\n' not in msg, (overrides, msg)
    assert not os.path.exists(tmp_path / 'w')
  for overrides, needle in ((dict(init_from=''), 'set init_from'),
                            (dict(init_from=good, optimizer='sgd'), "config.optimizer is 'sgd'"),
                            (dict(init_from=good, init_optimizer=1), 'true or false')):
    c = ml_collections.ConfigDict({**config.to_dict(), **overrides})
    with pytest.raises(runs.ConfigError, match=needle) as e:
      runs.validate(c)
    assert e.value.field == 'init_optimizer'


def test_init_from_bad_input_through_main(tmp_path):
  """main.py: one line naming the field, non-zero exit, no traceback, no run folder."""
  from tests.test_cli import MICRO_FLAGS, _main, _one_line_error  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  base = ['--config=configs/tiny.py', f'--workdir={workdir}', '--quiet', *MICRO_FLAGS]
  evil = malicious_files(tmp_path)['os.system']
  final = write_layout(str(tmp_path / 'final.pt'), _micro_sd(micro_config()), 'final')
  for flags, needles in (
      ([f'--config.init_from={final}', '--config.init_optimizer=true'],
       ('config.init_optimizer', 'no optimizer state')),
      ([f'--config.init_from={ref_path("head")}'],
       ('config.init_from', 'pos_embedding has shape (2, 4), the config needs (2, 16)')),
      ([f'--config.init_from={evil}'], ('config.init_from', 'refusing to load'))):
    _one_line_error(_main(*base, *flags), *needles)
    assert not workdir.exists()
  assert not (tmp_path / 'marker').exists()


# -- the reference data generator at sizes the reference accepts ------------------------------

def reference_pairs(p, train_size, test_size, seed):
  """The reference's generator (ordered-learning.md section 1.2), transcribed."""
  rng = random.Random(seed)
  train = set()
  while len(train) < train_size:
    train.add((rng.randint(0, p - 1), rng.randint(0, p - 1)))
  test = []
  while len(test) < test_size:
    a, b = rng.randint(0, p - 1), rng.randint(0, p - 1)
    if (a, b) not in train:
      test.append((a, b, (a + b) % p))
  return [(a, b, (a + b) % p) for a, b in train], test


def test_reference_generator_accepts_what_the_reference_accepts():
  """train + test > p^2 works as in the reference (test drawn with replacement from the
  pairs left): the output of the reference's own generator (p = 11, generator_p11.json)
  and of its transcription (p = 97, 9000 + 500)."""
  with open(os.path.join(REF, 'generator_p11.json')) as f:
    real = json.load(f)
  got = tasks.make_task(tasks.parse_task('add', 11), 110, 30, 199, 'reference')
  assert got[0].tolist() == real['train'] and got[1].tolist() == real['test']
  train, test = tasks.make_task(tasks.parse_task('add', 97), 9000, 500, 199, 'reference')
  want_train, want_test = reference_pairs(97, 9000, 500, 199)
  assert train.tolist() == [list(r) for r in want_train]
  assert test.tolist() == [list(r) for r in want_test]
  runs.validate(micro_config(p=97, train_size=9000, test_size=500, batch_size=256))
  for size, field in ((9409, 'train_size'), (9410, 'train_size')):
    with pytest.raises(runs.ConfigError, match=r'must be < the 9409 pairs') as e:
      runs.validate(micro_config(p=97, train_size=size, test_size=1, batch_size=256))
    assert e.value.field == field
  with pytest.raises(ValueError, match=r'^train_size: must be < the 9409 pairs'):
    tasks.make_task(tasks.parse_task('add', 97), 9409, 1, 199, 'reference')
  with pytest.raises(runs.ConfigError, match=r'9000 training \+ 500 test examples exceed the 9409'):
    runs.validate(micro_config(p=97, train_size=9000, test_size=500, batch_size=256,
                               data_generator='fast'))
