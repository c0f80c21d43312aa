"""Output files written whole or not at all: a temporary file beside the target, renamed
over it when complete (a full disk or a crash leaves the previous file, or none)."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def replacing(path: str, mode: str = 'w', **kwargs):
  """``open`` a temporary file beside ``path``; on success it replaces ``path``."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
  try:
    try:
      with open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except OSError as e:  # name the file the caller asked for (a write error has none)
      if e.errno is None:
        raise
      raise OSError(e.errno, e.strerror, path) from None
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
