"""Read PyTorch ``.pt`` archives without torch, without running their code, in bounded memory.

``torch.save`` writes a zip archive: ``<name>/data.pkl`` (a protocol-2 pickle of the
object), ``<name>/data/<key>`` (the raw bytes of each tensor storage) and
``<name>/byteorder``. In the pickle a tensor is the record
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
whose storage is a persistent id ``('storage', torch.FloatStorage, key, location, numel)``.

``load`` never hands the pickle to ``pickle.Unpickler``: it decodes the opcodes with
``pickletools.genops`` (which bounds every argument by the bytes really there) and runs
them on its own small stack machine, as torch's ``weights_only`` unpickler does. A global
resolves only if it is in ``GLOBALS``; calling (REDUCE), instantiating (NEWOBJ) or
updating (BUILD) anything else is refused with ``UnsafeFileError`` naming it. What the
allowed names build is inert data:

* tensor records and ``torch.*Storage`` types: numpy arrays, copied out of the archive's
  bytes (``_rebuild_parameter`` gives the tensor itself);
* ``collections.OrderedDict``, ``builtins.set``/``frozenset``/``complex``, ``torch.Size``
  (a tuple) and ``_codecs.encode(text, 'latin1')`` (how protocol 2 stores bytes);
* ``torch.torch_version.TorchVersion``: its plain string (the checkpoints' environment);
* numpy arrays, scalars and dtypes (the checkpoints' numpy RNG state): only numeric and
  bool dtypes, the array built by ``np.frombuffer`` from the pickled bytes, never by
  numpy's own ``_reconstruct``/``__setstate__``;
* a BUILD on an ``OrderedDict`` (a state dict's ``_metadata``) is dropped.

Hostile sizes are refused before anything is allocated: the pickle member is at most
``MAX_PICKLE_BYTES``; a zip member's declared size must be backed by its stored bytes
(stored: equal; deflated: at most ``MAX_INFLATE_RATIO`` times); a storage needs
``numel * itemsize`` bytes of its member; a tensor may not have more elements than its
storage holds from its offset (no zero-stride blow-ups), and all tensors together at most
twice the storage bytes read (no rebuilding one storage a million times). The memo
is a dict, so a huge memo index costs nothing.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import math
import os
import pickletools
import re
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np

STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'ComplexFloatStorage': np.complex64,
    'ComplexDoubleStorage': np.complex128,
}
MAX_PICKLE_BYTES = 64 << 20   # the reference's data.pkl files are ~20 KB
MAX_INFLATE_RATIO = 64        # a deflated member's size / its stored bytes (floats: ~1.1)
MAX_DIMS = 64
NUMPY_DTYPE = re.compile(r'^(b1|[iu](1|2|4|8)|f(2|4|8|16)|c(8|16|32))$')  # numeric, bool


class UnsafeFileError(ValueError):
  """The file is not a torch zip archive we can read, or it names code we refuse to run."""


@dataclasses.dataclass(frozen=True)
class _Global:
  """A resolved global: ``call`` for REDUCE, ``new`` for NEWOBJ (None: not allowed)."""

  name: str
  call: Callable | None = None
  new: Callable | None = None
  dtype: Any = None  # torch.*Storage: the element type


class _Pending:
  """A numpy record made by REDUCE that its BUILD completes (array or dtype)."""

  def __init__(self, name: str, finish: Callable):
    self.name, self.finish = name, finish


def _refuse(what: str):
  raise UnsafeFileError(f'refusing to load {what}: only tensors, storages, numpy arrays and '
                        'plain containers are read from .pt files')


def _latin1(text, encoding='latin1') -> bytes:
  if not isinstance(text, str) or encoding != 'latin1':
    raise UnsafeFileError(f'_codecs.encode with encoding {encoding!r} is not a bytes record')
  return text.encode('latin1')


def _torch_version(value='') -> str:
  if not isinstance(value, str):
    raise UnsafeFileError('torch.torch_version.TorchVersion of a non-string')
  return str(value)


def _numpy_dtype(name, align=False, copy=True) -> _Pending:
  """``numpy.dtype(name, align, copy)``; its BUILD state carries the byte order."""
  del align, copy
  if not isinstance(name, str) or not NUMPY_DTYPE.match(name):
    _refuse(f'numpy.dtype({name!r}) (numeric and bool dtypes only)')

  def finish(state):
    # (version, byteorder, subarray, names, fields, ...): plain dtypes have no sub-arrays,
    # names or fields.
    order = state[1] if isinstance(state, tuple) and len(state) > 1 else '|'
    if order not in ('<', '>', '|', '=') or (isinstance(state, tuple) and any(
        x is not None for x in state[2:5])):
      _refuse(f'numpy.dtype({name!r}) with fields, sub-arrays or byte order {order!r}')
    dtype = np.dtype(name)
    return dtype.newbyteorder(order) if order in '<>' else dtype

  return _Pending('numpy.dtype', finish)


def _numpy_reconstruct(subtype, shape=(0,), tag=b'b') -> _Pending:
  """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``; its BUILD state is
  ``(version, shape, dtype, fortran, raw bytes)``, read with ``np.frombuffer``."""
  if not (isinstance(subtype, _Global) and subtype.name == 'numpy.ndarray'):
    _refuse(f'numpy _reconstruct of {getattr(subtype, "name", type(subtype).__name__)}')
  del shape, tag

  def finish(state):
    if not (isinstance(state, tuple) and len(state) == 5):
      raise UnsafeFileError('malformed numpy array record')
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, np.dtype):
      _refuse('a numpy array without a plain numeric dtype')
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMS and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
      raise UnsafeFileError(f'malformed numpy array shape {str(shape)[:80]}')
    if isinstance(raw, str):
      raw = raw.encode('latin1')
    if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dtype.itemsize:
      raise UnsafeFileError(f'numpy array of shape {shape} does not match its '
                            f'{len(raw) if isinstance(raw, bytes) else "missing"} bytes')
    flat = np.frombuffer(raw, dtype).astype(dtype.newbyteorder('='))
    return flat.reshape(shape, order='F' if fortran else 'C')

  return _Pending('numpy.ndarray', finish)


def _numpy_scalar(dtype, raw=b'') -> np.generic:
  if not isinstance(dtype, np.dtype):
    _refuse('a numpy scalar without a plain numeric dtype')
  if isinstance(raw, str):
    raw = raw.encode('latin1')
  if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
    raise UnsafeFileError('malformed numpy scalar record')
  return np.frombuffer(raw, dtype)[0].astype(dtype.newbyteorder('='))


def _ordered_dict(items=()) -> collections.OrderedDict:
  return collections.OrderedDict(items)


def _parameter(data, requires_grad=False, hooks=None, state=None):
  del requires_grad, hooks, state
  if not isinstance(data, np.ndarray):
    raise UnsafeFileError('a parameter record without a tensor')
  return data


def _typed(kind: type) -> Callable:
  def build(*args):
    if len(args) > 1 or not all(isinstance(a, (list, tuple, set, frozenset)) for a in args):
      raise UnsafeFileError(f'malformed builtins.{kind.__name__} record')
    return kind(*args)
  return build


def _complex(real=0.0, imag=0.0) -> complex:
  if not all(isinstance(x, (int, float)) for x in (real, imag)):
    raise UnsafeFileError('malformed builtins.complex record')
  return complex(real, imag)


def _size(dims=()) -> tuple:
  if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
    raise UnsafeFileError('malformed torch.Size record')
  return tuple(dims)


class _Archive:
  """One torch zip archive: bounded reads of its members, storages cached by key."""

  def __init__(self, path: str, archive: zipfile.ZipFile, prefix: str):
    self.path, self.archive, self.prefix = path, archive, prefix
    self.size = os.path.getsize(path)
    infos = {i.filename: i for i in archive.infolist()}
    self.infos = infos
    order = self.read(prefix + 'byteorder', 16).decode('ascii', 'replace').strip() \
        if prefix + 'byteorder' in infos else 'little'
    if order not in ('little', 'big'):
      raise UnsafeFileError(f'{path}: byteorder {order[:20]!r} is neither little nor big')
    self.order = '<' if order == 'little' else '>'
    self.tensor_budget = 1 << 20  # grows by twice each storage read
    self.storages: dict[str, np.ndarray] = {}

  def read(self, name: str, limit: int, need: int | None = None) -> bytes:
    """``need`` bytes (default: all) of member ``name``, whose size must be at most
    ``limit`` and backed by its stored bytes."""
    info = self.infos.get(name)
    if info is None:
      raise UnsafeFileError(f'{name} is missing from the archive')
    if info.compress_type == zipfile.ZIP_STORED:
      backed = info.file_size == info.compress_size
    else:
      backed = info.file_size <= MAX_INFLATE_RATIO * info.compress_size + 4096
    if not backed or info.compress_size > self.size:
      raise UnsafeFileError(f'{name} declares {info.file_size} bytes from '
                            f'{info.compress_size} stored: not a torch archive member')
    if info.file_size > limit:
      raise UnsafeFileError(f'{name} has {info.file_size} bytes, more than the {limit} '
                            'allowed')
    need = info.file_size if need is None else need
    if need > info.file_size:
      raise UnsafeFileError(f'{name} has {info.file_size} bytes, expected {need}')
    with self.archive.open(info) as f:
      data = f.read(need)
    if len(data) != need:
      raise UnsafeFileError(f'{name} ends after {len(data)} of {need} bytes')
    return data

  def storage(self, pid) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _Global) and pid[1].dtype is not None
            and isinstance(pid[2], str) and isinstance(pid[4], int) and pid[4] >= 0):
      raise UnsafeFileError(f'unsupported persistent record {str(pid)[:80]}')
    _, kind, key, _location, numel = pid
    dtype = np.dtype(kind.dtype)
    if key in self.storages:
      flat = self.storages[key]
      if flat.dtype != dtype or flat.size != numel:
        raise UnsafeFileError(f'storage {key} is named with two types or sizes')
      return flat
    name = f'{self.prefix}data/{key}'
    if dtype.itemsize > 1:
      dtype = dtype.newbyteorder(self.order)
    raw = self.read(name, limit=1 << 62, need=numel * dtype.itemsize)
    flat = np.frombuffer(raw, dtype).astype(dtype.newbyteorder('='), copy=False)
    self.storages[key] = flat
    self.tensor_budget += 2 * flat.nbytes
    return flat

  def tensor(self, storage, offset=0, size=(), stride=(), requires_grad=False, hooks=None,
             metadata=None) -> np.ndarray:
    """A numpy copy of the view (offset, size, stride in elements) of ``storage``."""
    del requires_grad, hooks, metadata
    if not isinstance(storage, np.ndarray):
      raise UnsafeFileError('a tensor record without a storage')
    ints = lambda t: isinstance(t, (tuple, list)) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in t)
    if not (ints(size) and ints(stride) and len(size) == len(stride) <= MAX_DIMS
            and isinstance(offset, int) and offset >= 0):
      raise UnsafeFileError(f'malformed tensor record (size {str(size)[:60]}, stride '
                            f'{str(stride)[:60]})')
    size, stride = tuple(size), tuple(stride)
    numel = math.prod(size)
    if numel == 0:
      return np.zeros(size, storage.dtype)
    if numel > storage.size - offset:
      raise UnsafeFileError(f'tensor of size {size} has more elements than its storage holds '
                            f'({storage.size} from offset {offset})')
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
      raise UnsafeFileError(f'tensor of size {size} reads past its storage '
                            f'({storage.size} elements)')
    self.tensor_budget -= numel * storage.itemsize
    if self.tensor_budget < 0:
      raise UnsafeFileError('the tensors are larger than twice the storages they view')
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride],
        writeable=False)
    return np.array(view)


def _globals(archive: _Archive) -> dict[tuple[str, str], _Global]:
  """The names a .pt file may use, resolved to inert builders (see module doc)."""
  table = {
      ('torch._utils', '_rebuild_tensor_v2'): dict(call=archive.tensor),
      ('torch._utils', '_rebuild_tensor'): dict(call=archive.tensor),
      ('torch._utils', '_rebuild_parameter'): dict(call=_parameter),
      ('torch._utils', '_rebuild_parameter_with_state'): dict(call=_parameter),
      ('collections', 'OrderedDict'): dict(call=_ordered_dict, new=_ordered_dict),
      ('_codecs', 'encode'): dict(call=_latin1),
      ('torch.torch_version', 'TorchVersion'): dict(call=_torch_version, new=_torch_version),
      ('torch', 'Size'): dict(call=_size),
      ('builtins', 'set'): dict(call=_typed(set)),
      ('builtins', 'frozenset'): dict(call=_typed(frozenset)),
      ('builtins', 'complex'): dict(call=_complex),
      ('numpy', 'ndarray'): {},
      ('numpy', 'dtype'): dict(call=_numpy_dtype),
  }
  for core in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    table[(core, '_reconstruct')] = dict(call=_numpy_reconstruct)
    table[(core, 'scalar')] = dict(call=_numpy_scalar)
  out = {k: _Global(f'{k[0]}.{k[1]}', **v) for k, v in table.items()}
  for name, dtype in STORAGE_DTYPES.items():
    out[('torch', name)] = _Global(f'torch.{name}', dtype=dtype)
  return out


_MARK = object()
_CONSTANTS = {'NONE': None, 'NEWTRUE': True, 'NEWFALSE': False}
_VALUES = {'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4', 'FLOAT',
           'BINFLOAT', 'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE',
           'SHORT_BINUNICODE', 'BINUNICODE8', 'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8'}


def _unpickle(data: bytes, archive: _Archive) -> Any:
  """Runs the pickle ``data`` on a stack machine that calls only ``_globals``' builders."""
  names = _globals(archive)
  stack: list = []
  marks: list = []
  memo: dict = {}
  pending = 0

  def pop_mark() -> list:
    nonlocal stack
    items, stack = stack, marks.pop()
    return items

  for op, arg, _ in pickletools.genops(data):
    name = op.name
    if name in _CONSTANTS:
      stack.append(_CONSTANTS[name])
    elif name in _VALUES:
      stack.append(arg)
    elif name == 'MARK':
      marks.append(stack)
      stack = []
    elif name in ('EMPTY_TUPLE', 'TUPLE1', 'TUPLE2', 'TUPLE3'):
      n = {'EMPTY_TUPLE': 0, 'TUPLE1': 1, 'TUPLE2': 2, 'TUPLE3': 3}[name]
      if len(stack) < n:
        raise UnsafeFileError(f'{name} on a stack of {len(stack)}')
      items = tuple(stack[len(stack) - n:]) if n else ()
      del stack[len(stack) - n:]
      stack.append(items)
    elif name == 'TUPLE':
      items = tuple(pop_mark())  # (before naming ``stack``: pop_mark rebinds it)
      stack.append(items)
    elif name == 'EMPTY_LIST':
      stack.append([])
    elif name == 'LIST':
      items = pop_mark()
      stack.append(items)
    elif name in ('APPEND', 'APPENDS'):
      items = [stack.pop()] if name == 'APPEND' else pop_mark()
      if type(stack[-1]) is not list:
        raise UnsafeFileError(f'{name} to a {type(stack[-1]).__name__}')
      stack[-1].extend(items)
    elif name == 'EMPTY_DICT':
      stack.append({})
    elif name in ('DICT', 'SETITEM', 'SETITEMS'):
      items = stack[-2:] if name == 'SETITEM' else pop_mark()
      if name == 'SETITEM':
        del stack[-2:]
      target = {} if name == 'DICT' else stack[-1]
      if not isinstance(target, dict) or len(items) % 2:
        raise UnsafeFileError(f'{name} on a {type(target).__name__}')
      for k in range(0, len(items), 2):
        target[items[k]] = items[k + 1]
      if name == 'DICT':
        stack.append(target)
    elif name == 'EMPTY_SET':
      stack.append(set())
    elif name == 'ADDITEMS':
      items = pop_mark()
      if type(stack[-1]) is not set:
        raise UnsafeFileError(f'ADDITEMS to a {type(stack[-1]).__name__}')
      stack[-1].update(items)
    elif name == 'FROZENSET':
      items = frozenset(pop_mark())
      stack.append(items)
    elif name == 'POP':
      if stack:
        stack.pop()
      else:
        pop_mark()
    elif name == 'POP_MARK':
      pop_mark()
    elif name == 'DUP':
      stack.append(stack[-1])
    elif name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
      memo[arg] = stack[-1]
    elif name == 'MEMOIZE':
      memo[len(memo)] = stack[-1]
    elif name in ('GET', 'BINGET', 'LONG_BINGET'):
      if arg not in memo:
        raise UnsafeFileError(f'{name} of memo entry {arg} that was never stored')
      stack.append(memo[arg])
    elif name in ('GLOBAL', 'STACK_GLOBAL'):
      if name == 'GLOBAL':
        module, _, attr = arg.partition(' ')
      else:
        attr, module = stack.pop(), stack.pop()
        if not (isinstance(module, str) and isinstance(attr, str)):
          raise UnsafeFileError('STACK_GLOBAL of non-strings')
      # Python 2 names, as pickle (fix_imports) and torch map them: __builtin__ -> builtins.
      if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
      elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
      if (module, attr) not in names:
        _refuse(f'{module}.{attr}')
      stack.append(names[(module, attr)])
    elif name in ('REDUCE', 'NEWOBJ'):
      args = stack.pop()
      fn = stack.pop()
      call = getattr(fn, 'call' if name == 'REDUCE' else 'new', None) \
          if isinstance(fn, _Global) else None
      if call is None or not isinstance(args, tuple):
        what = fn.name if isinstance(fn, _Global) else f'a {type(fn).__name__}'
        _refuse(f'{name} of {what}')
      result = call(*args)
      pending += isinstance(result, _Pending)
      stack.append(result)
    elif name == 'BUILD':
      state = stack.pop()
      inst = stack[-1]
      if isinstance(inst, _Pending):
        built = inst.finish(state)
        stack[-1] = built
        for k, v in list(memo.items()):
          if v is inst:
            memo[k] = built
        pending -= 1
      elif type(inst) is not collections.OrderedDict:  # a state dict's _metadata: dropped
        _refuse(f'BUILD of a {type(inst).__name__}')
    elif name == 'BINPERSID':
      stack.append(archive.storage(stack.pop()))
    elif name == 'PROTO':
      if arg > 5:
        raise UnsafeFileError(f'pickle protocol {arg} is newer than 5')
    elif name == 'FRAME':
      pass
    elif name == 'STOP':
      if pending or marks or len(stack) != 1:
        raise UnsafeFileError('the pickle ends with unfinished records')
      return stack[0]
    else:
      raise UnsafeFileError(f'refusing pickle opcode {name}')
  raise UnsafeFileError('the pickle has no STOP')


def load(path: str) -> Any:
  """The object saved in a ``.pt`` file, with tensors as numpy arrays (see module doc)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such file: {path}')
  if not zipfile.is_zipfile(path):
    raise UnsafeFileError(f'{path} is not a torch zip archive (torch >= 1.6 format)')
  try:
    with zipfile.ZipFile(path) as z:
      pickles = [n for n in z.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
      if len(pickles) != 1:
        raise UnsafeFileError(f'{path} has no single <name>/data.pkl record')
      archive = _Archive(path, z, pickles[0][:-len('data.pkl')])
      data = archive.read(pickles[0], MAX_PICKLE_BYTES)
      return _unpickle(data, archive)
  except UnsafeFileError:
    raise
  except (zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError, AttributeError,
          OverflowError, EOFError, RecursionError, MemoryError, UnicodeError, OSError) as e:
    raise UnsafeFileError(f'{path}: malformed archive or pickle ({type(e).__name__}: '
                          f'{str(e)[:120]})') from None

