"""Writes expected.json: what torch itself reads from the .pt files here (run with torch).

    /path/to/torch/python tests/data/reference/make_expected.py

For every file: its object as a skeleton (containers with their types and keys, scalars as
they are, every tensor or numpy array as [dtype, shape, sha256 of its C-order bytes]).
tests/test_torch_import.py checks that the torch-free reader gives the same skeleton.
"""

import collections
import glob
import hashlib
import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def skeleton(obj):
  if isinstance(obj, torch.Tensor):
    obj = obj.numpy()
  if isinstance(obj, np.ndarray):
    a = np.ascontiguousarray(obj)
    return {'array': [a.dtype.str.lstrip('<|='), list(a.shape),
                      hashlib.sha256(a.tobytes()).hexdigest()]}
  if isinstance(obj, dict):
    kind = 'OrderedDict' if isinstance(obj, collections.OrderedDict) else 'dict'
    return {kind: [[k, skeleton(v)] for k, v in obj.items()]}
  if isinstance(obj, (list, tuple)):
    return {type(obj).__name__: [skeleton(v) for v in obj]}
  if isinstance(obj, str):
    return str(obj)  # torch.torch_version.TorchVersion is a str
  assert obj is None or isinstance(obj, (bool, int, float)), type(obj)
  return obj


if __name__ == '__main__':
  out = {}
  for path in sorted(glob.glob(os.path.join(HERE, '**', '*.pt'), recursive=True)):
    out[os.path.relpath(path, HERE)] = skeleton(torch.load(path, weights_only=False))
  with open(os.path.join(HERE, 'expected.json'), 'w') as f:  # one line per file
    f.write('{\n' + ',\n'.join(f'{json.dumps(k)}: {json.dumps(v)}' for k, v in out.items())
            + '\n}\n')
