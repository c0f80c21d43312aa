"""The real PyTorch reference against ours, whole processes, side by side on one machine.

  python benchmarks/vs_reference.py --reference_dir=../OrderedLearning \
      --torch_python=../torchenv/bin/python --repeats=3 --out=vs_reference.json

Both programs run end to end with the same config: the reference's
``run_experiment.py mod_arithmetic ... --no-console-output`` (its own interpreter, one with
torch; a checkout of JordanRL/OrderedLearning, HEAD or the paper-era tag) and our
``main.py ... --quiet``. Runs alternate (the reference first in repeats 1, 3, ..., ours first
in 2, 4, ...) and each figure is the median of --repeats. For each side:

  wall       spawn to exit of the whole process (imports, data, model, training, files)
  loop       the side's own training time: the reference's summary.json
             timing.duration_seconds (its epoch loop with the per-epoch evaluation); ours
             summary.json timing.duration_seconds + compile_seconds (the same loop; our
             duration leaves the compile out, which happens in the loop's first epoch)
  start-up   wall - loop: start-up, data, initial evaluation, final files, shutdown

Ours uses JAX's persistent compilation cache, warm (a first, cold run fills it; its
figures are reported apart). Ratios are reference / ours: above 1 we are faster.

Presets (``stride``, evaluation every epoch, seed 199, the reference's defaults otherwise):
  ref97  the reference model (d 256, 4 heads, 2 layers, mlp 2048) at p = 97, 4,000 / 4,000
         pairs (configs/default.py with p, sizes and epochs overridden)
  tiny   configs/tiny.py's p, pairs, width, heads, batch and weight decay, but mlp 2048 on
         our side too: the reference's MLP width is fixed (PyTorch's dim_feedforward)

Without --reference_dir and --torch_python, or when they are not usable (no checkout there,
no torch in that interpreter), it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PRESETS = ('ref97', 'tiny')
REFERENCE_MLP = 2048   # PyTorch's dim_feedforward default; the reference cannot change it
REFERENCE_DROPOUT = 0.1
REFERENCE_MIN_LR = 5e-7  # its cosine floor (no flag)


class Unusable(Exception):
  """The reference or its interpreter cannot be used: the benchmark is skipped."""


def preset_config(name: str, epochs: int):
  """(our config file, the config) of a preset, with the overrides ours runs with."""
  from configs import default, tiny  # pylint: disable=g-import-not-at-top
  if name == 'ref97':
    path, c = 'configs/default.py', default.get_config()
    c.update(p=97, train_size=4000, test_size=4000)
  else:
    path, c = 'configs/tiny.py', tiny.get_config()
    c.mlp_dim = REFERENCE_MLP
  c.update(epochs=epochs, strategy='stride', eval_every=1)
  return path, c


def commands(name: str, epochs: int, ref_out: str, our_out: str, torch_python: str):
  """(the reference's argv, our argv, what the preset is), both from the same values."""
  path, c = preset_config(name, epochs)
  # What the reference cannot set must already agree.
  for field, want in (('mlp_dim', REFERENCE_MLP), ('dropout', REFERENCE_DROPOUT),
                      ('min_lr', REFERENCE_MIN_LR), ('optimizer', 'adamw'),
                      ('model', 'reference'), ('task', 'add'), ('schedule', 'cosine')):
    if c[field] != want:
      raise ValueError(f'preset {name}: config.{field} is {c[field]!r}; the reference has '
                       f'{want!r}')
  ref = [torch_python, 'run_experiment.py', 'mod_arithmetic', '--strategy', 'stride',
         '--p', str(c.p), '--train-size', str(c.train_size), '--test-size', str(c.test_size),
         '--epochs', str(epochs), '--eval-every', '1', '--batch-size', str(c.batch_size),
         '--embed-dim', str(c.embed_dim), '--num-heads', str(c.num_heads),
         '--layers', str(c.layers), '--lr', str(c.lr), '--weight-decay', str(c.weight_decay),
         '--seed', str(c.seed), '--output-dir', ref_out, '--no-console-output']
  overrides = {'p': c.p, 'train_size': c.train_size, 'test_size': c.test_size,
               'epochs': epochs, 'strategy': 'stride', 'mlp_dim': c.mlp_dim}
  ours = [sys.executable, 'main.py', f'--config={path}',
          *[f'--config.{k}={v}' for k, v in overrides.items()], '--quiet',
          f'--workdir={our_out}']
  what = (f'p {c.p}, {c.train_size:,} / {c.test_size:,} pairs, d {c.embed_dim}, '
          f'{c.num_heads} heads, {c.layers} layers, mlp {c.mlp_dim}, batch {c.batch_size}, '
          f'weight decay {c.weight_decay}, lr {c.lr}, stride, {epochs} epochs, evaluation '
          f'every epoch; our eval batch {c.eval_batch_size} (the reference: '
          f'{8 * c.batch_size})')
  return ref, ours, what


def check_usable(reference_dir: str | None, torch_python: str | None) -> dict:
  """The reference's commit and torch's version and threads, or ``Unusable``."""
  if not reference_dir or not torch_python:
    raise Unusable('--reference_dir and --torch_python not given')
  if not os.path.isfile(os.path.join(reference_dir, 'run_experiment.py')) or not os.path.isdir(
      os.path.join(reference_dir, 'experiments', 'mod_arithmetic')):
    raise Unusable(f'--reference_dir {reference_dir!r} is not an OrderedLearning checkout '
                   '(no run_experiment.py and experiments/mod_arithmetic)')
  try:
    proc = subprocess.run([torch_python, '-c', 'import torch; print(torch.__version__, '
                           'torch.get_num_threads())'], capture_output=True, text=True,
                          timeout=120)
  except (OSError, subprocess.SubprocessError) as e:
    raise Unusable(f'--torch_python {torch_python!r} does not run ({type(e).__name__})')
  if proc.returncode:
    raise Unusable(f'--torch_python {torch_python!r} cannot import torch')
  version, threads = proc.stdout.split()[-2:]
  commit = subprocess.run(['git', '-C', reference_dir, 'describe', '--tags', '--always'],
                          capture_output=True, text=True).stdout.strip() or None
  return {'dir': os.path.abspath(reference_dir), 'commit': commit, 'torch': version,
          'torch_threads': int(threads)}


def _summary(folder: str) -> dict:
  found = glob.glob(os.path.join(folder, '**', 'summary.json'), recursive=True)
  if len(found) != 1:
    raise RuntimeError(f'expected one summary.json under {folder}, found {len(found)}')
  with open(found[0]) as f:
    return json.load(f)


def _acc(summary: dict) -> dict:
  final = summary.get('final_eval') or {}
  val = final.get('validation_accuracy', final.get('val_acc'))  # HEAD's names, paper-era's
  tr = final.get('training_accuracy', final.get('train_acc'))
  return {'validation_accuracy': val, 'training_accuracy': tr}


def run_side(side: str, argv: list[str], cwd: str, out: str, env: dict, timeout: float) -> dict:
  """One whole process: wall seconds, its own loop seconds, accuracies, load."""
  shutil.rmtree(out, ignore_errors=True)
  load = os.getloadavg()[0]
  t = time.perf_counter()
  proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)
  wall = time.perf_counter() - t
  if proc.returncode:
    tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
    raise RuntimeError(f'{side} exited {proc.returncode}: {" | ".join(tail)[:500]}')
  s = _summary(out)
  timing = s.get('timing') or {}
  row = {'wall_s': wall, 'load_before': load, 'load_after': os.getloadavg()[0], **_acc(s)}
  if side == 'reference':
    row['loop_s'] = timing.get('duration_seconds')
  else:
    row['train_s'] = timing.get('duration_seconds')
    row['compile_s'] = timing.get('compile_seconds')
    row['loop_s'] = row['train_s'] + row['compile_s']
  row['startup_shutdown_s'] = wall - row['loop_s'] if row['loop_s'] is not None else None
  return row


def _median(rows, key):
  vals = [r[key] for r in rows if r.get(key) is not None]
  return statistics.median(vals) if vals else None


def measure(name: str, args, ref_info: dict, work: str, log) -> dict:
  ref_out, our_out = os.path.join(work, 'ref'), os.path.join(work, 'ours')
  ref_argv, our_argv, what = commands(name, args.epochs, ref_out, our_out, args.torch_python)
  cache = os.path.join(work, f'jax-cache-{name}')
  our_env = dict(os.environ, ORDERED_JAX_CACHE=cache)
  our_env.pop('JAX_COMPILATION_CACHE_DIR', None)
  ref_env = dict(os.environ)
  if args.reference_threads:  # torch's intra-op threads (default: one per core)
    ref_env.update(OMP_NUM_THREADS=str(args.reference_threads),
                   MKL_NUM_THREADS=str(args.reference_threads))
  log(f'\n{name}: {what}')
  log(f'  reference: {" ".join(ref_argv[1:])}  (in {ref_info["dir"]})')
  log(f'  ours:      {" ".join(our_argv[1:])}')
  result = {'what': what, 'reference_cmd': ref_argv[1:], 'our_cmd': our_argv[1:],
            'cold': None, 'runs': {'reference': [], 'ours': []}}
  shutil.rmtree(cache, ignore_errors=True)
  result['cold'] = cold = run_side('ours', our_argv, ROOT, our_out, our_env, args.timeout)
  log(f"  ours, cold compile cache: wall {cold['wall_s']:.1f} s (compile {cold['compile_s']:.1f} s)")
  for rep in range(args.repeats):
    order = ('reference', 'ours') if rep % 2 == 0 else ('ours', 'reference')
    for side in order:
      row = (run_side('reference', ref_argv, args.reference_dir, ref_out, ref_env, args.timeout)
             if side == 'reference' else
             run_side('ours', our_argv, ROOT, our_out, our_env, args.timeout))
      result['runs'][side].append(row)
      log(f"  {rep + 1}/{args.repeats} {side:<9} wall {row['wall_s']:6.1f} s, loop "
          f"{row['loop_s']:6.1f} s, val {row['validation_accuracy']}, train "
          f"{row['training_accuracy']} (load {row['load_before']:.1f} -> {row['load_after']:.1f})")
  med = {side: {k: _median(rows, k) for k in ('wall_s', 'loop_s', 'startup_shutdown_s',
                                              'train_s', 'compile_s',
                                              'validation_accuracy', 'training_accuracy')}
         for side, rows in result['runs'].items()}
  result['median'] = med
  result['ratios'] = {k: (med['reference'][k] / med['ours'][k]
                          if med['ours'][k] and med['reference'][k] is not None else None)
                      for k in ('wall_s', 'loop_s', 'startup_shutdown_s')}
  return result


def table(results: dict) -> str:
  head = (f"{'preset':<6} {'side':<16} {'wall s':>7} {'loop s':>7} {'start/stop s':>12} "
          f"{'val %':>7} {'train %':>8}")
  lines = [head, '-' * len(head)]
  for name, r in results['presets'].items():
    m = r['median']
    cold = r['cold']
    rows = [('reference', m['reference']), ('ours (warm)', m['ours']),
            ('ours (cold, 1x)', {'wall_s': cold['wall_s'], 'loop_s': cold['loop_s'],
                                 'startup_shutdown_s': cold['startup_shutdown_s'],
                                 'validation_accuracy': cold['validation_accuracy'],
                                 'training_accuracy': cold['training_accuracy']})]
    for side, v in rows:
      lines.append(f"{name:<6} {side:<16} {v['wall_s']:>7.1f} {v['loop_s']:>7.1f} "
                   f"{v['startup_shutdown_s']:>12.1f} {v['validation_accuracy']:>7.2f} "
                   f"{v['training_accuracy']:>8.2f}")
    q = r['ratios']
    lines.append(f"{name:<6} {'ref / ours':<16} {q['wall_s']:>6.2f}x {q['loop_s']:>6.2f}x "
                 f"{q['startup_shutdown_s']:>11.2f}x")
  return '\n'.join(lines)


def machine() -> dict:
  model = None
  try:
    with open('/proc/cpuinfo') as f:
      model = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), None)
  except OSError:
    pass
  return {'cpu': model, 'cores': os.cpu_count(), 'platform': platform.platform(),
          'python': sys.version.split()[0], 'date': time.strftime('%Y-%m-%d %H:%M %Z')}


class OneLineParser(argparse.ArgumentParser):
  """Bad flags: one line naming the flag, exit 2, no usage dump."""

  def error(self, message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> int:
  ap = OneLineParser(description=__doc__.splitlines()[0])
  ap.add_argument('--reference_dir', help='a checkout of JordanRL/OrderedLearning')
  ap.add_argument('--torch_python', help='the interpreter of an environment with torch and '
                  "the reference's requirements")
  ap.add_argument('--presets', default=','.join(PRESETS), help=f'of {", ".join(PRESETS)}')
  ap.add_argument('--repeats', type=int, default=3, help='alternating runs per side (median)')
  ap.add_argument('--epochs', type=int, default=20)
  ap.add_argument('--reference_threads', type=int, default=0,
                  help="the reference's torch threads (OMP_NUM_THREADS); 0: torch's default")
  ap.add_argument('--timeout', type=float, default=1800, help='seconds per process')
  ap.add_argument('--out', default='', help='write the figures as JSON here')
  args = ap.parse_args(argv)
  presets = [p.strip() for p in args.presets.split(',') if p.strip()]
  bad = [p for p in presets if p not in PRESETS]
  if bad:
    ap.error(f'--presets: unknown {bad[0]!r}; choose from {", ".join(PRESETS)}')
  if args.repeats < 1 or args.epochs < 1:
    ap.error('--repeats and --epochs must be at least 1')
  try:
    ref_info = check_usable(args.reference_dir, args.torch_python)
  except Unusable as e:
    print(f'vs_reference: skipped: {e}')
    return 0
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  results = {'machine': machine(), 'reference': ref_info,
             'ours': {'commit': subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short',
                                                'HEAD'], capture_output=True,
                                               text=True).stdout.strip() or None,
                      'jax': importlib.metadata.version('jax')},
             'repeats': args.repeats, 'epochs': args.epochs,
             'reference_threads': args.reference_threads or ref_info['torch_threads'],
             'presets': {}}
  log = lambda s: print(s, flush=True)
  log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; reference "
      f"{ref_info['commit']} (torch {ref_info['torch']}, {results['reference_threads']} "
      'threads); '
      f"ours {results['ours']['commit']} (jax {results['ours']['jax']}); load "
      f'{os.getloadavg()[0]:.2f}')
  load_start = os.getloadavg()
  work = tempfile.mkdtemp(prefix='vs_reference-')
  try:
    for name in presets:
      results['presets'][name] = measure(name, args, ref_info, work, log)
      if args.out:
        with open(args.out, 'w') as f:
          json.dump(results, f, indent=1)
  except (RuntimeError, subprocess.TimeoutExpired) as e:
    print(f'vs_reference: {str(e).splitlines()[0]}', file=sys.stderr)
    return 1
  finally:
    shutil.rmtree(work, ignore_errors=True)
  results['load_start'], results['load_end'] = load_start, os.getloadavg()
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)
  log('\n' + table(results))
  log(f'load average (1, 5, 15 min): {load_start} at the start, {results["load_end"]} at the end')
  log('ratios: reference / ours (above 1: ours is faster); medians of '
      f'{args.repeats} alternating runs')
  return 0


if __name__ == '__main__':
  sys.exit(main())
