"""--validate_checkpoints (issue 14 A4): a replay of a run matches its checkpoints bit for
bit and writes nothing; a checkpoint changed by one ulp in one value is reported at its
epoch and array; a workdir without this config's checkpoints is one line."""

import hashlib
import os
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from ordered_jax import checkpoint, experiment, train, validate
from tests.conftest import MICRO
from tests.test_cli import MICRO_FLAGS, _main, _one_line_error

STRATEGY = 'stride,random'


def _config(**kw):
  """configs/tiny.py with the micro overrides (what the CLI test passes as flags)."""
  c = tiny.get_config()
  for k, v in {**MICRO, 'strategy': STRATEGY, **kw}.items():
    c[k] = v
  c.lock()
  return c


def _tree(folder) -> dict:
  """Every file under ``folder``: (size, mtime, sha256), to show nothing was written."""
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(root, f)
      st = os.stat(p)
      out[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns,
                                         hashlib.sha256(open(p, 'rb').read()).hexdigest())
  return out


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('validate'))
  experiment.run(_config(), workdir, quiet='silent')
  return workdir


def test_replay_is_bit_identical_and_writes_nothing(saved_run):
  before = _tree(saved_run)
  checks = validate.replay(_config(), saved_run)
  assert _tree(saved_run) == before
  # keep_checkpoints=3 of the steps 1, 3, 5 and the completion checkpoint 6.
  assert sorted({c.step for c in checks}) == [3, 5, 6]
  assert sorted(c.run for c in checks) == sorted(STRATEGY.split(',') * 3)
  assert all(c.identical and c.intact for c in checks), checks
  lines = validate.summary(checks, STRATEGY.split(','))
  assert lines[0] == 'stride: bit-identical at all 3 checkpoints (after epochs 2, 4, 5)'


def _tamper(workdir: str, run: str, step: int, leaf: int) -> str:
  """Move one value of one parameter array of a checkpoint by one ulp and save it again
  (with a matching checksum, as a run that computed it would); returns the array's name."""
  d = os.path.join(workdir, run)
  like = train.run_slice(experiment.make_trainer(_config()).init_state([3], [1.0], [1.0]), 0)
  mgr = checkpoint.manager(d, keep=10)
  state, meta, _ = checkpoint.read(mgr, step, like)
  paths, treedef = jax.tree_util.tree_flatten_with_path(state.params)
  arrays = [np.array(x) for _, x in paths]
  flat = arrays[leaf].reshape(-1)
  flat[1] = np.nextafter(flat[1], np.float32(np.inf))
  state = state.replace(params=jax.tree.unflatten(treedef, arrays))
  checkpoint.save(mgr, step, state, meta)
  mgr.wait_until_finished()
  mgr.close()
  return 'params.' + validate._name(paths[leaf][0])  # pylint: disable=protected-access


def test_a_changed_checkpoint_is_named_by_epoch_and_array(saved_run, tmp_path):
  """Through the command: exit 1, each checkpoint's line, the run's first difference."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(saved_run, workdir)
  name = _tamper(workdir, 'random', 5, leaf=2)
  proc = _main('--config=configs/tiny.py', f'--workdir={workdir}', *MICRO_FLAGS,
               f'--config.strategy={STRATEGY}', '--validate_checkpoints')
  assert proc.returncode == 1, proc.stderr[-2000:]
  out = proc.stdout.splitlines()
  assert 'checkpoint after epoch 2: stride identical; random identical' in out
  assert 'checkpoint after epoch 5: stride identical; random identical' in out
  line = next(l for l in out if l.startswith('checkpoint after epoch 4:'))
  assert line.startswith(f'checkpoint after epoch 4: stride identical; random DIFFERS in {name} '
                         '(1 of ') and 'max |difference|' in line and 'checksum' not in line
  assert 'stride: bit-identical at all 3 checkpoints (after epochs 2, 4, 5)' in out
  assert any(l.startswith(f'random: differs first at the checkpoint after epoch 4, in {name} (')
             and l.endswith('; 1 of 3 checkpoints differ') for l in out), out
  _one_line_error(proc, '1 of 2 run(s) differ', 'random')


def test_damaged_files_are_named_as_such():
  bad = validate.Check('random', 5, 'params.w', '1 of 4 values differ', intact=False)
  ok = validate.Check('stride', 5, intact=True)
  assert validate.step_line([ok, bad]) == (
      'checkpoint after epoch 4: stride identical; random DIFFERS in params.w (1 of 4 values '
      'differ) -- its files fail their checksum: they were changed after being written')
  assert 'fail their checksum' in validate.summary([bad], ['random'])[0]
  assert validate.summary([ok], ['stride']) == [
      'stride: bit-identical at its one checkpoint (after epoch 4)']


def test_no_run_and_another_config_are_one_line(saved_run, tmp_path):
  with pytest.raises(experiment.WorkdirError, match='no run of this config in'):
    validate.check_workdir(_config(), str(tmp_path), experiment.runs.expand(_config()))
  with pytest.raises(experiment.WorkdirError, match=r'config.lr differs .* \(0.001 -> 0.002\)'):
    validate.check_workdir(_config(lr=0.002), saved_run,
                           experiment.runs.expand(_config(lr=0.002)))
  os.makedirs(tmp_path / 'stride')
  _one_line_error(_main('--config=configs/tiny.py', f'--workdir={tmp_path}', *MICRO_FLAGS,
                        '--validate_checkpoints'), 'has no checkpoints to compare with')
  _one_line_error(_main('--config=configs/tiny.py', f'--workdir={tmp_path}',
                        '--validate_checkpoints', '--resume'), 'cannot be combined with --resume')
