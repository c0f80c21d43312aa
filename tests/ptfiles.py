"""Writes PyTorch ``.pt`` files by hand (no torch), for the import tests.

The reference's own files are in tests/data/reference/ (written by the reference itself);
this module makes the ones a test needs of another shape, byte order or content, and the
hostile ones. ``write_pt(path, obj, storages)`` produces what ``torch.save`` produces: a zip
archive with ``<name>/data.pkl`` (a protocol-2 pickle), ``<name>/data/<key>`` (raw storage
bytes), ``<name>/byteorder`` and ``<name>/version``. In the pickle every ``Tensor`` becomes
the record ``torch._utils._rebuild_tensor_v2((storage), offset, size, stride, False,
collections.OrderedDict())`` with the persistent id ``('storage', torch.<T>Storage, key,
'cpu', numel)``, exactly as ``torch.save`` writes it; everything else is pickled as usual
(numpy arrays become numpy's own records, ``TorchVersion`` a NEWOBJ of
``torch.torch_version.TorchVersion``). ``write_layout`` writes the reference's three
envelopes with the real files' structure (tests/test_torch_import.py compares them).
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


class TorchVersion(str):
  """Stand-in for ``torch.torch_version.TorchVersion`` (a str subclass)."""


TorchVersion.__module__ = 'torch.torch_version'


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


def pickle_bytes(obj) -> bytes:
  buf = io.BytesIO()
  _Pickler(buf).dump(obj)
  return buf.getvalue()


def write_pt(path: str, obj, storages: list, *, name: str = 'archive',
             byteorder: str = 'little') -> str:
  """Write ``obj`` (containing ``Tensor``s over ``storages``) as torch's zip format."""
  order = '<' if byteorder == 'little' else '>'
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    z.writestr(f'{name}/data.pkl', pickle_bytes(obj))
    z.writestr(f'{name}/byteorder', byteorder)
    for s in storages:
      data = s.data.astype(s.data.dtype.newbyteorder(order)) if s.data.dtype.itemsize > 1 \
          else s.data
      z.writestr(f'{name}/data/{s.key}', data.tobytes())
    z.writestr(f'{name}/version', '3\n')
  return path


def state_dict_pt(sd: dict[str, np.ndarray], storages: list) -> collections.OrderedDict:
  """A model state_dict of ``Tensor``s (an OrderedDict with ``_metadata``, as
  ``Module.state_dict()``)."""
  out = collections.OrderedDict((k, Tensor.of(v, storages)) for k, v in sd.items())
  out._metadata = collections.OrderedDict([('', {'version': 1})])  # pylint: disable=protected-access
  return out


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


def optimizer_pt(sd, storages, *, step: float = 7.0, kind: str = 'adamw', lr: float = 1e-3,
                 next_lr: float | None = None, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.1, moments=None) -> dict:
  """An Adam/AdamW state_dict as torch >= 2.8 writes it (scalar float32 step tensors,
  ``decoupled_weight_decay``; ``kind=None`` leaves that key out, as older torch).
  ``moments`` = (exp_avg dict, exp_avg_sq dict), default constant 0.5 and 0.25."""
  m, v = moments or ({k: np.full(x.shape, 0.5, np.float32) for k, x in sd.items()},
                     {k: np.full(x.shape, 0.25, np.float32) for k, x in sd.items()})
  state = {i: {'step': Tensor.of(np.float32(step), storages),
               'exp_avg': Tensor.of(m[k], storages), 'exp_avg_sq': Tensor.of(v[k], storages)}
           for i, k in enumerate(sd)}
  group = {'lr': lr if next_lr is None else next_lr, 'betas': tuple(betas), 'eps': eps,
           'weight_decay': weight_decay, 'amsgrad': False, 'maximize': False, 'foreach': None,
           'capturable': False, 'differentiable': False, 'fused': None,
           'decoupled_weight_decay': kind == 'adamw', 'initial_lr': lr,
           'params': list(range(len(sd)))}
  if kind is None:
    del group['decoupled_weight_decay']
  return {'state': state, 'param_groups': [group]}


def scheduler_state(epochs: int, last_epoch: int, lr: float = 1e-3,
                    min_lr: float = 5e-7) -> dict:
  """CosineAnnealingLR's state_dict after ``last_epoch`` steps (torch 2.13's keys)."""
  last = min_lr + (lr - min_lr) * (1 + np.cos(np.pi * last_epoch / epochs)) / 2
  return {'T_max': epochs, 'eta_min': min_lr, 'base_lrs': [lr], 'last_epoch': last_epoch,
          '_step_count': last_epoch + 1, '_is_initial': False,
          '_get_lr_called_within_step': False, '_last_lr': [float(last)]}


def environment() -> dict:
  """The reference's ``get_environment_info()`` on a CPU (torch_version a TorchVersion)."""
  return {'torch_version': TorchVersion('2.13.0+cpu'), 'cuda_available': False,
          'python_version': '3.11.7', 'platform': 'Linux-x86_64', 'float32_matmul_precision':
          'highest', 'cudnn_deterministic': True, 'cudnn_benchmark': False,
          'cublas_workspace_config': ':4096:8'}


def rng_states(storages) -> dict:
  """torch's CPU RNG state (a ByteTensor), ``random.getstate()``, ``np.random.get_state()``."""
  return {'torch': Tensor.of(np.arange(5056, dtype=np.uint8), storages),
          'python': random.Random(3).getstate(),
          'numpy': np.random.RandomState(3).get_state()}


def write_layout(path: str, sd: dict, layout: str, *, epoch: int = 50, epochs: int = 5000,
                 optimizer: dict | None = None, emergency: bool = False) -> str:
  """The reference's final weights ('final'), paper-data-v3 checkpoint ('flat') or HEAD
  checkpoint ('components') holding the state dict ``sd`` (a checkpoint after ``epoch`` of
  ``epochs``, or with ``emergency`` the snapshot before it; ``optimizer``: keyword arguments
  of ``optimizer_pt``)."""
  st: list = []
  model = state_dict_pt(sd, st)
  if layout == 'final':
    obj = {'model_state_dict': model, 'environment': environment()}
  else:
    opt = optimizer_pt(sd, st, **(optimizer or {}))
    sched = scheduler_state(epochs, epoch if emergency else epoch + 1)
    rng = rng_states(st)
    if layout == 'flat':  # paper-data-v3 checkpoint_{e}.pt
      obj = {'step': epoch, 'model_state_dict': model, 'optimizer_state_dict': opt,
             'scheduler_state_dict': sched, 'rng_states': rng, 'training_state': None,
             'environment': environment()}
    else:  # HEAD checkpoint_{e}.pt
      obj = {'step': epoch, 'components': {'model': model, 'optimizer': opt,
                                           'scheduler': sched},
             'rng_states': rng, 'training_state': None, 'environment': environment()}
  return write_pt(path, obj, st, name=os.path.splitext(os.path.basename(path))[0])
