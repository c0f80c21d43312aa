"""ordered-jax: train transformers on modular arithmetic under different data orderings.

This file is deliberately thin: it parses flags, sets the determinism and precision
flags before JAX starts, and calls ``ordered_jax.experiment.run``.

  python main.py --config=configs/tiny.py --workdir=output
  python main.py --config=configs/paper.py --workdir=output/paper
  python main.py --config=configs/stride.py --config.epochs=100 --resume
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/tiny.py; override fields with '
    '--config.<field>=<value>.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'output', 'Where the run folders are written.')
_RESUME = flags.DEFINE_bool('resume', False, 'Continue the runs of this config in --workdir '
                            'from their latest checkpoints.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Delete existing runs of this config in '
                               '--workdir and start again.')
_QUIET = flags.DEFINE_bool('quiet', False, 'No progress bar: one plain line every '
                           '--print_every epochs (what logs and pipes get anyway).')
_SILENT = flags.DEFINE_bool('silent', False, 'No progress output at all (warnings, errors '
                            'and the final lines only).')
_PRINT_EVERY = flags.DEFINE_integer('print_every', 0, 'Epochs between progress lines in '
                                    'logs, pipes and --quiet; 0 = about 50 lines a run.')
_LIVE = flags.DEFINE_bool('live', False, 'A full-screen live view (Rich): progress, and per run '
                          'loss, train/test accuracy, grokking status and the latest probe '
                          'headline values; plain lines when not on a terminal.')
_RERUN = flags.DEFINE_string('rerun', '', "Sweeps: restart the runs matching 'key=values', "
                             "e.g. --rerun='seed=1,2;weight_decay=0.1' (docs/sweeps.md).")
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process job (jax.distributed.initialize): SLURM and '
    'other launchers are detected; else give --coordinator, --num_processes, --process_id.')
_COORDINATOR = flags.DEFINE_string('coordinator', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes-1.')
_LIST = flags.DEFINE_bool('list', False, 'List the configs, tasks, models, orderings, '
                          'optimizers and schedules, then exit (no --config needed).')
_PROBES_LIST = flags.DEFINE_bool('probes_list', False, 'List every probe: group, cadence, '
                                 'cost, supported models and tasks; then exit.')
_PROBES_DESCRIBE = flags.DEFINE_string('probes_describe', None, 'Every metric key of probe '
                                       'NAME with its definition and reading; then exit.')
_VALIDATE = flags.DEFINE_bool(
    'validate_checkpoints', False, 'Train the config again in memory and compare every '
    'saved checkpoint of its runs in --workdir bit for bit (writes nothing; exit 1 if any '
    'differs).')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  if 'jax' in sys.modules and flags.FLAGS.is_parsed() and _DISTRIBUTED.value:
    # Exit at once: JAX's exit handler would wait at the job's shutdown barrier for peers
    # that wait for this process elsewhere; they see it gone at the next heartbeat.
    sys.stderr.flush()
    os._exit(2)  # pylint: disable=protected-access
  sys.exit(2)


def _config_path(argv) -> str | None:
  """The file of --config (``path`` or ``path:args``), if given."""
  for i, a in enumerate(argv):
    if a.startswith('--config='):
      return a.split('=', 1)[1].split(':', 1)[0]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return None


def _parse_flags(argv):
  """absl flag parsing with one-line errors (ml_collections raises for unknown keys, and
  runs the config file, which may be missing or broken)."""
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path):
    _fail(f'--config={path}: no such file (e.g. configs/tiny.py)')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    if 'Error whilst parsing config file' in lines[0] and len(lines) > 1:
      # get_config() raised: ml_collections appends the traceback; its last line says what.
      kind, _, what = lines[-1].partition(': ')
      _fail(what if what.startswith('config.') else
            f'--config={path}: loading it raised {kind.rsplit(".", 1)[-1]}: {what[:200]}')
    _fail(lines[0])
  except SyntaxError as e:  # the file is not Python (README.md) or has a typo
    _fail(f'--config={path}: not a Python config file ({e.msg}, line {e.lineno})')
  except (AttributeError, KeyError) as e:  # a --config.<key> the config does not have
    if "no attribute 'get_config'" in str(e):
      _fail(f'--config={path}: defines no get_config() (see configs/default.py)')
    from ordered_jax import keys  # pylint: disable=g-import-not-at-top  (no JAX import)
    _fail(keys.unknown_key_message(argv, keys.missing_key(e), keys.load_config_file(path)))
  except (ValueError, TypeError) as e:
    _fail(str(e).splitlines()[0])
  except Exception as e:  # pylint: disable=broad-except  (get_config() itself failed)
    _fail(f'--config={path}: loading it raised {type(e).__name__}: '
          f'{(str(e).splitlines() or [""])[0][:200]}')


def _load_config():
  """The parsed config, or one line naming --config."""
  try:
    config = _CONFIG.value
  except Exception as e:  # pylint: disable=broad-except  (ml_collections' deferred error)
    cause = e.__cause__ or e.__context__ or e
    why = [l.strip() for l in str(cause).splitlines() if l.strip()]
    _fail(f'--config={_config_path(sys.argv)}: cannot load it ({why[-1] if why else e})')
  import ml_collections  # pylint: disable=g-import-not-at-top
  if not isinstance(config, ml_collections.ConfigDict):
    _fail(f'--config={_config_path(sys.argv)}: get_config() must return a ConfigDict; got '
          f'{type(config).__name__}')
  return config


class _QuietLibraries:
  """Drops INFO/DEBUG records of Orbax (it logs every file it writes) and of JAX internals,
  and Orbax's tracebacks of a save that ran out of space (the run ends with one line
  saying so), and its warnings that a checkpoint folder opened read-only is read-only.
  Orbax's other error reports (tracebacks from its threads and unretrieved asyncio tasks,
  of a failure the run also meets: a save it stops on, a damaged checkpoint it falls back
  from) are held: a failed run adds them to its traceback file, one that ends well writes
  them to a file it names in one warning line (``report``)."""

  NOISY = (f'{os.sep}orbax{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}')
  ORBAX = f'{os.sep}orbax{os.sep}'
  FULL = ('RESOURCE_EXHAUSTED', 'No space left on device')
  READ_ONLY = ('read_only=True', 'is read only=')

  def __init__(self):
    self.held: list[str] = []  # Orbax's error reports, formatted

  def report(self) -> None:
    """Write the held reports to a file and name it in one warning (none held: nothing)."""
    if not self.held:
      return
    import tempfile  # pylint: disable=g-import-not-at-top
    fd, path = tempfile.mkstemp(prefix='ordered_jax_orbax_', suffix='.txt')
    with os.fdopen(fd, 'w') as f:
      f.write('\n\n'.join(self.held) + '\n')
    logging.warning('Orbax reported %d error(s) of its own along the way (a damaged '
                    'checkpoint it fell back from is one); they are in %s',
                    len(self.held), path)
    self.held = []

  def filter(self, record) -> bool:
    orbax = self.ORBAX in record.pathname
    if orbax and any(f in str(record.msg) or f in str(record.exc_info and record.exc_info[1])
                     for f in self.FULL):
      return False
    if orbax and any(f in str(record.msg) for f in self.READ_ONLY):
      return False
    if record.levelno >= 40 and (orbax or (record.name == 'asyncio'
                                           and self.ORBAX in record.getMessage())):
      import logging as std_logging  # pylint: disable=g-import-not-at-top
      self.held.append(std_logging.Formatter('%(asctime)s %(pathname)s:%(lineno)d\n'
                                             '%(message)s').format(record))
      return False
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def _validate(config, probes) -> None:
  """``--validate_checkpoints``: a line per compared checkpoint, one per run; exit 1 if
  any checkpoint differs from the replay (ordered_jax.validate)."""
  from ordered_jax import runs, validate  # pylint: disable=g-import-not-at-top
  runs.validate(config)
  config = runs.resolve(config)
  batch = runs.expand(config)
  dirs = validate.check_workdir(config, _WORKDIR.value, batch)
  note = validate.environment_note(dirs)
  if note:
    print(note, flush=True)
  print(f'replaying {len(batch)} run(s) of {_config_path(sys.argv)} against the checkpoints '
        f'in {_WORKDIR.value}', flush=True)
  checks = validate.replay(config, _WORKDIR.value, probes=probes.build(config),
                           report=lambda here: print(validate.step_line(here), flush=True))
  if not checks:
    _fail(f'--validate_checkpoints: no checkpoint in {_WORKDIR.value} within the epochs '
          'replayed (config.stop_after stops before the first)')
  for line in validate.summary(checks, [r.name for r in batch]):
    print(line, flush=True)
  bad = sorted({c.run for c in checks if not c.identical})
  if bad:
    print(f'error: {len(bad)} of {len(batch)} run(s) differ from their checkpoints: '
          f'{", ".join(bad)}', file=sys.stderr)
    sys.exit(1)


def _failed_run(e: Exception, held: list[str]) -> None:
  """Anything else that stopped a run (a write Orbax could not do, memory the estimate
  missed, a bug): one line, the traceback in a file, exit 1 at once (Orbax's threads,
  left waiting on the failed save, would hold the interpreter's shutdown forever). The
  checkpoints already committed are whole (each is written aside, then renamed). ``held``:
  Orbax's own error reports, added to the file."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  fd, path = tempfile.mkstemp(prefix='ordered_jax_error_', suffix='.txt')
  with os.fdopen(fd, 'w') as f:
    traceback.print_exception(e, file=f)
    if held:
      f.write("\nOrbax's own error reports:\n\n" + '\n\n'.join(held) + '\n')
  text = ' '.join(line.strip() for line in str(e).strip().splitlines() if line.strip())
  first = text[:300] + (' ...' if len(text) > 300 else '')
  what = ('out of memory (the memory estimate missed this config; lower its sizes)'
          if 'Out of memory' in str(e) or isinstance(e, MemoryError) else
          f'{type(e).__name__}: {first}{_where(e)}')
  kept = ('the last complete checkpoint is kept (continue with --resume once the cause is '
          'fixed)' if _has_checkpoints(_WORKDIR.value) else 'no checkpoint was written')
  print(f'error: {what}; {kept}; traceback in {path}', file=sys.stderr)
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def _where(e: Exception) -> str:
  """' (file:line)' of the innermost frame of ``e`` in code outside the installed
  packages and the standard library (the project's or an extension's), or ''."""
  import sysconfig  # pylint: disable=g-import-not-at-top
  import traceback  # pylint: disable=g-import-not-at-top
  libs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ('purelib', 'platlib', 'stdlib')}
  for frame in reversed(traceback.extract_tb(e.__traceback__)):
    path = os.path.realpath(frame.filename)
    if os.path.isfile(path) and not any(path.startswith(lib + os.sep) for lib in libs):
      shown = os.path.relpath(path) if path.startswith(os.getcwd() + os.sep) else path
      return f' ({shown}:{frame.lineno})'
  return ''


def _has_checkpoints(workdir: str) -> bool:
  """Whether ``workdir`` holds a run's (or a sweep run's) checkpoint folder."""
  import glob  # pylint: disable=g-import-not-at-top
  for pattern in ('*/checkpoints', 'runs/*/checkpoints'):
    for d in glob.glob(os.path.join(glob.escape(workdir), pattern)):
      try:
        if os.path.isdir(d) and os.listdir(d):
          return True
      except OSError:
        continue
  return False


def main(argv):
  """Exit codes: 0 done, 2 bad input or workdir state, 1 a full disk or another failure (with
  --validate_checkpoints: a checkpoint that differs), 130/143 interrupted
  (a second Ctrl-C aborts at once, also with one line)."""
  quiet = _QuietLibraries()
  logging.get_absl_handler().addFilter(quiet)
  try:
    _main(argv, quiet)
    quiet.report()
  except KeyboardInterrupt:
    if _VALIDATE.value:
      print('error: interrupted; --validate_checkpoints stopped (it wrote nothing)',
            file=sys.stderr)
    else:
      print('error: interrupted (a second Ctrl-C aborts without a new checkpoint); the last '
            'checkpoint is kept, continue with --resume', file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)  # pylint: disable=protected-access  (no cleanup traceback from threads)
  except Exception as e:  # pylint: disable=broad-except  (an extension that fails to import)
    _failed_run(e, quiet.held)


def _main(argv, quiet: _QuietLibraries):
  from ordered_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.quiet_orbax_leftovers()
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if _LIST.value or _PROBES_LIST.value or _PROBES_DESCRIBE.value is not None:
    from ordered_jax import listing  # pylint: disable=g-import-not-at-top
    try:
      listing.show('all' if _LIST.value else 'probes' if _PROBES_LIST.value else 'probe',
                   _PROBES_DESCRIBE.value or '')
    except ValueError as e:
      flag = ('--list' if _LIST.value else '--probes_list' if _PROBES_LIST.value else
              '--probes_describe')  # a broken registration shows in every listing
      _fail(f'{flag}: {e}')
    return
  if _CONFIG.value is None and _config_path(sys.argv) is None:
    _fail('--config: required, e.g. --config=configs/tiny.py (python main.py --list shows '
          'the configs)')
  config = _load_config()
  if _VALIDATE.value:
    for flag, on in (('--resume', _RESUME.value), ('--overwrite', _OVERWRITE.value),
                     ('--rerun', bool(_RERUN.value)), ('--distributed', _DISTRIBUTED.value)):
      if on:
        _fail(f'--validate_checkpoints: cannot be combined with {flag} (it only reads the '
              'workdir, in one process)')
  for flag, value in (('--coordinator', _COORDINATOR.value),
                      ('--num_processes', _NUM_PROCESSES.value),
                      ('--process_id', _PROCESS_ID.value)):
    if value is not None and not _DISTRIBUTED.value:
      _fail(f'{flag}: only with --distributed (a multi-process job); got {flag}={value}')
  if _PRINT_EVERY.value < 0:
    _fail(f'--print_every: must be >= 0 (0 = about 50 lines a run); got {_PRINT_EVERY.value}')
  if _LIVE.value and (_QUIET.value or _SILENT.value):
    _fail(f'--live: cannot be combined with --{"quiet" if _QUIET.value else "silent"}')
  mode = 'silent' if _SILENT.value else 'live' if _LIVE.value else _QUIET.value
  progress = dict(quiet=mode, print_every=_PRINT_EVERY.value)
  from ordered_jax import runs  # pylint: disable=g-import-not-at-top
  for field, ok in (('matmul_precision', lambda v: v in runs.PRECISIONS),
                    ('deterministic', lambda v: isinstance(v, bool))):
    if field in config and not ok(config[field]):  # read before JAX starts: check them now
      _fail(f'config.{field}: must be '
            f'{"one of " + ", ".join(runs.PRECISIONS) if field != "deterministic" else "true or false"}'
            f'; got {config[field]!r}')
  # Before any JAX computation: XLA reads its flags once, at backend start-up.
  from ordered_jax import environment  # pylint: disable=g-import-not-at-top
  environment.configure(
      deterministic=bool(config.get('deterministic', True)),
      matmul_precision=str(config.get('matmul_precision', 'highest')),
      compilation_cache=os.environ.get(
          'ORDERED_JAX_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'ordered_jax')))
  if _DISTRIBUTED.value:  # before any computation: every process then sees every device
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU-only jobs
    try:
      jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except (RuntimeError, ValueError) as e:
      _fail(f'--distributed: {str(e).splitlines()[0]}')
  from ordered_jax import experiment, results, sweep, sweeper  # pylint: disable=g-import-not-at-top
  import probes  # pylint: disable=g-import-not-at-top
  try:
    if _VALIDATE.value:
      if sweeper.is_sweep(config):
        _fail('--validate_checkpoints: a sweep is not supported; validate its runs one '
              'config at a time')
      _validate(config, probes)
      return
    if sweeper.is_sweep(config):
      if _RESUME.value:
        _fail('--resume: a sweep continues by itself; run the same command again without it '
              '(a sweep capped by config.stop_after: with a larger or no cap)')
      table = sweeper.run(config, _WORKDIR.value, probes=probes.build, rerun=_RERUN.value,
                          overwrite=_OVERWRITE.value, **progress)
      logging.info('sweep results: %s', table)
      return
    if _RERUN.value:
      _fail('--rerun applies to sweeps (config.sweep.grid / config.sweep.zip)')
    runs.validate(config)
    config = runs.resolve(config)  # what will run (strategy resonant sizes its own data)
    summaries = experiment.run(config, _WORKDIR.value, resume=_RESUME.value,
                               overwrite=_OVERWRITE.value, **progress,
                               probes=probes.build(config))
  except experiment.DiskFull as e:
    print(f'error: {e}', file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access  (Orbax's threads would print at exit)
  except (runs.ConfigError, experiment.WorkdirError, sweep.SweepError,
          results.ResultsError) as e:
    _fail(str(e))
  except experiment.Interrupted as e:
    print(f'{e}', file=sys.stderr)
    sys.exit(128 + e.signum)
  except Exception as e:  # pylint: disable=broad-except
    _failed_run(e, quiet.held)
  for s in summaries:
    g = s['grokking']
    if 'validation_loss' in s['final_eval']:  # a regression (task teacher:...)
      logging.info('%s: final test loss %.4g, training loss %.4g', s['run'],
                   s['final_eval']['validation_loss'], s['final_eval']['training_loss'])
      continue
    logging.info('%s: final val %.2f%% train %.2f%%, memorised at %s, generalised at %s',
                 s['run'], s['final_eval']['validation_accuracy'],
                 s['final_eval']['training_accuracy'], g['memorization_epoch'],
                 g['generalization_epoch'])


def exit_without_teardown(code: int) -> None:
  """Exit as the interpreter would, minus its teardown: wait for the threads it waits for
  (a checkpoint being written), run the ``atexit`` handlers (logging's flush among them),
  flush the streams, then ``os._exit``. Freeing the modules JAX, Flax and Orbax loaded
  takes 0.3-0.5 s at every exit on a CPU (docs/benchmarks.md) and writes nothing."""
  import atexit  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  for t in threading.enumerate():
    if t is not threading.current_thread() and not t.daemon:
      t.join()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
      pass
  os._exit(code)  # pylint: disable=protected-access


if __name__ == '__main__':
  try:
    app.run(main, flags_parser=_parse_flags)
  except SystemExit as done:
    if done.code is None or (isinstance(done.code, int) and not isinstance(done.code, bool)):
      exit_without_teardown(done.code or 0)
    raise
