"""What a workdir promises: one writer per run, a completion marker, room on the disk.

* ``lock(workdir, names)``: an exclusive ``fcntl.flock`` on ``<workdir>/.<name>.lock`` for
  each run folder (or batch file) a process writes, held for the whole run. The OS drops it
  when the holder exits or is killed, so a stale file never blocks; a second writer is
  refused at once with the holder's pid and host (``WorkdirError``). The file is removed on
  release; an acquirer re-checks that the file it locked is still the one at the path.
* ``mark_complete(run_dir)`` writes ``<run_dir>/complete.json`` atomically, after every
  other final output; ``is_complete(run_dir)`` is the only test of "finished".
* ``disk_full(e)`` recognises a full disk in an exception chain (Python's ENOSPC and
  Orbax/TensorStore's ``RESOURCE_EXHAUSTED``); ``check_space`` refuses a write that cannot
  fit before it starts.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket

COMPLETE = 'complete.json'
_TMP = '.orbax-checkpoint-tmp'


class WorkdirError(RuntimeError):
  """The workdir's state forbids the request (one-line message)."""


class DiskFull(WorkdirError):
  """A write failed or would fail for lack of space (one-line message)."""


def _lock_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, f'.{name}.lock')


def _holder(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode() or '{}')
    return (f"process {info['pid']} on host {info['host']} (since {info['since']})")
  except (OSError, ValueError, KeyError, TypeError):
    return 'another process'


def _acquire(path: str, what: str) -> int:
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f'{what} is in use by {holder}; wait for it to finish or use '
                           'another --workdir') from None
      raise
    try:  # the previous holder may have removed the file between our open and flock
      same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  info = {'pid': os.getpid(), 'host': socket.gethostname(),
          'since': datetime.datetime.now().isoformat(timespec='seconds')}
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(info).encode())
  return fd


@contextlib.contextmanager
def lock(workdir: str, names):
  """Hold ``<workdir>/.<name>.lock`` for every name (run folders, batch files) in the
  block; a name another process holds raises ``WorkdirError`` before anything is held."""
  held = []
  try:
    for name in sorted(set(names)):
      path = _lock_path(workdir, name)
      held.append((_acquire(path, os.path.join(workdir, name)), path))
    yield
  finally:
    for fd, path in reversed(held):
      with contextlib.suppress(OSError):
        os.unlink(path)
      os.close(fd)


def is_complete(run_dir: str) -> bool:
  """Whether the run finished and wrote every final output (its marker exists)."""
  return os.path.isfile(os.path.join(run_dir, COMPLETE))


def mark_complete(run_dir: str, info: dict) -> None:
  """Write the completion marker (atomically; call it after every other output)."""
  path = os.path.join(run_dir, COMPLETE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump({**info, 'finished': datetime.datetime.now().isoformat(timespec='seconds')}, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def unmark_complete(run_dir: str) -> None:
  """Remove the marker (a run about to be changed by a resume is not complete)."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(run_dir, COMPLETE))


# -- disk space ---------------------------------------------------------------------------

_FILE = re.compile(r'(?:Failed writing|Failed to create|local file):? "(/[^"]+)"')


def _chain(e: BaseException):
  seen = set()
  todo = [e]
  while todo:
    x = todo.pop()
    if x is None or id(x) in seen:
      continue
    seen.add(id(x))
    yield x
    todo += [x.__cause__, x.__context__, *getattr(x, 'exceptions', ())]


def disk_full(e: BaseException) -> tuple[str] | None:
  """``(path,)`` when ``e`` (or an exception it came from) is a full disk or quota, the
  path it was writing ('' if unknown); else None."""
  for x in _chain(e):
    if isinstance(x, DiskFull):
      return (getattr(x, 'path', ''),)
    if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
      return (x.filename or '',)
    text = str(x) if isinstance(x, (ValueError, RuntimeError)) else ''
    if 'Out of memory' in text:  # XLA's RESOURCE_EXHAUSTED for host or device memory
      return None
    if 'RESOURCE_EXHAUSTED' in text or 'No space left' in text:
      files = _FILE.findall(text)
      return (files[-1] if files else '',)
  return None


def gib(n: float) -> str:
  """Bytes as a short human size (MiB below 1 GiB)."""
  return f'{n / 2**30:.1f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'


def free_bytes(path: str) -> int:
  """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def check_space(path: str, needed: int, what: str) -> None:
  """``DiskFull`` unless the filesystem of ``path`` has ``needed`` bytes free."""
  free = free_bytes(path)
  if free < needed:
    err = DiskFull(f'{path}: not enough free space for {what} (needs about {gib(needed)}, '
                   f'{gib(free)} free)')
    err.path = path
    raise err


def remove_partial_checkpoints(run_dir: str) -> None:
  """Delete Orbax's unfinished temporary checkpoint folders (a failed save's leftovers)."""
  root = os.path.join(run_dir, 'checkpoints')
  if os.path.isdir(root):
    for n in os.listdir(root):
      if _TMP in n:
        shutil.rmtree(os.path.join(root, n), ignore_errors=True)


def quiet_orbax_leftovers() -> None:
  """For command-line entry points: drop what Orbax leaves behind after a failed write or
  read, which Python reports through ``sys.unraisablehook`` once per pending operation,
  after the run has already said what failed in one line: TensorStore's callbacks into an
  event loop Orbax already closed ('Event loop is closed') and Orbax's own coroutines that
  were never awaited. Anything else is reported as before."""
  import sys  # pylint: disable=g-import-not-at-top
  previous = sys.unraisablehook

  def hook(unraisable):
    e, obj = unraisable.exc_value, unraisable.object
    code = getattr(obj, 'cr_code', None)
    if isinstance(e, RuntimeError) and str(e) == 'Event loop is closed':
      return
    if code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename:
      return
    previous(unraisable)

  sys.unraisablehook = hook
