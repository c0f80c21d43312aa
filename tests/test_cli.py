"""main.py end to end, and every validation error: one line, non-zero exit, no traceback."""

import json
import os
import subprocess
import sys

import pytest

from ordered_jax import runs
from tests.conftest import MICRO, ROOT, micro_config

MICRO_FLAGS = [f'--config.{k}={v}' for k, v in MICRO.items()]


def _main(*args, timeout=240):
  env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def _main_patched(setup: str, workdir, *flags, path=(ROOT,)):
  """main.py run as ``__main__`` in a fresh interpreter after ``setup`` (Python source
  that patches what the test breaks), with ``path`` first on sys.path."""
  script = (f'import runpy, sys\nsys.path[:0] = {[str(p) for p in path]!r}\n{setup}'
            f"sys.argv = ['main.py', '--config=configs/tiny.py', '--workdir={workdir}', "
            + ''.join(f'{f!r}, ' for f in (*MICRO_FLAGS, *flags)) + "'--silent']\n"
            f"runpy.run_path({os.path.join(ROOT, 'main.py')!r}, run_name='__main__')\n")
  return subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                        text=True, timeout=240)


def _one_line_error(proc, *needles):
  assert proc.returncode != 0
  err = proc.stderr.strip().splitlines()
  assert 'Traceback' not in proc.stderr, proc.stderr
  assert len([l for l in err if l.startswith('error:')]) == 1, proc.stderr
  line = next(l for l in err if l.startswith('error:'))
  for n in needles:
    assert n in line, line


@pytest.mark.slow
def test_tiny_preset_end_to_end_then_refuse_then_resume(tmp_path):
  workdir = str(tmp_path)
  args = ['--config=configs/tiny.py', f'--workdir={workdir}', '--quiet', *MICRO_FLAGS,
          '--config.strategy=stride,fixed-random']
  proc = _main(*args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for run in ('stride', 'fixed-random'):
    s = json.load(open(os.path.join(workdir, run, 'summary.json')))
    assert s['training']['epochs_trained'] == MICRO['epochs']
  _one_line_error(_main(*args), 'already holds a run', '--resume', '--overwrite')
  _one_line_error(_main(*args, '--resume'), 'already complete')
  proc = _main(*args, '--overwrite')
  assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize('flag,needles', [
    ('--config.bogus=1', ('config.bogus: unknown key',)),
    ('--config.stratgy=x', ('config.stratgy: unknown key; did you mean strategy?',)),
    ('--config.probes.nmes=x', ('config.probes.nmes: unknown key; did you mean probes.names?',)),
    ('--config.p=100', ('config.p', 'prime')),
    ('--config.lr=abc', ('--config.lr',)),
    ('--config.strategy=sorted', ('config.strategy', 'stride')),
    ('--num_processes=2', ('--num_processes: only with --distributed',)),
])
def test_cli_rejects_bad_input_in_one_line(flag, needles, tmp_path):
  _one_line_error(_main('--config=configs/tiny.py', f'--workdir={tmp_path}', flag), *needles)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  _one_line_error(_main('--config=configs/tiny.py', f'--workdir={blocker}/sub'), '--workdir')


BAD = [
    ('strategy', 'stride,bogus', 'unknown strategy'), ('strategy', 'stride,stride', 'twice'),
    ('strategy', '', 'at least one'), ('p', 91, 'prime'), ('p', 2, '>= 3'),
    ('p', 50021, '46341'), ('seed', -1, '>= 0'), ('train_size', 0, '>= 1'),
    ('train_size', 169, 'must be < the 169 pairs'), ('train_size', 'half', "'critical'"),
    ('train_fraction', 1.5, '<= 1'), ('task', 'sym:9', 'sym'), ('task', 'poly:x/y', "'/'"),
    ('task', 'pow', 'add'), ('model', 'gpt', 'mlp'), ('mlp.activation', 'tanh', 'relusqr'),
    ('critical_delta', 3.0, '<='), ('sweep.max_runs_per_batch', -1, '>= 0'),
    ('test_size', -1, '>= 0'),
    ('batch_size', 0, '>= 1'), ('batch_size', 61, 'training examples'), ('eval_batch_size', 0, '>= 1'),
    ('lr', 0.0, '> 0'), ('min_lr', 1.0, '<= lr'), ('epochs', -1, '>= 0'),
    ('embed_dim', 15, 'divisible'), ('num_heads', 0, '>= 1'), ('layers', 0, '>= 1'),
    ('mlp_dim', 0, '>= 1'), ('dropout', 1.0, '<='), ('weight_decay', -0.1, '>= 0'),
    ('optimizer', 'lamb', 'adamw'), ('stride', -1, '>= 0'), ('stride', 14, '<= 13'),
    ('target_acc', 0.0, '> 0'), ('target_acc', 101.0, '<= 100'), ('eval_every', 0, '>= 1'),
    ('probe_every', 0, '>= 1'), ('checkpoint_every', 0, '>= 1'), ('keep_checkpoints', 0, '>= 1'),
    ('keep_every', -1, '>= 0'), ('data_generator', 'slow', 'reference'),
    ('matmul_precision', 'fp8', 'highest'), ('adam_eps', 0.0, '> 0'),
    ('seeds', (1, -2), 'integers >= 0'), ('seeds', (1, 1), 'twice'), ('lrs', (0.0,), '> 0'),
    ('weight_decays', (-1.0,), '>= 0'), ('init_optimizer', True, 'set init_from'),
]


@pytest.mark.parametrize('field,value,needle', BAD)
def test_every_validation_error_names_its_field(field, value, needle):
  config = micro_config()
  config.unlock()
  *parents, leaf = field.split('.')
  node = config
  for k in parents:
    node = node[k]
  node[leaf] = value
  with pytest.raises(runs.ConfigError) as e:
    runs.validate(config)
  msg = str(e.value)
  assert msg.startswith(f'config.{field}:') and needle in msg and '\n' not in msg, msg


def test_both_sets_must_fit_in_p_squared():
  # (data_generator='reference' draws test pairs with replacement: tests/test_torch_import.py)
  config = micro_config(data_generator='fast', train_size=100, test_size=70, batch_size=16)
  with pytest.raises(runs.ConfigError,
                     match=r'config\.train_size: 100 training \+ 70 test examples exceed the 169'):
    runs.validate(config)
  runs.validate(micro_config(data_generator='fast', train_size=100, test_size=69))


def test_expand_names_runs_by_what_varies():
  config = micro_config(strategy='all', seeds=(1, 2), weight_decays=(0.1, 1.0))
  names = [r.name for r in runs.expand(config)]
  assert len(names) == 16 and names[0] == 'stride_seed1_wd0.1' and names[-1] == 'target_seed2_wd1'
  assert [r.name for r in runs.expand(micro_config(strategy='stride, target'))] == [
      'stride', 'target']


def test_a_failed_save_is_one_line_and_exits(tmp_path):
  """A checkpoint write failing for another reason than a full disk (here: its folder
  replaced by a file) stops with one line naming it and the traceback's file, exit 1, at
  once (no wait on Orbax's threads)."""
  proc = _main_patched(
      'from ordered_jax import checkpoint\n'
      'def save(*a, **k):\n'
      "  raise NotADirectoryError(20, 'Not a directory', '/w/stride/checkpoints/1.tmp')\n"
      'checkpoint.save = save\n', tmp_path)
  assert proc.returncode == 1, proc.stderr
  _one_line_error(proc, 'NotADirectoryError', '/w/stride/checkpoints/1.tmp', 'traceback in ')
  path = proc.stderr.strip().splitlines()[-1].rsplit('traceback in ', 1)[1]
  assert 'NotADirectoryError' in open(path).read()
  os.remove(path)


def test_a_save_failing_in_orbax_threads_is_one_line(tmp_path):
  """The checkpoint folder gone bad under a running batch (here: making the folder of the
  save after epoch 2 fails, in Orbax's own threads, as when the folder was replaced by a
  file): stderr holds the one error line and nothing else above INFO; Orbax's tracebacks
  from its threads are in the traceback file."""
  proc = _main_patched(
      'import os\n'
      'real = os.makedirs\n'
      'def makedirs(name, *a, **k):\n'
      "  if '3.orbax-checkpoint-tmp' in os.fspath(name):\n"
      "    raise NotADirectoryError(20, 'Not a directory', os.fspath(name))\n"
      '  return real(name, *a, **k)\n'
      'os.makedirs = makedirs\n', tmp_path, '--config.checkpoint_every=1')
  assert proc.returncode == 1, proc.stderr
  _one_line_error(proc, 'NotADirectoryError', '3.orbax-checkpoint-tmp', 'traceback in ')
  loud = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith('I')]
  assert len(loud) == 1, proc.stderr
  path = loud[0].rsplit('traceback in ', 1)[1]
  text = open(path).read()
  os.remove(path)
  assert "Orbax's own error reports" in text and 'orbax' in text.split('own error')[1]
  assert sorted(os.listdir(os.path.join(tmp_path, 'stride', 'checkpoints'))) == ['1', '2']


def test_orbax_error_reports_are_held_and_named_once(tmp_path, monkeypatch):
  """The filter main.py puts on absl's handler: Orbax's ERROR records and asyncio's reports
  of Orbax tasks are held, not printed; ``report`` writes them to one file named in one
  warning; everything else passes as before."""
  import logging  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import main  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  quiet = main._QuietLibraries()  # pylint: disable=protected-access

  def record(name, path, level, msg):
    return logging.LogRecord(name, level, path, 1, msg, None, None)

  orbax = f'{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}future.py'
  task = ('Task exception was never retrieved\nfuture: <Task finished coro=<async_deserialize'
          f'() defined at {os.sep}x{os.sep}orbax{os.sep}checkpoint{os.sep}s.py:394>>')
  assert not quiet.filter(record('absl', orbax, logging.ERROR, 'thread raised'))
  assert not quiet.filter(record('asyncio', '/usr/lib/asyncio/base_events.py',
                                 logging.ERROR, task))
  assert not quiet.filter(record('absl', orbax, logging.INFO, 'wrote a file'))
  assert quiet.filter(record('asyncio', '/usr/lib/asyncio/base_events.py', logging.ERROR,
                             'Task exception was never retrieved (someone else)'))
  assert quiet.filter(record('absl', '/w/ordered_jax/checkpoint.py', logging.WARNING,
                             'checkpoint at epoch 4 cannot be restored'))
  assert len(quiet.held) == 2
  said = []
  monkeypatch.setattr(main.logging, 'warning', lambda fmt, *a: said.append(fmt % a))
  quiet.report()
  quiet.report()  # nothing more held: nothing said
  assert len(said) == 1 and 'Orbax reported 2 error(s)' in said[0]
  path = said[0].rsplit(' ', 1)[1]
  text = open(path).read()
  assert 'thread raised' in text and 'async_deserialize' in text


def test_out_of_memory_is_not_a_full_disk():
  from ordered_jax import workdir  # pylint: disable=g-import-not-at-top
  assert workdir.disk_full(RuntimeError(
      'RESOURCE_EXHAUSTED: Out of memory allocating 68729668612 bytes.')) is None
  assert workdir.disk_full(ValueError(
      'RESOURCE_EXHAUSTED: Error writing local file "/d/x": No space left on device')) == (
          '/d/x',)


def test_orbax_leftovers_are_dropped_and_nothing_else(monkeypatch):
  """What a failed Orbax write or read leaves to sys.unraisablehook (TensorStore's 'Event
  loop is closed', Orbax's coroutines never awaited) is dropped; anything else is
  reported as before."""
  import types  # pylint: disable=g-import-not-at-top
  from ordered_jax import workdir  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  workdir.quiet_orbax_leftovers()
  scope = {}
  exec(compile('async def read():\n  pass\n', f'{os.sep}x{os.sep}orbax{os.sep}s.py', 'exec'),
       scope)
  exec(compile('async def mine():\n  pass\n', f'{os.sep}x{os.sep}ours.py', 'exec'), scope)
  theirs, ours = scope['read'](), scope['mine']()
  hit = lambda e, obj: sys.unraisablehook(types.SimpleNamespace(  # noqa: E731
      exc_value=e, object=obj, exc_type=type(e), exc_traceback=None, err_msg=None))
  hit(RuntimeError('Event loop is closed'), None)
  hit(ValueError('OUT_OF_RANGE'), theirs)
  assert not seen
  hit(ValueError('ours'), ours)
  hit(RuntimeError('something else'), None)
  assert [str(u.exc_value) for u in seen] == ['ours', 'something else']
  theirs.close()
  ours.close()


def test_exit_without_teardown_waits_writes_and_keeps_the_code(tmp_path):
  """main.py's exit skips only the interpreter's teardown: a non-daemon thread still
  writing is waited for, atexit handlers run, buffered output to a pipe arrives, the exit
  code is kept."""
  script = f'''
import atexit, os, sys, threading, time
sys.path.insert(0, {ROOT!r})
import main
def late():
  time.sleep(0.5)
  open(os.path.join({str(tmp_path)!r}, 'thread'), 'w').write('done')
threading.Thread(target=late).start()
atexit.register(lambda: open(os.path.join({str(tmp_path)!r}, 'atexit'), 'w').write('ran'))
print('buffered, no newline', end='')
main.exit_without_teardown(3)
print('never')
'''
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=120, env=env)
  assert proc.returncode == 3, proc.stderr
  assert proc.stdout == 'buffered, no newline'
  assert open(tmp_path / 'thread').read() == 'done'
  assert open(tmp_path / 'atexit').read() == 'ran'


def test_a_failure_in_an_extension_names_its_file_and_what_was_kept(tmp_path):
  """An exception from code outside the installed packages (an extension) is one line with
  its whole message, the file and line it came from, and no --resume advice when nothing
  was written; nor does an import failing before the run print a traceback."""
  (tmp_path / 'ext.py').write_text(
      'def run(*a, **k):\n'
      "  raise ValueError('Bad module.\\nConsider one of the following options:\\n- nnx.List')\n")
  proc = _main_patched('import ext\nfrom ordered_jax import experiment\n'
                       'experiment.run = ext.run\n', f'{tmp_path}/w', path=(ROOT, tmp_path))
  assert proc.returncode == 1, proc.stderr
  _one_line_error(proc, 'ValueError: Bad module. Consider one of the following options: - '
                  'nnx.List', f'{tmp_path}/ext.py:2)', 'no checkpoint was written')
  (tmp_path / 'probes').mkdir()  # a package that fails to import, found before ours
  (tmp_path / 'probes' / '__init__.py').write_text('x = 1\ny = undefined_name\n')
  proc = _main_patched('', f'{tmp_path}/w', path=(tmp_path, ROOT))
  assert proc.returncode == 1, proc.stderr
  _one_line_error(proc, "NameError: name 'undefined_name' is not defined",
                  f'{tmp_path}/probes/__init__.py:2)')
