"""Bad input, tried as an adversary would (issue 19). Every case is one line on stderr that
names the field, flag or file at fault, a non-zero exit, no traceback, and the workdir as
it was. Table-driven: a new field or flag gets a row here."""

import hashlib
import os
import re
import subprocess
import sys
import time

import pytest

from analysis import __main__ as analysis_cli
from tests.conftest import MICRO, ROOT

MICRO_FLAGS = [f'--config.{k}={v}' for k, v in MICRO.items()]
TINY = '--config=configs/tiny.py'
SWEEP = [TINY, *MICRO_FLAGS, '--config.sweep.grid.seed=0,1']


CONFIG_FILES = {
    'bad.py': 'def get_config(:\n',
    'noget.py': 'x = 1\n',
    'raises.py': 'def get_config():\n  raise RuntimeError("boom")\n',
    'number.py': 'def get_config():\n  return 5\n',
    'remirror.py': ('import ml_collections\nfrom configs import tiny\nfrom ordered_jax import '
                    'sweep\ndef get_config():\n  c = tiny.get_config()\n  c.sweep.grid.nope = '
                    "ml_collections.ConfigDict(dict(x='1,2'))\n  return sweep.remirror(c)\n"),
}


# (id, main.py arguments ({tmp} = a scratch folder, {w} = the workdir), what the one line
#  must name, files put in the workdir first)
MAIN = [
    # The config file.
    ('config-missing', ['--config=configs/nope.py'], '--config=configs/nope.py', {}),
    ('config-syntax', ['--config={tmp}/bad.py'], 'not a Python config file', {}),
    ('config-not-python', ['--config=README.md'], '--config=README.md', {}),
    ('config-no-get_config', ['--config={tmp}/noget.py'], 'get_config', {}),
    ('config-raises', ['--config={tmp}/raises.py'], 'RuntimeError: boom', {}),
    ('config-not-a-configdict', ['--config={tmp}/number.py'], 'ConfigDict', {}),
    ('config-remirror-unknown', ['--config={tmp}/remirror.py'],
     'config.sweep.grid.nope.x: not a field of the config', {}),
    ('unknown-key', [TINY, '--config.bogus=1'], 'config.bogus: unknown key', {}),
    ('unknown-nested-key', [TINY, '--config.probes.nmes=x'],
     'config.probes.nmes: unknown key; did you mean probes.names?', {}),
    # Values.
    ('precision', [TINY, '--config.matmul_precision=bogus'], 'config.matmul_precision', {}),
    ('seed-64-bit', [TINY, '--config.seed=18446744073709551616'], 'config.seed', {}),
    ('seed-33-bit', [TINY, '--config.seed=8589934592'], 'config.seed', {}),
    ('data-seed', [TINY, '--config.data_seed=8589934592'], 'config.data_seed', {}),
    ('seeds', [TINY, '--config.seeds=(1,8589934592)'], 'config.seeds', {}),
    ('epochs-int32', [TINY, '--config.epochs=2147483648'], 'config.epochs', {}),
    ('stop-after', [TINY, '--config.stop_after=401'], 'config.stop_after: must be <= 400', {}),
    ('stop-after-negative', [TINY, '--config.stop_after=-1'], 'config.stop_after', {}),
    ('steps-int32', [TINY, '--config.epochs=200000000'], 'config.epochs', {}),
    ('lr-inf', [TINY, '--config.lr=inf'], 'config.lr', {}),
    ('lr-nan', [TINY, '--config.lr=nan'], 'config.lr', {}),
    ('weight-decay-inf', [TINY, '--config.weight_decay=inf'], 'config.weight_decay', {}),
    ('adam-eps-inf', [TINY, '--config.adam_eps=inf'], 'config.adam_eps', {}),
    ('lambda-inf', [TINY, '--config.grokfast.lamb_ema=inf'], 'config.grokfast.lamb_ema', {}),
    ('lrs-inf', [TINY, '--config.lrs=(0.1,inf)'], 'config.lrs', {}),
    # Sizes: refused from the estimate, before anything is allocated.
    ('embed-dim', [TINY, '--config.embed_dim=1000000'], 'config.embed_dim: needs about', {}),
    ('mlp-dim', [TINY, '--config.mlp_dim=100000000000'], 'config.mlp_dim: needs about', {}),
    ('grokfast-window', [TINY, '--config.grokfast.kind=ma', '--config.grokfast.window=100000000'],
     'config.grokfast.window: needs about', {}),
    ('train-size', [TINY, '--config.p=46337', '--config.train_size=1000000000'],
     'config.train_size: needs about', {}),
    ('layers', [TINY, '--config.layers=100000'], 'config.layers', {}),
    # Orderings' own fields.
    ('order-file-missing', [TINY, '--config.strategy=file', '--config.order_file={tmp}/no.npy'],
     'config.order_file', {}),
    ('order-file-corrupt', [TINY, '--config.strategy=file', '--config.order_file={w}/o.npy'],
     'config.order_file', {'o.npy': 'not a numpy file'}),
    ('curriculum-direction', [TINY, '--config.strategy=curriculum',
                              '--config.curriculum.direction=up'], 'config.curriculum.direction',
     {}),
    # The workdir's state on --resume.
    ('print-every', [TINY, '--print_every=-1'], '--print_every: must be >= 0', {}),
    ('live-and-quiet', [TINY, '--live', '--quiet'], '--live: cannot be combined with --quiet', {}),
    ('resume-nothing', [TINY, '--resume'], '--resume: no run', {}),
    ('resume-and-overwrite', [TINY, '--resume', '--overwrite'], '--overwrite', {}),
    ('resume-config-missing', [TINY, '--resume'], 'experiment_config.json',
     {'stride/checkpoints/1/x': ''}),
    ('resume-config-garbage', [TINY, '--resume'], 'experiment_config.json',
     {'stride/experiment_config.json': '{"lr": 1', 'stride/checkpoints/1/x': ''}),
    ('resume-config-not-object', [TINY, '--resume'], 'experiment_config.json',
     {'stride/experiment_config.json': '[1, 2]', 'stride/checkpoints/1/x': ''}),
    # Sweeps.
    ('sweep-json-garbage', SWEEP, 'sweep.json', {'sweep.json': '{not json'}),
    ('sweep-json-shape', SWEEP, 'sweep.json', {'sweep.json': '[]'}),
    ('results-garbage', SWEEP, 'results.parquet', {'results.parquet': 'PAR1 not a table'}),
    ('sweep-millions', [TINY, *MICRO_FLAGS, '--config.sweep.grid.seed=0..2000',
                        '--config.sweep.grid.lr=0.001..0.1..0.0001'], 'config.sweep.grid', {}),
    ('rerun-matches-nothing', [*SWEEP, '--rerun=seed=7'], '--rerun', {}),
    ('rerun-blank', [*SWEEP, '--rerun= '], '--rerun', {}),
    ('sweep-output-setting', [*SWEEP, '--config.sweep.grid.checkpoint_every=1,2'],
     'config.sweep.grid.checkpoint_every: an output setting', {}),
    ('probe-memory-in-a-group', [TINY, *MICRO_FLAGS, '--config.probes.group=full',
                                 '--config.probes.curvature.lanczos_steps=100000000'],
     'config.probes.curvature.lanczos_steps: needs about', {}),
    ('sweep-resume', [*SWEEP, '--resume'], '--resume', {}),
]


def _snapshot(folder):
  """{path: content hash} of every file under ``folder`` (None if it does not exist)."""
  if not os.path.exists(folder):
    return None
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, folder)] = hashlib.sha1(open(p, 'rb').read()).hexdigest()
  return out


def _one_line(proc, needle):
  assert proc.returncode not in (0, None), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert needle in errors[0], errors[0]
  return errors[0]


def _main(*args, timeout=240, **kw):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, **kw)


# Runs every MAIN case as `main.py <args>` in a child forked from one process that has
# imported main.py and the library but not started JAX's backend (fork-safe): the same
# code path as a fresh process, without paying the imports 40 times.
DRIVER = """
import json, os, sys
sys.path.insert(0, {root!r})
os.chdir({root!r})
sys.argv = [{main!r}]
import main
import ordered_jax.experiment, ordered_jax.sweeper, probes  # noqa: F401
from absl import app
results = {{}}
for name, argv, err in json.load(open({cases!r})):
  pid = os.fork()
  if pid == 0:
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    sys.argv = [{main!r}] + argv
    try:
      app.run(main.main, flags_parser=main._parse_flags)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: B036
      import traceback
      traceback.print_exc()
      code = 99
    sys.stderr.flush()
    os._exit(code)
  _, status = os.waitpid(pid, 0)
  results[name] = os.waitstatus_to_exitcode(status)
print(json.dumps(results))
"""


@pytest.fixture(scope='module')
def main_results(tmp_path_factory):
  """{case id: (exit code, stderr, workdir before, workdir after)} of every MAIN case."""
  import json  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp('bad')
  cases, before = [], {}
  for name, args, _, files in MAIN:
    tmp = base / name
    tmp.mkdir()
    for f, text in CONFIG_FILES.items():
      (tmp / f).write_text(text)
    workdir = tmp / 'w'
    workdir.mkdir()
    for f, text in files.items():
      (workdir / f).parent.mkdir(parents=True, exist_ok=True)
      (workdir / f).write_text(text)
    before[name] = _snapshot(str(workdir))
    argv = [a.format(tmp=tmp, w=workdir) for a in args] + [f'--workdir={workdir}', '--quiet']
    cases.append((name, argv, str(tmp / 'stderr')))
  (base / 'cases.json').write_text(json.dumps(cases))
  proc = subprocess.run([sys.executable, '-c', DRIVER.format(
      root=ROOT, main=os.path.join(ROOT, 'main.py'), cases=str(base / 'cases.json'))],
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  codes = json.loads(proc.stdout.strip().splitlines()[-1])
  return {name: (codes[name], (base / name / 'stderr').read_text(), before[name],
                 _snapshot(str(base / name / 'w'))) for name, *_ in MAIN}


@pytest.mark.parametrize('needle', [c[2] for c in MAIN], ids=[c[0] for c in MAIN])
def test_main_refuses_in_one_line(needle, main_results, request):
  code, err, before, after = main_results[request.node.callspec.id]
  line = _one_line(subprocess.CompletedProcess([], code, '', err), needle)
  assert code == 2, line
  assert after == before  # nothing written, nothing lost


def test_the_forking_driver_sees_what_a_fresh_process_sees(tmp_path):
  """One case through a plain `python main.py`, as a check on the driver."""
  proc = _main(TINY, '--config.lr=inf', f'--workdir={tmp_path}', '--quiet')
  assert _one_line(proc, 'config.lr: must be finite') and proc.returncode == 2


def _nested(path, depth=100_000):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write('{"epoch": 0, "training_metrics/loss": 1.0}\n')
    f.write('{"epoch": 1, "x": ' + '[' * depth + ']' * depth + '}\n')
    f.write('{"epoch": 2, "training_metrics/loss": 0.5}\n')


# (id, python -m analysis arguments, what the one line must name)
ANALYSIS = [
    ('nested-jsonl', ['report', '--workdir', '{w}'], 'nested too deeply'),
    ('nested-summary', ['report', '--workdir', '{s}'], 'nested too deeply'),
    ('dft-huge-train-size', ['dataset_dft', '--p', '46337', '--train-size', '2000000000'],
     '--train-size'),
    ('dft-huge-p', ['dataset_dft', '--p', '1000003'], '--p'),
    ('dft-many-batches', ['dataset_dft', '--p', '46337', '--train-size', '400000000',
                          '--batch-size', '1', '--generator', 'fast'], 'needs about'),
]


@pytest.mark.parametrize('args,needle', [c[1:] for c in ANALYSIS], ids=[c[0] for c in ANALYSIS])
def test_analysis_refuses_in_one_line(args, needle, tmp_path, capsys):
  runs = tmp_path / 'runs'
  _nested(str(runs / 'r' / 'r.jsonl'))
  summ = tmp_path / 'summ' / 'r'
  summ.mkdir(parents=True)
  (summ / 'summary.json').write_text('{"a": ' + '[' * 100_000 + ']' * 100_000 + '}')
  args = [a.format(w=runs, s=summ.parent) for a in args]
  with pytest.raises(SystemExit) as e:
    analysis_cli.main(args + ['--output-dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
  assert needle in err, err


REPORT = """
import resource, signal, sys
sys.path.insert(0, {root!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from analysis import __main__ as cli
cli.main(['report', '--workdir', {runs!r}, '--output-dir', {out!r}])
"""


def test_a_report_that_cannot_be_written_leaves_the_old_one(tmp_path):
  """A write that fails part-way (a full disk; here a file-size limit) ends in one line and
  leaves the previous report.html whole, and no partial file."""
  runs = tmp_path / 'runs' / 'r'
  runs.mkdir(parents=True)
  (runs / 'r.jsonl').write_text(''.join(
      f'{{"epoch": {e}, "training_metrics/loss": {1 / (e + 1)}, '
      f'"training_metrics/training_accuracy": {e}, '
      f'"training_metrics/validation_accuracy": {e / 2}}}\n' for e in range(50)))
  out = tmp_path / 'out'
  analysis_cli.main(['report', '--workdir', str(runs.parent), '--output-dir', str(out)])
  page = out / 'report' / 'report.html'
  old = page.read_bytes()
  assert len(old) > 20000  # the limit below cuts it
  proc = subprocess.run([sys.executable, '-c', REPORT.format(root=ROOT, runs=str(runs.parent),
                                                             out=str(out))],
                        capture_output=True, text=True, timeout=300)
  _one_line(proc, 'report')
  assert page.read_bytes() == old
  assert sorted(os.listdir(page.parent)) == ['report.html']


# -- one writer per run folder ----------------------------------------------------------

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from ordered_jax import workdir
with workdir.lock({workdir!r}, {names!r}):
  print('held', flush=True)
  time.sleep(600)
"""


def _holder(workdir, names):
  proc = subprocess.Popen([sys.executable, '-c', HOLD.format(root=ROOT, workdir=str(workdir),
                                                            names=names)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'held'
  return proc


def test_a_second_process_is_refused_until_the_holder_dies(tmp_path):
  """Item 1: while another process holds a run folder, main.py (plain, --resume or a
  sweep) refuses with one line naming its pid and host, and changes nothing; once the
  holder is killed (kill -9) the lock is free."""
  from ordered_jax import experiment, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  workdir.mkdir()
  holder = _holder(workdir, ['stride', 'sweep'])
  try:
    for extra in ([], ['--resume'], ['--config.sweep.grid.seed=0,1']):
      proc = _main(TINY, *MICRO_FLAGS, f'--workdir={workdir}', '--quiet', *extra)
      line = _one_line(proc, f'in use by process {holder.pid} on host ')
      assert os.path.join(str(workdir), 'sweep' if extra[1:] or 'sweep' in ''.join(extra)
                          else 'stride') in line
    assert sorted(os.listdir(workdir)) == ['.stride.lock', '.sweep.lock']
  finally:
    holder.kill()
    holder.wait()
  with workdir_lib.lock(str(workdir), ['stride']):  # released by the kill
    with pytest.raises(experiment.WorkdirError, match=f'in use by process {os.getpid()}'):
      with workdir_lib.lock(str(workdir), ['stride']):
        pass
  assert not os.path.exists(workdir / '.stride.lock')


@pytest.mark.slow
def test_two_real_runs_into_one_workdir(tmp_path):
  """Item 1 end to end: a second main.py started while the first trains is refused;
  after the first is killed with SIGKILL, --resume continues it."""
  args = [TINY, *MICRO_FLAGS, '--config.epochs=100000', f'--workdir={tmp_path}', '--quiet']
  first = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    rows = tmp_path / 'stride' / 'stride.jsonl'
    deadline = time.time() + 180
    while time.time() < deadline and not (rows.exists() and rows.read_text().count('\n') > 3):
      time.sleep(0.5)
    assert rows.exists(), 'the first run did not start training'
    line = _one_line(_main(*args), f'in use by process {first.pid}')
    assert 'stride' in line
    _one_line(_main(*args, '--resume'), f'in use by process {first.pid}')
  finally:
    first.kill()
    first.wait()
  # The lock went with the killed process: a --resume now gets as far as the config check
  # (here refused on purpose: a different epochs would change the schedule).
  _one_line(_main(*args, '--resume', '--config.epochs=99999'), 'config.epochs differs')


# -- interrupts and a full disk ------------------------------------------------------------

TWICE = """
import os, signal, sys
sys.path.insert(0, {root!r})
sys.argv[0] = {main!r}
from ordered_jax import sinks
real = sinks.JsonlSink.write
def write(self, epoch, metrics):
  real(self, epoch, metrics)
  if epoch == 1:
    os.kill(os.getpid(), signal.SIGINT)   # the first Ctrl-C: finish the epoch, checkpoint
    os.kill(os.getpid(), signal.SIGINT)   # the second: abort now
sinks.JsonlSink.write = write
import main
from absl import app
app.run(main.main, flags_parser=main._parse_flags)
"""


def test_a_second_ctrl_c_is_one_line_and_exit_130(tmp_path):
  """Item 12."""
  proc = subprocess.run(
      [sys.executable, '-c', TWICE.format(root=ROOT, main=os.path.join(ROOT, 'main.py')), TINY,
       *MICRO_FLAGS, f'--workdir={tmp_path}', '--quiet'],
      cwd=ROOT, capture_output=True, text=True, timeout=240)
  assert proc.returncode == 130, proc.stderr[-2000:]
  _one_line(proc, 'interrupted')


def _can_mount() -> bool:
  """Whether this process may mount a private tmpfs (root and unshare, Linux)."""
  try:
    return subprocess.run(['unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o size=64k tmpfs /mnt'],
                          capture_output=True, timeout=30).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


@pytest.mark.parametrize('size,kept', [('100k', 'no checkpoint was written'),
                                       ('400k', r'the checkpoint after epoch \d+ is kept')])
@pytest.mark.slow
def test_a_real_full_disk_is_one_line(size, kept, tmp_path):
  """Item 10 on a real disk (a tiny tmpfs): one line naming the path, the space needed and
  free, and what is kept; exit code 1; no partial checkpoint left. With room made,
  --resume finishes. Skipped where a tmpfs cannot be mounted."""
  if not _can_mount():
    pytest.skip('needs root and unshare to mount a tmpfs')
  cmd = ' '.join([sys.executable, os.path.join(ROOT, 'main.py'), TINY, *MICRO_FLAGS,
                  '--config.epochs=4', '--config.checkpoint_every=1', '--workdir=/mnt/w',
                  '--quiet'])
  proc = subprocess.run(
      ['unshare', '-m', 'sh', '-c',
       f'mount -t tmpfs -o size={size} tmpfs /mnt && {cmd}; e=$?; '
       'echo "left: $(ls /mnt/w/stride/checkpoints | tr "\\n" " ")"; '
       f'mount -o remount,size=20m /mnt && {cmd} --resume >&2 && echo resumed; exit $e'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert '/mnt/w/stride' in errors[0] and 'free' in errors[0] and 'needs about' in errors[0]
  assert re.search(kept, errors[0]) and '--resume' in errors[0]
  assert 'orbax-checkpoint-tmp' not in proc.stdout, proc.stdout
  assert 'resumed' in proc.stdout, proc.stderr[-3000:]
