"""ordered-jax: train transformers on modular arithmetic under different data orderings.

This file is deliberately thin: it parses flags, sets the determinism and precision
flags before JAX starts, and calls ``ordered_jax.experiment.run``.

  python main.py --config=configs/tiny.py --workdir=output
  python main.py --config=configs/paper.py --workdir=output/paper
  python main.py --config=configs/stride.py --config.epochs=100 --resume
"""

import os
import re
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
_QUIET = flags.DEFINE_bool('quiet', False, 'No progress bar (for scripts and logs).')
_RERUN = flags.DEFINE_string('rerun', '', "Sweeps: restart the runs matching 'key=values', "
                             "e.g. --rerun='seed=1,2;weight_decay=0.1' (docs/sweeps.md).")
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process job (jax.distributed.initialize): SLURM and '
    'other launchers are detected; else give --coordinator, --num_processes, --process_id.')
_COORDINATOR = flags.DEFINE_string('coordinator', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes-1.')
flags.mark_flags_as_required(['config'])


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl flag parsing with one-line errors (ml_collections raises for unknown keys)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:  # a --config.<key> the config does not have
    key = str(e).strip('"\'')
    arg = next((a for a in argv if re.match(rf'--config\.(\w+\.)*{re.escape(key)}\b', a)), key)
    _fail(f'{arg.split("=")[0]}: unknown config key {key!r} (see configs/default.py for the '
          'fields)')
  except (ValueError, TypeError) as e:
    _fail(str(e).splitlines()[0])


class _QuietLibraries:
  """Drops INFO/DEBUG records of Orbax (it logs every file it writes) and of JAX internals."""

  NOISY = (f'{os.sep}orbax{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}')

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _CONFIG.value
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
  from ordered_jax import experiment, runs, sweep, sweeper  # pylint: disable=g-import-not-at-top
  import probes  # pylint: disable=g-import-not-at-top
  try:
    if sweeper.is_sweep(config):
      if _RESUME.value:
        _fail('--resume: a sweep continues by itself; run the same command again')
      table = sweeper.run(config, _WORKDIR.value, probes=probes.build, rerun=_RERUN.value,
                          overwrite=_OVERWRITE.value, quiet=_QUIET.value)
      logging.info('sweep results: %s', table)
      return
    if _RERUN.value:
      _fail('--rerun applies to sweeps (config.sweep.grid / config.sweep.zip)')
    runs.validate(config)
    config = runs.resolve(config)  # what will run (strategy resonant sizes its own data)
    summaries = experiment.run(config, _WORKDIR.value, resume=_RESUME.value,
                               overwrite=_OVERWRITE.value, quiet=_QUIET.value,
                               probes=probes.build(config))
  except (runs.ConfigError, experiment.WorkdirError, sweep.SweepError) as e:
    _fail(str(e))
  except experiment.Interrupted as e:
    print(f'{e}', file=sys.stderr)
    sys.exit(128 + e.signum)
  for s in summaries:
    g = s['grokking']
    logging.info('%s: final val %.2f%% train %.2f%%, memorised at %s, generalised at %s',
                 s['run'], s['final_eval']['validation_accuracy'],
                 s['final_eval']['training_accuracy'], g['memorization_epoch'],
                 g['generalization_epoch'])


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
