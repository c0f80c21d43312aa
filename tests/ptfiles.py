"""Writes PyTorch ``.pt`` files by hand (no torch), for the import tests.

``write_pt(path, obj)`` produces what ``torch.save`` produces: a zip archive with
``<name>/data.pkl`` (a protocol-2 pickle), ``<name>/data/<key>`` (raw storage bytes),
``<name>/byteorder`` and ``<name>/version``. In the pickle every ``Tensor`` becomes the
record ``torch._utils._rebuild_tensor_v2((storage), offset, size, stride, False,
collections.OrderedDict())`` with the persistent id ``('storage', torch.<T>Storage, key,
'cpu', numel)``, exactly as ``torch.save`` writes it; everything else is pickled as usual
(numpy arrays in RNG states become numpy's own records). ``write_layout`` writes the
reference's three envelopes (final weights, paper-era and current checkpoints).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
import pickle
import random
import zipfile

import ml_dtypes
import numpy as np

STORAGE_NAMES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
                 np.dtype(np.float16): 'HalfStorage', np.dtype(ml_dtypes.bfloat16):
                 'BFloat16Storage', np.dtype(np.int64): 'LongStorage',
                 np.dtype(np.int32): 'IntStorage', np.dtype(np.uint8): 'ByteStorage',
                 np.dtype(np.bool_): 'BoolStorage'}


@functools.lru_cache(maxsize=None)
def torch_name(module: str, name: str):
  """A stand-in for a torch global: pickled as ``GLOBAL module name``, never imported."""
  return type(name, (), {'__module__': module, '__qualname__': name})


REBUILD = torch_name('torch._utils', '_rebuild_tensor_v2')


@dataclasses.dataclass
class Storage:
  key: str
  data: np.ndarray  # 1-D


@dataclasses.dataclass
class Tensor:
  """A tensor to save: a view (offset, shape, stride in elements) of a flat storage."""

  storage: Storage
  offset: int
  shape: tuple
  stride: tuple

  @classmethod
  def of(cls, array, storages: list) -> 'Tensor':
    """A contiguous tensor holding ``array`` in a new storage."""
    a = np.array(array, order='C')  # keeps 0-d arrays 0-d (ascontiguousarray would not)
    s = Storage(str(len(storages)), a.reshape(-1))
    storages.append(s)
    strides = tuple(x // a.itemsize for x in a.strides) if a.ndim else ()
    return cls(s, 0, a.shape, strides)


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """The pure-Python pickler with torch's tensor and storage records."""

  def __init__(self, f):
    super().__init__(f, protocol=2)

  def persistent_id(self, obj):
    if isinstance(obj, Storage):
      return ('storage', torch_name('torch', STORAGE_NAMES[obj.data.dtype]), obj.key, 'cpu',
              obj.data.size)
    return None

  def reducer_override(self, obj):
    if isinstance(obj, Tensor):
      return REBUILD, (obj.storage, obj.offset, tuple(obj.shape), tuple(obj.stride), False,
                       collections.OrderedDict())
    return NotImplemented

  def save_global(self, obj, name=None):
    """GLOBAL module\\nname\\n without importing the module (torch need not exist)."""
    module = getattr(obj, '__module__', None)
    name = name or obj.__qualname__
    self.write(pickle.GLOBAL + f'{module}\n{name}\n'.encode('utf-8'))
    self.memoize(obj)


def write_pt(path: str, obj, storages: list, *, name: str = 'archive',
             byteorder: str = 'little') -> str:
  """Write ``obj`` (containing ``Tensor``s over ``storages``) as torch's zip format."""
  buf = io.BytesIO()
  _Pickler(buf).dump(obj)
  order = '<' if byteorder == 'little' else '>'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    z.writestr(f'{name}/data.pkl', buf.getvalue())
    z.writestr(f'{name}/byteorder', byteorder)
    for s in storages:
      data = s.data.astype(s.data.dtype.newbyteorder(order)) if s.data.dtype.itemsize > 1 \
          else s.data
      z.writestr(f'{name}/data/{s.key}', data.tobytes())
    z.writestr(f'{name}/version', '3\n')
  return path


def state_dict_pt(sd: dict[str, np.ndarray], storages: list) -> collections.OrderedDict:
  """A model state_dict of ``Tensor``s (an OrderedDict, as ``Module.state_dict()``)."""
  return collections.OrderedDict((k, Tensor.of(v, storages)) for k, v in sd.items())


def random_state_dict(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """A reference state_dict with random values (LayerNorm affine too), float32."""
  rng = np.random.default_rng(seed)
  d, f, p = cfg.embed_dim, cfg.mlp_dim, cfg.vocab
  shapes = {'pos_embedding': (2, d), 'embedding.weight': (p, d)}
  for i in range(cfg.layers):
    pre = f'transformer.layers.{i}.'
    shapes.update({pre + 'self_attn.in_proj_weight': (3 * d, d),
                   pre + 'self_attn.in_proj_bias': (3 * d,),
                   pre + 'self_attn.out_proj.weight': (d, d), pre + 'self_attn.out_proj.bias': (d,),
                   pre + 'linear1.weight': (f, d), pre + 'linear1.bias': (f,),
                   pre + 'linear2.weight': (d, f), pre + 'linear2.bias': (d,),
                   pre + 'norm1.weight': (d,), pre + 'norm1.bias': (d,),
                   pre + 'norm2.weight': (d,), pre + 'norm2.bias': (d,)})
  shapes.update({'decoder.weight': (p, d), 'decoder.bias': (p,)})
  return {k: (rng.normal(size=s) * (0.5 if len(s) == 2 else 0.2) + (1.0 if 'norm' in k and
                                                                     'weight' in k else 0.0)
              ).astype(np.float32) for k, s in shapes.items()}


def _optimizer(sd, storages):
  """An AdamW state_dict as torch writes it (scalar step tensors, param_groups)."""
  state = {i: {'step': Tensor.of(np.float32(7.0), storages),
               'exp_avg': Tensor.of(np.full(v.shape, 0.5, np.float32), storages),
               'exp_avg_sq': Tensor.of(np.full(v.shape, 0.25, np.float32), storages)}
           for i, v in enumerate(sd.values())}
  return {'state': state, 'param_groups': [
      {'lr': 1e-3, 'betas': (0.9, 0.999), 'eps': 1e-8, 'weight_decay': 0.1, 'amsgrad': False,
       'maximize': False, 'foreach': None, 'capturable': False, 'differentiable': False,
       'fused': None, 'initial_lr': 1e-3, 'params': list(range(len(sd)))}]}


def write_layout(path: str, sd: dict, layout: str) -> str:
  """The reference's final weights ('final'), paper-era checkpoint ('flat') or current
  checkpoint ('components') holding the state dict ``sd``."""
  st: list = []
  model = state_dict_pt(sd, st)
  env = {'torch_version': '2.4.1+cu124', 'cuda_available': True}
  rng = {'torch': Tensor.of(np.arange(16, dtype=np.uint8), st),
         'python': random.Random(3).getstate(),
         'numpy': np.random.RandomState(3).get_state()}
  sched = {'T_max': 5000, 'eta_min': 5e-7, 'base_lrs': [1e-3], 'last_epoch': 50,
           '_step_count': 51, '_get_lr_called_within_step': False, '_last_lr': [9.9e-4]}
  if layout == 'final':
    obj = {'model_state_dict': model, 'environment': env}
  elif layout == 'flat':  # paper-data-v3 checkpoint_{e}.pt
    obj = {'step': 50, 'model_state_dict': model, 'optimizer_state_dict': _optimizer(sd, st),
           'scheduler_state_dict': sched, 'rng_states': rng, 'training_state': None,
           'environment': env}
  else:  # HEAD checkpoint_{e}.pt / emergency_{e}.pt
    obj = {'step': 50, 'components': {'model': model, 'optimizer': _optimizer(sd, st),
                                      'scheduler': sched},
           'rng_states': rng, 'training_state': None, 'environment': env}
  return write_pt(path, obj, st, name=os.path.splitext(os.path.basename(path))[0])
