"""Every command in the README's and docs' shell blocks works (issue 14 B2).

Two parts. The static one: each command names real things (main.py's config files, flags
and --config.<key> overrides, analysis tools and their options, no module outside
requirements.txt). The executed one: each command runs, shortened, and exits 0.

How they run. Every bash block gets its own sandbox, a folder that links the repository's
code (``main.py``, ``configs/``, ...) and holds its own ``output/`` and ``docs/``; its
commands run there in order (``&`` in the background), as a user would type them.
Shortening appends arguments: main.py gets what it does not set itself of one epoch of the
configured schedule (``--config.stop_after=1``) and the test suite's micro sizes
(``tests.conftest.MICRO``), and a sweep its first seed and first two zipped points; a
script gets its small options (``SHORTEN``). What a block reads but does not make is put
there first: ``output/<name>`` is a copy of one shortened four-ordering tiny run (README's
``output/tiny-all``), ``ExperimentOneData`` and bare ``*.pt`` files are the reference's own
files in tests/data/reference/v3 (at their sizes: p 11, d 4, 2 epochs), and ``docs/...``
inputs are copies of the repository's. One driver process imports JAX once and forks a
child per command (``runpy``: the command's own entry point, with its argv), so a command
costs no JAX start-up, and runs two blocks at a time; a block with a background job
(processes that talk to each other) runs whole processes instead, its coordinator port made
a free one. ``SKIP`` names the few commands that cannot run here, each with its reason.
"""

import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from ordered_jax import keys
from tests.conftest import MICRO, ROOT

FILES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
REFERENCE = os.path.join(ROOT, 'tests', 'data', 'reference', 'v3')  # written by the reference


def _block_commands(block: str) -> list[str]:
  """The python commands of one bash block in order: continuation lines joined, comments
  dropped, ``a && b`` split, a ``nice -n N`` prefix removed."""
  out = []
  for line in block.replace('\\\n', ' ').splitlines():
    line = line.split(' # ')[0].strip()
    if line.startswith('#'):
      continue
    for part in line.split('&&'):
      part = re.sub(r'^nice -n \d+ ', '', part.strip())
      if part.startswith('python'):
        out.append(part)
  return out


def _blocks():
  """[(file relative to the root, [commands])] per bash block with a python command."""
  out = []
  for path in FILES:
    for block in re.findall(r'```bash\n(.*?)```', open(path).read(), re.S):
      cmds = _block_commands(block)
      if cmds:
        out.append((os.path.relpath(path, ROOT), cmds))
  return out


BLOCKS = _blocks()
COMMANDS = [(where, cmd) for where, cmds in BLOCKS for cmd in cmds]


def test_there_are_commands():
  assert len(COMMANDS) > 20


@pytest.mark.parametrize('where,cmd', COMMANDS, ids=[f'{w}:{c[:60]}' for w, c in COMMANDS])
def test_command_names_real_things(where, cmd):
  import main  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = [a for a in shlex.split(cmd) if a != '&']  # a background job in a block
  assert 'pandas' not in cmd, f'{where}: pandas is not in requirements.txt'
  if argv[1] == 'main.py':
    del main
    known = set(flags.FLAGS)
    config = None
    for a in argv[2:]:
      name = a.lstrip('-').split('=', 1)[0]
      if name.startswith('config.'):
        path = name[len('config.'):]
        if config is not None and not path.startswith('sweep.'):
          assert path in keys.paths(config), f'{where}: {cmd}: unknown key {path}'
      elif name == 'config':
        file = a.split('=', 1)[1]
        assert os.path.isfile(os.path.join(ROOT, file)), f'{where}: {file}'
        config = keys.load_config_file(os.path.join(ROOT, file))
        assert config is not None, file
      else:
        assert name in known or name.removeprefix('no') in known, f'{where}: --{name}'
  elif argv[1:3] == ['-m', 'analysis']:
    from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
    parser = cli.build_parser()
    args, unknown = parser.parse_known_args(argv[3:])
    assert not unknown, f'{where}: {cmd}: unknown options {unknown}'
    del args
  elif argv[1] == '-m':
    assert argv[2] in ('pytest', 'pip', 'probes.catalog'), cmd


# -- running them -----------------------------------------------------------------------------

# A command starting with one of these is not run here; keep this short (a test checks it).
SKIP = {
    'python -m pytest': 'the test suite itself, of which this test is a part',
    'python3 -m pip download': 'downloads wheels from PyPI (needs the network)',
    'python benchmarks/gpu_check.py': 'tests/test_gpu_check.py runs it (--dry_run) already, '
                                      'about 50 s on 2 cores',
    'python benchmarks/throughput.py': 'a benchmark: even shortened (--presets sweep-tiny '
                                        '--runs 1 --epochs 1) it times a 2048 x 2048 matmul '
                                        'peak and a p 59 model: 80 s on the shared 2-core machine',
    'python benchmarks/probes.py': 'a benchmark: no option makes it smaller than the tiny '
                                    'preset, whose probed epochs take minutes to compile on '
                                    '2 cores',
    'python main.py --config=configs/tiny.py --workdir=output/mp --distributed': 'two JAX '
        'processes and a coordinator (80 s here); tests/test_sweeps.py runs the same two '
        'processes on one batch and checks their files',
    'python main.py --config=configs/tiny.py --config.task=collection:dk=3': 'a sweep over '
        'seven groups of different orders, a batch and a compilation each: over three '
        'minutes even shortened; tests/test_groups.py checks the sweep it expands to',
    'python main.py --config=configs/landscape.py': '96 runs in 12 batches of different '
                                                    'shapes (a compilation each even when '
                                                    'shortened); configs/landscape_probe.py, '
                                                    'one of its points, runs below',
}
# Arguments appended to a script's command (argparse keeps an option's last value).
SHORTEN = {
    'benchmarks/vs_reference.py': ['--epochs', '1', '--repeats', '1'],
    'benchmarks/parts_vs_reference.py': ['--rounds', '1', '--reps', '2'],
    'analysis dataset_dft': ['--p', '31', '--train-size', '300'],
}
SIZES = ('p', 'train_size', 'test_size', 'batch_size', 'eval_batch_size', 'embed_dim',
         'num_heads', 'layers', 'mlp_dim')
MICRO_SIZES = {k: MICRO[k] for k in SIZES}
# The reference's files in tests/data/reference/v3: their model, data and 2-epoch schedule (a
# checkpoint continues its own schedule).
REFERENCE_SIZES = dict(p=11, train_size=60, test_size=40, batch_size=16, eval_batch_size=32,
                       embed_dim=4, num_heads=2, layers=2, mlp_dim=2048, epochs=2)
NO_SIZES = ('configs/tian.py', 'configs/tian_scaling.py')  # MLPs at p 23: seconds as they are
STORE_RUN = ['main.py', '--config=configs/tiny.py', '--config.strategy=all',
             '--workdir=output/tiny-all', '--config.stop_after=2', '--quiet',
             *[f'--config.{k}={v}' for k, v in MICRO_SIZES.items()]]
PRELOAD = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'absl.app',
           'matplotlib.pyplot', 'pyarrow.parquet', 'ordered_jax.experiment',
           'ordered_jax.sweeper', 'probes', 'analysis.readers', 'analysis.report',
           'tensorboardX')


def _skip_reason(cmd: str) -> str | None:
  for start, why in SKIP.items():
    if cmd.startswith(start):
      return why
  return None


def _config_overrides(argv) -> dict:
  return {a.split('=', 1)[0][len('--config.'):]: a.split('=', 1)[1] if '=' in a else ''
          for a in argv if a.startswith('--config.')}


def _shorter_sweep(config: str, given: dict) -> dict:
  """A sweep's overrides: its first seed only, its first two zipped points (the command's
  values, else the config file's)."""
  c = keys.load_config_file(os.path.join(ROOT, config))
  if c is None or 'sweep' not in c:
    return {}
  out = {}
  seed = given.get('sweep.grid.seed', str(c.sweep.grid.get('seed', '')))
  if seed:
    out['sweep.grid.seed'] = seed.split(',')[0].split('..')[0]
  for k in c.sweep.zip.keys():
    items = given.get(f'sweep.zip.{k}', str(c.sweep.zip[k])).split(',')
    if len(items) > 2:
      out[f'sweep.zip.{k}'] = ','.join(items[:2])
  return out


def shorten(argv: list[str]) -> list[str]:
  """``argv`` (after ``python``), shortened: main.py gets the sizes and the epoch cap it does
  not set itself (what it sets is the point of the command), a script its ``SHORTEN``
  options (they override its own: the sizes are what makes it long)."""
  if argv[0] == 'main.py':
    config = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    if config is None:  # --list, --probes_list, --probes_describe
      return argv
    given = _config_overrides(argv)
    sizes = ({} if config in NO_SIZES else REFERENCE_SIZES
             if given.get('init_from', '').endswith('.pt') else MICRO_SIZES)
    if 'train_fraction' in given:  # its data: the config's batches, not 16-pair ones
      sizes = {k: v for k, v in sizes.items() if 'batch_size' not in k}
    extra = {k: v for k, v in sizes.items() if k not in given}
    if not {'epochs', 'stop_after'} & (given.keys() | extra.keys()):
      extra['stop_after'] = 1
    extra.update(_shorter_sweep(config, given))
    return argv + [f'--config.{k}={v}' for k, v in extra.items()]
  key = f'{argv[1]} {argv[2]}' if argv[:2] == ['-m', 'analysis'] else argv[0]
  return argv + SHORTEN.get(key, [])  # argparse: the last value of an option wins


def _reads(argv: list[str]) -> list[str]:
  """The paths a command reads: analysis inputs, init_from, paths quoted in ``-c`` code."""
  if argv[0] == '-c':
    return re.findall(r"'((?:output|docs)/[^']+)'", argv[1])
  paths = []
  for i, a in enumerate(argv):
    if a.startswith('--config.init_from='):
      paths.append(a.split('=', 1)[1])
    elif argv[0] == '-m' and a in ('--workdir', '--table', '--results', '--jsonl'):
      paths.append(argv[i + 1])
  return paths


def _writes(argv: list[str]) -> str | None:
  """The workdir a main.py command writes (the top folder under output/)."""
  if argv[0] != 'main.py':
    return None
  w = next((a.split('=', 1)[1] for a in argv if a.startswith('--workdir=')), 'output')
  return '/'.join(w.split('/')[:2])


def _sandbox(path: str) -> None:
  """A folder where the repository's code is visible as at its root, with its own
  ``output/`` and ``docs/`` (so nothing a command writes lands in the repository)."""
  os.makedirs(os.path.join(path, 'docs'))
  for name in os.listdir(ROOT):
    if not name.startswith('.') and name not in ('docs', 'output'):
      os.symlink(os.path.join(ROOT, name), os.path.join(path, name))


def _reference_data(path: str) -> None:
  """A stand-in for ExperimentOneData: the reference's own files (p 11) and a paper-era
  metrics file (hook points, paper-era names) for the stride run."""
  shutil.copytree(REFERENCE, path, dirs_exist_ok=True)
  ckpts = os.path.join(path, 'stride', 'checkpoints')
  shutil.copy(os.path.join(ckpts, 'checkpoint_0.pt'), os.path.join(ckpts, 'checkpoint_450.pt'))
  with open(os.path.join(path, 'stride', 'stride.jsonl'), 'w') as f:
    for e in range(4):
      f.write(json.dumps({'epoch': e, 'hook_point': 'POST_EPOCH',
                          'training_metrics/loss': 2.0 / (e + 1),
                          'training_metrics/train_acc': 25.0 * e,
                          'training_metrics/val_acc': 5.0 * e}) + '\n')


def _provide(sandbox: str, store: str, path: str, made: set) -> list:
  """Put what ``path`` (read by a command run in ``sandbox``) needs there, unless an earlier
  command of the block makes it. Returns the copies of runs that exist only once the
  driver has made them: [[from, to]], for the driver to make before the command."""
  if path.startswith('output/'):
    top = '/'.join(path.split('/')[:2])
    if top not in made:
      made.add(top)
      return [[os.path.join(store, 'output', 'tiny-all'), os.path.join(sandbox, top)]]
  elif 'ExperimentOneData' in path:
    head = path[:path.index('ExperimentOneData') + len('ExperimentOneData')]
    dest = os.path.normpath(os.path.join(sandbox, head))
    if not os.path.exists(dest):
      _reference_data(dest)
  elif path.endswith('.pt') and '/' not in path:
    shutil.copy(os.path.join(REFERENCE, 'stride', path), os.path.join(sandbox, path))
  elif path.startswith('docs/') and os.path.exists(os.path.join(ROOT, path)):
    os.makedirs(os.path.dirname(os.path.join(sandbox, path)), exist_ok=True)
    shutil.copy(os.path.join(ROOT, path), os.path.join(sandbox, path))
  return []


DRIVER = r"""
import json, os, runpy, shutil, subprocess, sys, time, traceback
sys.path.insert(0, {root!r})
for m in {preload!r}:
  __import__(m)


def child(case):
  os.chdir(case['cwd'])
  fd = os.open(case['log'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  argv = case['argv']
  code = 0
  try:
    if argv[0] == '-m':
      sys.argv = [argv[1]] + argv[2:]
      sys.path[0] = case['cwd']
      runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
    elif argv[0] == '-c':
      sys.argv = ['-c'] + argv[2:]
      sys.path[0] = case['cwd']
      exec(compile(argv[1], '<string>', 'exec'), {{'__name__': '__main__'}})
    else:
      sys.argv = list(argv)
      sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
      runpy.run_path(argv[0], run_name='__main__')
  except SystemExit as e:
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
    code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
  except BaseException:  # noqa: B036
    traceback.print_exc()
    code = 99
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def wait(p):
  if isinstance(p, subprocess.Popen):
    return p.wait()
  return os.waitstatus_to_exitcode(os.waitpid(p, 0)[1])


def run_block(block):
  '''Its commands in order, each a forked child (or a process), '&' ones in the background.'''
  results, running = {{}}, []
  for case in block:
    for src, dest in case['copies']:
      shutil.copytree(src, dest)
    t = time.perf_counter()
    if case['process']:
      with open(case['log'], 'w') as log:
        pid = subprocess.Popen([sys.executable] + case['argv'], cwd=case['cwd'], stdout=log,
                               stderr=subprocess.STDOUT)
    else:
      pid = os.fork()
      if pid == 0:
        child(case)
    running.append((case['id'], pid, t))
    if not case['background']:
      for cid, p, t0 in running:
        results[cid] = [wait(p), time.perf_counter() - t0]
      running = []
  for cid, p, t0 in running:
    results[cid] = [wait(p), time.perf_counter() - t0]
  return results


plan = json.load(open({plan!r}))
results = run_block(plan[0])  # what the other blocks copy from
queue, running = list(range(1, len(plan))), {{}}
while queue or running:  # the blocks are independent: {workers} at a time
  while queue and len(running) < {workers}:
    i = queue.pop(0)
    pid = os.fork()
    if pid == 0:
      code = 1
      try:
        json.dump(run_block(plan[i]), open({plan!r} + f'.{{i}}', 'w'))
        code = 0
      finally:
        os._exit(code)
    running[pid] = i
  pid, status = os.wait()
  i = running.pop(pid)
  if os.waitstatus_to_exitcode(status) == 0:
    results.update(json.load(open({plan!r} + f'.{{i}}')))
print(json.dumps(results))
"""
WORKERS = min(2, os.cpu_count() or 1)  # CI's 2 cores: tracing a program is one thread


def _case_id(where: str, k: int, cmd: str) -> str:
  return f'{where}#{k}:{cmd}'


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _plan(base: str):
  """(blocks of cases for the driver, {case id: the id of an identical case run instead})."""
  store = os.path.join(base, 'store', 'repo')
  _sandbox(store)
  plan = [[{'id': 'store', 'cwd': store, 'argv': STORE_RUN, 'background': False,
            'process': False, 'copies': [], 'log': os.path.join(base, 'store.log')}]]
  first, same = {}, {}
  for b, (where, cmds) in enumerate(BLOCKS):
    sandbox = os.path.join(base, f'block{b}', 'repo')
    _sandbox(sandbox)
    made, cases, port = set(), [], _free_port()  # a documented port may be taken here
    argvs = []
    for cmd in cmds:
      words = shlex.split(re.sub(r'--coordinator=([\w.]+):\d+', rf'--coordinator=\1:{port}',
                                 cmd))
      argvs.append((cmd, words, shorten([a for a in words[1:] if a != '&'])))
    tops = lambda a: {'/'.join(p.split('/')[:2]) for p in _reads(a)} | {_writes(a)}  # noqa: E731
    for k, (cmd, words, argv) in enumerate(argvs):
      if _skip_reason(cmd):
        continue
      cid = _case_id(where, b, cmd)
      mine = {'/'.join(p.split('/')[:2]) for p in _reads(argv)} & made
      others = set().union(*[tops(a) for j, (_, _, a) in enumerate(argvs) if j != k])
      if tuple(argv) in first and not mine and not (tops(argv) - {None}) & others:
        same[cid] = first[tuple(argv)]  # the same command with the same inputs: run once
        continue
      first.setdefault(tuple(argv), cid)
      copies = [c for path in _reads(argv) for c in _provide(sandbox, store, path, made)]
      if _writes(argv):
        made.add(_writes(argv))
      cases.append({'id': cid, 'cwd': sandbox, 'argv': argv, 'background': words[-1] == '&',
                    'copies': copies, 'process': '&' in words,
                    'log': os.path.join(base, f'block{b}', f'{k}.log')})
    if any(c['process'] for c in cases):  # processes that talk: whole processes, no forks
      for c in cases:
        c['process'] = True
    plan.append(cases)
  return plan, same


@pytest.fixture(scope='module')
def executed(tmp_path_factory):
  """{case id: (exit code, seconds, output)} of every command not in SKIP, shortened."""
  base = str(tmp_path_factory.mktemp('docs_run'))
  plan, same = _plan(base)
  with open(os.path.join(base, 'plan.json'), 'w') as f:
    json.dump(plan, f)
  driver = subprocess.Popen(
      [sys.executable, '-c', DRIVER.format(root=ROOT, preload=PRELOAD, workers=WORKERS,
                                           plan=os.path.join(base, 'plan.json'))],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
      env={**os.environ, 'PYTHONPATH': ROOT})
  try:
    stdout, stderr = driver.communicate(timeout=900)
  finally:  # the driver and every command it forked (a peer left waiting, say)
    try:
      os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  assert driver.returncode == 0, stderr[-3000:]
  codes = json.loads(stdout.strip().splitlines()[-1])
  with open(os.path.join(base, 'results.json'), 'w') as f:  # exit codes and seconds
    json.dump(codes, f, indent=1)
  out = {}
  for block in plan:
    for case in block:
      code, seconds = codes.get(case['id'], (None, 0.0))  # None: its block runner failed
      out[case['id']] = (code, seconds, open(case['log']).read()
                         if os.path.exists(case['log']) else '')
  assert out['store'][0] == 0, out['store'][2][-3000:]
  for cid, other in same.items():
    out[cid] = out[other]
  return out


RUN = [(where, b, cmd) for b, (where, cmds) in enumerate(BLOCKS) for cmd in cmds]


@pytest.mark.parametrize('where,block,cmd', RUN, ids=[f'{w}:{c[:60]}' for w, _, c in RUN])
@pytest.mark.slow
def test_command_runs(where, block, cmd, executed):
  why = _skip_reason(cmd)
  if why:
    pytest.skip(why)
  code, seconds, output = executed[_case_id(where, block, cmd)]
  assert code == 0, f'{where}: {cmd}\nexit {code} after {seconds:.1f} s:\n{output[-3000:]}'
  assert 'Traceback' not in output, f'{where}: {cmd}\n{output[-3000:]}'


def test_skips_are_few_and_current():
  """Each SKIP entry matches a command of the docs (no stale entries), says why, and most
  commands run."""
  for start, why in SKIP.items():
    assert any(c.startswith(start) for _, c in COMMANDS), f'stale SKIP entry: {start}'
    assert len(why) > 30, start
  skipped = [c for _, c in COMMANDS if _skip_reason(c)]
  assert len(SKIP) <= 8 and len(skipped) * 4 < len(COMMANDS), skipped


def test_shorten_keeps_what_the_command_sets():
  argv = shorten(['main.py', '--config=configs/tiny.py', '--config.test_size=0',
                  '--config.epochs=0'])
  assert '--config.test_size=0' in argv and '--config.test_size=40' not in argv
  assert not any(a.startswith('--config.stop_after') for a in argv)  # epochs=0 is set
  assert '--config.p=13' in argv
  argv = shorten(['main.py', '--config=configs/stride.py', '--config.init_from=x.pt'])
  assert '--config.p=11' in argv and '--config.epochs=2' in argv  # the file's schedule
  assert not any(a.startswith('--config.stop_after') for a in argv)
  assert shorten(['-m', 'analysis', 'dataset_dft', '--p', '9973', '--batch-size', '256']) == [
      '-m', 'analysis', 'dataset_dft', '--p', '9973', '--batch-size', '256', '--p', '31',
      '--train-size', '300']
  argv = shorten(['main.py', '--config=configs/tiny.py', '--config.sweep.grid.seed=0..4'])
  assert argv[-1] == '--config.sweep.grid.seed=0'
  argv = shorten(['main.py', '--config=configs/tian_scaling.py'])
  assert '--config.sweep.grid.seed=0' in argv and '--config.sweep.zip.p=23,23' in argv
