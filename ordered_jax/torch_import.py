"""Read the reference's PyTorch ``.pt`` files without torch and without running their code.

``torch.save`` writes a zip archive: ``<name>/data.pkl`` (a protocol-2 pickle of the
object), ``<name>/data/<key>`` (the raw bytes of each tensor storage) and
``<name>/byteorder``. In the pickle a tensor is the record
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
whose storage is a persistent id ``('storage', torch.FloatStorage, key, location, numel)``.

Unpickling normally imports and calls whatever the file names. ``SafeUnpickler`` instead
resolves a fixed list of names and refuses every other one (``UnsafeFileError``):

* tensor records (``_rebuild_tensor_v2``, ``_rebuild_parameter``) and the ``torch.*Storage``
  types: rebuilt here as numpy arrays from the archive's bytes (bounds-checked);
* ``collections.OrderedDict`` (a plain container) and ``_codecs.encode(text, 'latin1')``
  (how protocol 2 stores bytes);
* numpy's array and dtype records, which appear only in the checkpoints' RNG states: kept
  as inert ``Opaque`` placeholders, never built.

The files this reads (section 3.7 of the reference sheet): final weights
``{model_state_dict, environment}``; paper-era checkpoints with flat keys
``{step, model_state_dict, optimizer_state_dict, ...}``; current checkpoints with
``{step, components: {model, optimizer, scheduler}, ...}``; bare state dicts.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'ComplexFloatStorage': np.complex64,
    'ComplexDoubleStorage': np.complex128,
}
# numpy records of the checkpoints' RNG states: accepted, never built.
INERT = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
         ('numpy', 'ndarray'), ('numpy', 'dtype')}
PREFIXES = ('_orig_mod.', 'module.')  # torch.compile / DataParallel wrappers


class UnsafeFileError(ValueError):
  """The file is not a torch zip archive we can read, or it names code we refuse to run."""


@dataclasses.dataclass
class Opaque:
  """A record we accept but do not build (numpy RNG state); holds its arguments."""

  name: str
  args: tuple = dataclasses.field(default=(), repr=False)
  state: Any = dataclasses.field(default=None, repr=False)

  def __setstate__(self, state):
    self.state = state


def _inert(name: str):
  def record(*args):
    return Opaque(name, args)
  return record


def _latin1(text: str, encoding: str = 'latin1') -> bytes:
  if encoding != 'latin1':
    raise UnsafeFileError(f'_codecs.encode with encoding {encoding!r} is not a bytes record')
  return text.encode('latin1')


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: Any


class SafeUnpickler(pickle.Unpickler):
  """Unpickles ``data.pkl`` of a torch archive, resolving only the names listed above."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._order = '<' if byteorder == 'little' else '>'
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return self._rebuild_tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return lambda data, requires_grad=False, hooks=None: data
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(np.dtype(STORAGE_DTYPES[name]))
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('_codecs', 'encode'):
      return _latin1
    if (module, name) in INERT:
      return _inert(f'{module}.{name}')
    raise UnsafeFileError(f'refusing to load {module}.{name}: only tensors, storages and '
                          'plain containers are read from .pt files')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise UnsafeFileError(f'unsupported persistent record {str(pid)[:80]}')
    _, kind, key, _location, numel = pid
    if key not in self._storages:
      path = f'{self._prefix}data/{key}'
      try:
        raw = self._archive.read(path)
      except KeyError:
        raise UnsafeFileError(f'storage {path} is missing from the archive') from None
      dtype = kind.dtype.newbyteorder(self._order) if kind.dtype.itemsize > 1 else kind.dtype
      if len(raw) < numel * dtype.itemsize:
        raise UnsafeFileError(f'storage {path} has {len(raw)} bytes, expected '
                              f'{numel * dtype.itemsize}')
      flat = np.frombuffer(raw, dtype, count=numel)
      self._storages[key] = flat.astype(dtype.newbyteorder('='), copy=False)
    return self._storages[key]

  @staticmethod
  def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                      metadata=None):
    """A numpy copy of the tensor view (offset, size, stride in elements) of ``storage``."""
    del requires_grad, hooks, metadata
    if not isinstance(storage, np.ndarray):
      raise UnsafeFileError('a tensor record without a storage')
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
      raise UnsafeFileError(f'malformed tensor record (size {size}, stride {stride})')
    if 0 in size:
      return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.shape[0]:
      raise UnsafeFileError(f'tensor of size {size} reads past its storage '
                            f'({storage.shape[0]} elements)')
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride],
        writeable=False)
    return np.array(view)


def load(path: str) -> Any:
  """The object saved in a ``.pt`` file, with tensors as numpy arrays (see module doc)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such file: {path}')
  if not zipfile.is_zipfile(path):
    raise UnsafeFileError(f'{path} is not a torch zip archive (torch >= 1.6 format)')
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl')
               and n.count('/') == 1]
    if len(pickles) != 1:
      raise UnsafeFileError(f'{path} has no single <name>/data.pkl record')
    prefix = pickles[0][:-len('data.pkl')]
    names = set(archive.namelist())
    order = (archive.read(prefix + 'byteorder').decode().strip()
             if prefix + 'byteorder' in names else 'little')
    with archive.open(pickles[0]) as f:
      try:
        return SafeUnpickler(f, archive, prefix, order).load()
      except UnsafeFileError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise UnsafeFileError(f'{path}: malformed pickle ({type(e).__name__}: '
                              f'{str(e)[:120]})') from None


def state_dict(obj: Any) -> dict[str, np.ndarray]:
  """The model ``state_dict`` inside any of the reference's envelopes, prefixes stripped."""
  if isinstance(obj, dict) and isinstance(obj.get('components'), dict):
    obj = obj['components'].get('model')
  elif isinstance(obj, dict):
    for key in ('model_state_dict', 'state_dict', 'model'):
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj or not all(
      isinstance(v, np.ndarray) for v in obj.values()):
    raise UnsafeFileError('no model state_dict found (expected model_state_dict, '
                          'components.model or a dict of tensors)')
  out = {}
  for name, value in obj.items():
    for pre in PREFIXES:
      if name.startswith(pre):
        name = name[len(pre):]
    out[name] = value
  return out


def model_config(sd: dict[str, np.ndarray], *, num_heads: int = 4, dropout: float = 0.1):
  """The ``models.ModelConfig`` of a reference state dict (heads cannot be read off it)."""
  from ordered_jax import models  # pylint: disable=g-import-not-at-top
  for key in ('embedding.weight', 'transformer.layers.0.linear1.weight'):
    if key not in sd:
      raise UnsafeFileError(f'state_dict has no {key!r}: not the reference transformer')
  vocab, d = sd['embedding.weight'].shape
  layers = len({k.split('.')[2] for k in sd if k.startswith('transformer.layers.')})
  return models.ModelConfig(vocab=int(vocab), embed_dim=int(d), num_heads=num_heads,
                            layers=layers,
                            mlp_dim=int(sd['transformer.layers.0.linear1.weight'].shape[0]),
                            dropout=dropout)


def check_shapes(sd: dict[str, np.ndarray], cfg) -> None:
  """Every parameter of ``cfg``'s model is in ``sd`` with the reference's shape."""
  from ordered_jax import models  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  want = jax.eval_shape(lambda p: models.to_reference(p, cfg),
                        models.Model(cfg).abstract_params())
  for name, value in sd.items():  # the file's (the reference's) order
    if name in want and tuple(value.shape) != tuple(want[name].shape):
      raise UnsafeFileError(f'{name} has shape {tuple(value.shape)}, the config needs '
                            f'{tuple(want[name].shape)}')
  missing = [n for n in want if n not in sd]
  if missing:
    raise UnsafeFileError(f'state_dict has no {missing[0]!r}')
  extra = sorted(set(sd) - set(want))
  if extra:
    raise UnsafeFileError(f'state_dict has parameters the config lacks, e.g. {extra[0]!r}')


def load_params(path: str, cfg=None, *, num_heads: int = 4):
  """(params, cfg): a reference ``.pt`` file as our parameter pytree (float32).

  ``cfg`` (a ``models.ModelConfig``) is checked against the file; without it the shape is
  read off the file (with ``num_heads``)."""
  from ordered_jax import models  # pylint: disable=g-import-not-at-top
  sd = state_dict(load(path))
  cfg = cfg or model_config(sd, num_heads=num_heads)
  check_shapes(sd, cfg)
  return models.from_reference({k: v.astype(np.float32) for k, v in sd.items()}, cfg), cfg
