"""The two parts of an epoch, ours against the real reference's model: a training step and
the evaluation forward pass, each in its own fresh process, side by side on one machine.

  python benchmarks/parts_vs_reference.py --reference_dir=../OrderedLearning \
      --torch_python=../torchenv/bin/python --rounds=3

``vs_reference.py`` times whole processes; this says where their ratio comes from. For the
reference model at p = 97 (d 256, 4 heads, 2 layers, MLP 2,048, dropout 0.1, AdamW lr 1e-3,
weight decay 0.1) it times, per side:

  step ms       one optimizer step on 256 pairs in training mode (forward with dropout,
                backward, AdamW): the reference's ``GrokkingTransformer`` (imported from
                its checkout) with ``torch.optim.AdamW``; ours the trainer's own step
                (``Trainer._step``, jitted alone) as ``experiment.build`` makes it for
                ``configs/default.py``
  eval us/pair  the evaluation forward pass (no dropout, argmax) over 8,192 pairs: the
                reference's in ``model.eval()`` and ``torch.no_grad()`` in batches of its
                ``eval_batch_size`` (2,048); ours ``Trainer.evaluate`` (chunks of
                ``experiment.eval_chunk``)

each the median of ``--reps`` timed calls after warm-up, in ``--rounds`` pairs of fresh
processes (the reference first in odd rounds, ours first in even ones); the figures are the
medians over rounds and the ratios reference / ours (above 1: ours is faster). Without a
usable reference and torch it prints one line, "skipped", and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

P, BATCH, EVAL_PAIRS, REF_EVAL_BATCH = 97, 256, 8192, 2048

# Run by --torch_python with the reference's checkout first on sys.path.
TORCH_WORKER = r'''
import json, statistics, sys, time, torch
from experiments.mod_arithmetic.model import GrokkingTransformer
p, batch, eval_pairs, eval_batch, reps = (int(a) for a in sys.argv[1:6])
torch.manual_seed(0)
model = GrokkingTransformer(p, 256, 4, 2)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
x = torch.randint(0, p, (batch, 2)); y = torch.randint(0, p, (batch,))
pairs = torch.randint(0, p, (eval_pairs, 2))
def step():
  model.train(); opt.zero_grad()
  torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
def evaluate():
  model.eval()
  with torch.no_grad():
    return sum(int(model(c).argmax(-1).sum()) for c in pairs.split(eval_batch))
def timed(f):
  f(); f(); ts = []
  for _ in range(reps):
    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
  return statistics.median(ts)
print(json.dumps({'step_ms': 1e3 * timed(step),
                  'eval_us_per_pair': 1e6 * timed(evaluate) / eval_pairs,
                  'threads': torch.get_num_threads()}))
'''


def our_worker(reps: int) -> dict:
  """Our step and evaluation at the same sizes, in this (fresh) process."""
  import time  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from ordered_jax import environment  # pylint: disable=g-import-not-at-top
  environment.configure(deterministic=True, matmul_precision='highest')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  from ordered_jax import train  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.update(p=P, train_size=EVAL_PAIRS // 2, test_size=EVAL_PAIRS // 2, batch_size=BATCH,
           strategy='stride', data_generator='fast')
  b = experiment.build(c)
  tr = b.trainer
  table = b.data.train_NxC if tr.shared_data else b.data.train_NxC[0]
  abc, mask = table[:BATCH], jnp.ones((BATCH,), bool)
  step = jax.jit(tr._step)  # pylint: disable=protected-access  # the epoch's own step
  keys = [jax.random.key(i) for i in range(reps + 2)]

  def timed(f):
    jax.block_until_ready(f(0))
    jax.block_until_ready(f(1))
    ts = []
    for i in range(reps):
      t = time.perf_counter()
      jax.block_until_ready(f(i + 2))
      ts.append(time.perf_counter() - t)
    return statistics.median(ts)

  one_run = train.run_slice(b.state, 0)
  state = [one_run.params, one_run.opt_state]

  def one_step(i):
    _, _, state[0], state[1] = step(*state, abc, mask, keys[i])
    return state[0]

  pairs = b.data.n_train + b.data.n_test
  return {'step_ms': 1e3 * timed(one_step),
          'eval_us_per_pair': 1e6 * timed(lambda i: tr.evaluate(b.state.params, b.data)) / pairs,
          'eval_chunk': experiment.eval_chunk(c), 'jax': jax.__version__}


def _run(argv: list[str], cwd: str, timeout: float) -> dict:
  """One worker's figures; RuntimeError (one line) when it fails, times out or prints none."""
  try:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    raise RuntimeError(f'{argv[0]} ran past --timeout={timeout:g} s') from None
  except OSError as e:
    raise RuntimeError(f'{argv[0]}: {e.strerror or e}') from None
  if proc.returncode:
    tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
    raise RuntimeError(f'{argv[0]} exited {proc.returncode}: {tail}')
  try:
    row = json.loads((proc.stdout.strip().splitlines() or [''])[-1])
    float(row['step_ms']), float(row['eval_us_per_pair'])
  except (ValueError, KeyError, TypeError):
    raise RuntimeError(f'{argv[0]} printed no figures') from None
  return row


def main(argv=None) -> int:
  import vs_reference  # pylint: disable=g-import-not-at-top
  ap = vs_reference.OneLineParser(description=__doc__.splitlines()[0])
  ap.add_argument('--reference_dir', help='a checkout of JordanRL/OrderedLearning')
  ap.add_argument('--torch_python', help='the interpreter of an environment with torch')
  ap.add_argument('--rounds', type=int, default=3, help='pairs of fresh processes (median)')
  ap.add_argument('--reps', type=int, default=20, help='timed calls per process (median)')
  ap.add_argument('--timeout', type=float, default=600, help='seconds per process')
  ap.add_argument('--out', default='', help='write the figures as JSON here')
  ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.rounds < 1 or args.reps < 1:
    ap.error('--rounds and --reps must be at least 1')
  if not args.timeout > 0:
    ap.error('--timeout must be a positive number of seconds')
  if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
    ap.error(f'--out={args.out}: its folder does not exist')
  if args.worker:
    print(json.dumps(our_worker(args.reps)))
    return 0
  try:
    ref_info = vs_reference.check_usable(args.reference_dir, args.torch_python)
  except vs_reference.Unusable as e:
    print(f'parts_vs_reference: skipped: {e}')
    return 0
  ref_dir = ref_info['dir']  # absolute: the worker runs in it
  ref_argv = [args.torch_python, '-c', f'import sys; sys.path.insert(0, {ref_dir!r})'
              f'\n{TORCH_WORKER}', *map(str, (P, BATCH, EVAL_PAIRS, REF_EVAL_BATCH, args.reps))]
  ours_argv = [sys.executable, os.path.abspath(__file__), '--worker', f'--reps={args.reps}']
  rows = {'reference': [], 'ours': []}
  print(f"machine: {vs_reference.machine()['cpu']}; reference {ref_info['commit']} (torch "
        f"{ref_info['torch']}); load {os.getloadavg()[0]:.2f}", flush=True)
  for r in range(args.rounds):
    order = ('reference', 'ours') if r % 2 == 0 else ('ours', 'reference')
    for side in order:
      try:
        row = _run(ref_argv if side == 'reference' else ours_argv,
                   ref_dir if side == 'reference' else ROOT, args.timeout)
      except RuntimeError as e:
        print(f'parts_vs_reference: {side}: {e}', file=sys.stderr)
        return 1
      rows[side].append(row)
      print(f"  {r + 1}/{args.rounds} {side:9s} step {row['step_ms']:7.1f} ms   eval "
            f"{row['eval_us_per_pair']:6.1f} us/pair", flush=True)
  med = {side: {k: statistics.median(x[k] for x in rows[side])
                for k in ('step_ms', 'eval_us_per_pair')} for side in rows}
  ratio = {k: med['reference'][k] / med['ours'][k] for k in med['ours']}
  print(f"{'':10s} {'step ms':>9s} {'eval us/pair':>13s}")
  for side in ('reference', 'ours'):
    print(f"{side:10s} {med[side]['step_ms']:9.1f} {med[side]['eval_us_per_pair']:13.1f}")
  print(f"{'ref / ours':10s} {ratio['step_ms']:8.2f}x {ratio['eval_us_per_pair']:12.2f}x   "
        f'(medians of {args.rounds} rounds; load {os.getloadavg()[0]:.2f})')
  if args.out:
    try:
      with open(args.out, 'w') as f:
        json.dump({'reference': ref_info, 'rows': rows, 'medians': med, 'ratios': ratio}, f,
                  indent=1)
    except OSError as e:
      print(f'parts_vs_reference: --out={args.out}: {e.strerror or e}', file=sys.stderr)
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
