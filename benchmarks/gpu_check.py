"""One prepared GPU check: the paper config's speed, precision, determinism, probe cost and
memory, and the projected GPU-hours of the paper's table, as one JSON file and one Markdown
table (docs/benchmarks.md, "GPU check").

  bash benchmarks/gpu_check.sh                          # on a lent GPU machine: into $OUT
  python benchmarks/gpu_check.py --out=output/gpu       # any machine (figures at paper size)
  python benchmarks/gpu_check.py --out=/tmp/gc --dry_run   # the same code at tiny sizes, CPU

Sections (each in its own process, so each has its own peak device memory and a crash or a
hang loses only that section):
  paper_r1, paper_r4, paper_r16  the paper config (p 9,973, 300K/1M pairs, the reference
                 model, batch 256, evaluation on all 1.3M pairs): compile seconds, then
                 seconds per epoch of training and of evaluation, timed apart; R = 1 (stride),
                 R = 4 (the four strategies as one batch), R = 16 (seeds, one epoch)
  precision      float32 'highest' against 'tensorfloat32' matmuls: epoch seconds at paper
                 size, and a short tiny-preset run under each: do the accuracies differ?
  determinism    the tiny preset twice in two processes (main.py) with deterministic ops
                 (--xla_gpu_deterministic_ops), JSONL compared bit for bit; again without
  probes         probes.group=full at paper size: a probe epoch and an epoch between probe
                 epochs, against the plain epoch
Then the projection: GPU-hours of the paper's four-strategy table (stride to epoch 487,
fixed-random to 659, random and target 5,000 epochs), sequential and as one batch, with and
without full instrumentation, against the reference's 57.6 h (RTX 4090, full hooks).

Every section is time-guarded: one that would start with too little of --budget_s left is
skipped, one that runs past it is stopped; a failure is recorded and the next section runs.
The JSON and the Markdown are rewritten while a section runs, so a kill still leaves figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# In this order by default: what the targets need first, precision last.
SECTIONS = ('paper_r1', 'paper_r4', 'determinism', 'probes', 'paper_r16', 'precision')
# Seconds a section may take at most on a GPU (it is stopped at the budget's end anyway).
SECTION_CAP_S = {'paper_r1': 90, 'paper_r4': 100, 'paper_r16': 120, 'precision': 120,
                 'determinism': 120, 'probes': 180}
MIN_START_S = 15  # a section does not start with less of the budget left
# The paper's table (reference sheet, section 0): epochs trained per strategy (stride's last
# epoch index is 487, fixed-random's 659) and the reference's wall hours on an RTX 4090
# with --with-hooks full, run one after another.
PAPER_EPOCHS = {'stride': 488, 'fixed-random': 660, 'random': 5000, 'target': 5000}
REFERENCE_HOURS = {'stride': 2.6, 'fixed-random': 3.2, 'random': 25.9, 'target': 25.9}
# --dry_run's sizes: the paper's code paths with a model and task that train in milliseconds.
DRY = dict(p=13, train_size=60, test_size=40, batch_size=16, eval_batch_size=32,
           embed_dim=16, num_heads=2, mlp_dim=32)
JSON_NAME, MD_NAME = 'gpu_check.json', 'gpu_check.md'


# ---------------------------------------------------------------------------------------
# Sizes and settings of each mode


def settings(dry: bool) -> dict:
  """Timed epochs and run lengths (GPU, or --dry_run on a CPU)."""
  if dry:
    return dict(warmup=1, timed=1, det_epochs=2, short_epochs=3, r16_timed=1)
  return dict(warmup=1, timed=2, det_epochs=100, short_epochs=100, r16_timed=1)


def paper_config(dry: bool):
  from configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.data_generator = 'fast'  # the same shapes as 'reference', generated in 0.1 s
  if dry:
    c.update(DRY)
  return c


def short_config(dry: bool):
  """The precision section's short run: the tiny preset (--dry_run: the dry paper config,
  whose programs the section has compiled already)."""
  if dry:
    return paper_config(dry)
  from configs import tiny  # pylint: disable=g-import-not-at-top
  return tiny.get_config()


def tiny_flags(dry: bool, epochs: int) -> list[str]:
  flags = ['--config=configs/tiny.py', f'--config.epochs={epochs}',
           '--config.tensorboard=false', '--quiet']
  return flags + ([f'--config.{k}={v}' for k, v in DRY.items()] if dry else [])


# ---------------------------------------------------------------------------------------
# Jobs: each runs in its own process (``--job``) and saves its partial result as it goes


class Job:
  """A section's result, saved to ``path`` after every measurement."""

  def __init__(self, path: str, dry: bool):
    self.path, self.dry, self.s = path, dry, settings(dry)
    self.result: dict = {'status': 'running'}

  def save(self, **values):
    self.result.update(values)
    _write_json(self.path, self.result)
    for k, v in values.items():  # progress in the log
      if isinstance(v, (int, float, str)) or (isinstance(v, list) and len(v) < 8):
        print(f'{k} = {v}', flush=True)


def _jax_setup(cache: str, deterministic: bool = True):
  from ordered_jax import environment  # pylint: disable=g-import-not-at-top
  environment.configure(deterministic=deterministic, matmul_precision='highest',
                        compilation_cache=cache)


def _peak_bytes():
  """Peak device memory of this process (None where the backend does not say: CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def _compiled(fn, *args, **static):
  """(AOT-compiled ``fn`` for ``args``, seconds to lower and compile)."""
  t = time.perf_counter()
  out = fn.lower(*args, **static).compile()
  return out, time.perf_counter() - t


def _train_epochs(job, key, fn, state, b, epochs):
  """Runs ``fn`` (a compiled epoch) at the epoch numbers ``epochs``; saves each epoch's
  seconds under ``key`` (host sync on the metrics, as the experiment loop does)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  times, losses = [], []
  for e in epochs:
    t = time.perf_counter()
    state, m = fn(state, b.spec, b.data, jnp.int32(e))
    m = jax.device_get(m)
    times.append(time.perf_counter() - t)
    losses.append([float(x) for x in m['loss']])
    job.save(**{key: times})
  return state, times, losses


def _evals(job, key, fn, params, data, n):
  """``n`` timed evaluations (all train and test pairs); the last one's accuracies."""
  import jax  # pylint: disable=g-import-not-at-top
  from ordered_jax import train  # pylint: disable=g-import-not-at-top
  times = []
  for _ in range(n):
    t = time.perf_counter()
    counts = jax.device_get(fn(params, data))
    times.append(time.perf_counter() - t)
    job.save(**{key: times})
  acc = train.accuracies(counts, data)
  return times, {k: [round(float(v), 4) for v in vs] for k, vs in acc.items()}


def _median_after(times, warmup):
  timed = times[warmup:] or times
  return statistics.median(timed)


def job_paper(job: Job, r: int):
  """The paper config with R runs: compile, then train and evaluation epochs timed apart."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ordered_jax import experiment, orderings, runs  # pylint: disable=g-import-not-at-top
  config = paper_config(job.dry)
  if r == 4:
    what = 'the four strategies (stride, random, fixed-random, target), one shared data set'
    config.strategy = 'all'
  elif r == 1:
    what = 'stride, seed 199'
  else:
    what = f'stride, seeds 0..{r - 1} (each its own data set)'
    config.seeds = tuple(range(r))
  warmup, timed = (0, job.s['r16_timed']) if r >= 16 else (job.s['warmup'], job.s['timed'])
  spe = orderings.steps_per_epoch(runs.sizes(config)[0], config.batch_size)
  job.save(runs=r, batch=what, steps_per_epoch=spe, train_pairs=runs.sizes(config)[0],
           test_pairs=runs.sizes(config)[1], warmup_epochs=warmup, timed_epochs=timed)
  t = time.perf_counter()
  b = experiment.build(config)
  jax.block_until_ready(b.state)
  job.save(build_s=time.perf_counter() - t)
  train_fn, s = _compiled(b.trainer.epoch, b.state, b.spec, b.data, jnp.int32(0),
                          do_eval=False)
  job.save(compile_train_s=s)
  eval_fn, s = _compiled(b.trainer.evaluate, b.state.params, b.data)
  job.save(compile_eval_s=s)
  state, times, _ = _train_epochs(job, 'train_epoch_times_s', train_fn, b.state, b,
                                  range(warmup + timed))
  t_train = _median_after(times, warmup)
  job.save(epoch_train_s=t_train, runs_x_steps_per_s=r * spe / t_train)
  times, acc = _evals(job, 'eval_times_s', eval_fn, state.params, b.data, warmup + timed)
  t_eval = _median_after(times, warmup)
  job.save(epoch_eval_s=t_eval, epoch_s=t_train + t_eval, accuracies=acc,
           peak_bytes=_peak_bytes())


def job_precision(job: Job, precisions=('highest', 'tensorfloat32')):
  """Paper-size epoch seconds under each matmul precision (same start), then a short run of
  the tiny preset under each, evaluated every epoch: do the accuracies differ?"""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ordered_jax import experiment, train  # pylint: disable=g-import-not-at-top
  warmup, timed = job.s['warmup'], job.s['timed']
  paper, short = {}, {}
  job.save(precisions=list(precisions), paper=paper, short_run=short)

  def compiled(b, prec):
    with jax.default_matmul_precision(prec):
      train_fn, c_train = _compiled(b.trainer.epoch, b.state, b.spec, b.data, jnp.int32(0),
                                    do_eval=False)
      eval_fn, c_eval = _compiled(b.trainer.evaluate, b.state.params, b.data)
    return train_fn, eval_fn, c_train + c_eval

  for prec in precisions:
    b = experiment.build(paper_config(job.dry))
    train_fn, eval_fn, c = compiled(b, prec)
    row = paper[prec] = {'compile_s': c}
    state, times, losses = _train_epochs(job, f'{prec}_train_times_s', train_fn, b.state, b,
                                         range(warmup + timed))
    row.update(epoch_train_s=_median_after(times, warmup), losses=[l[0] for l in losses])
    times, acc = _evals(job, f'{prec}_eval_times_s', eval_fn, state.params, b.data, 2)
    row.update(epoch_eval_s=times[-1], accuracies=acc)
    job.save()
  config = short_config(job.dry)
  for prec in precisions:
    b = experiment.build(config)
    train_fn, eval_fn, _ = compiled(b, prec)
    state, val, tr, loss = b.state, [], [], []
    t = time.perf_counter()
    for e in range(job.s['short_epochs']):
      state, m = train_fn(state, b.spec, b.data, jnp.int32(e))
      acc = train.accuracies(jax.device_get(eval_fn(state.params, b.data)), b.data)
      val.append(float(acc['validation_accuracy'][0]))
      tr.append(float(acc['training_accuracy'][0]))
      loss.append(float(jax.device_get(m['loss'])[0]))
    short[prec] = {'epochs': len(loss), 'seconds': time.perf_counter() - t,
                   'validation_accuracy': val, 'training_accuracy': tr, 'loss': loss}
    job.save()
  a, b_ = (short[p] for p in precisions[:2])
  diff = [e for e in range(len(a['loss'])) if (a['loss'][e], a['validation_accuracy'][e],
                                               a['training_accuracy'][e]) !=
          (b_['loss'][e], b_['validation_accuracy'][e], b_['training_accuracy'][e])]
  job.save(short_run_identical=not diff, short_run_first_difference=diff[0] if diff else None,
           short_run_max_val_acc_diff=max(abs(x - y) for x, y in zip(
               a['validation_accuracy'], b_['validation_accuracy'])),
           short_run_final_val_acc={p: short[p]['validation_accuracy'][-1] for p in short},
           paper_train_speedup=paper[precisions[0]]['epoch_train_s'] /
           paper[precisions[1]]['epoch_train_s'],
           peak_bytes=_peak_bytes())


def _start_main(flags, workdir, deterministic, cache):
  """main.py in a fresh process (XLA_FLAGS without the deterministic flag unless asked):
  (the process, its start time, workdir)."""
  env = dict(os.environ, PYTHONUNBUFFERED='1', ORDERED_JAX_CACHE=cache)
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if not f.startswith('--xla_gpu_deterministic_ops'))
  cmd = [sys.executable, os.path.join(ROOT, 'main.py'), *flags, f'--workdir={workdir}',
         f'--config.deterministic={str(deterministic).lower()}']
  shutil.rmtree(workdir, ignore_errors=True)
  return (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True), time.perf_counter(), workdir)


def _finish_main(started, timeout):
  """Waits for a ``_start_main`` process: (wall seconds, JSONL bytes, summary, environment)."""
  proc, t, workdir = started
  _, err = proc.communicate(timeout=timeout)
  wall = time.perf_counter() - t
  if proc.returncode:
    raise RuntimeError(f'main.py exited {proc.returncode}: '
                       f'{(err.strip().splitlines() or [""])[-1][:300]}')
  run = os.path.join(workdir, 'stride')
  with open(os.path.join(run, 'stride.jsonl'), 'rb') as f:
    jsonl = f.read()
  with open(os.path.join(run, 'summary.json')) as f:
    summary = json.load(f)
  with open(os.path.join(run, 'experiment_config.json')) as f:
    env_meta = json.load(f)['environment']
  return wall, jsonl, summary, env_meta


def _compare_jsonl(a: bytes, b: bytes) -> dict:
  la, lb = a.splitlines(), b.splitlines()
  first = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), None)
  out = {'identical': a == b, 'rows': [len(la), len(lb)], 'first_differing_row': first}
  if first is not None:
    ra, rb = json.loads(la[first]), json.loads(lb[first])
    out['differing_keys'] = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
  return out


def job_determinism(job: Job, cache: str, deadline: float):
  """The tiny preset twice per setting, each in a fresh process; JSONL bit for bit. One
  process at a time (the timings are figures); --dry_run runs the on and off processes
  side by side (on a CPU that saves a third of the section and changes no bit)."""
  epochs = job.s['det_epochs']
  job.save(preset=f'configs/tiny.py, {epochs} epochs' + (' (dry-run sizes)' if job.dry else ''))
  work = os.path.dirname(job.path)
  flags = tiny_flags(job.dry, epochs)
  plan = [(True, 0), (True, 1), (False, 0), (False, 1)]
  if job.dry:
    plan = [(True, 0), (False, 0), (True, 1), (False, 1)]
  start = lambda det, i: _start_main(flags, os.path.join(work, f'det-{int(det)}-{i}'), det,
                                     cache)
  started, outs = {}, {}
  for det, i in plan:
    if job.dry and not started.get((det, i)):  # this process and its twin of the other flag
      started.update({(d, i): start(d, i) for d in (True, False)})
    key = 'deterministic_ops_on' if det else 'deterministic_ops_off'
    row = job.result.setdefault(key, {})
    proc = started.pop((det, i), None) or start(det, i)
    wall, outs[det, i], summary, env = _finish_main(proc, max(1.0, deadline - time.time()))
    t = summary['timing']
    row.setdefault('process_wall_s', []).append(wall)
    row.setdefault('train_s', []).append(t['duration_seconds'])
    row.setdefault('compile_s', []).append(t['compile_seconds'])
    row['epochs_trained'] = summary['training']['epochs_trained']
    row['xla_flags'] = env['xla_flags']
    if i == 1:
      row.update(_compare_jsonl(outs[det, 0], outs[det, 1]))
      row['train_s_per_epoch'] = statistics.median(row['train_s']) / max(
          1, row['epochs_trained'])
    job.save(environment=env)
  on, off = job.result['deterministic_ops_on'], job.result['deterministic_ops_off']
  job.save(flag_cost=on['train_s_per_epoch'] / off['train_s_per_epoch'])


def job_probes(job: Job):
  """probes.group=full at paper size (--dry_run: the norms probe alone, which compiles in
  seconds on a CPU): a probe epoch (curvature fires, as at every probe epoch of the
  paper's 1,172-step epochs) and an epoch between probe epochs, each with evaluation as in
  a run, against the plain epoch (training, then evaluation: paper_r1's programs)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import probes  # pylint: disable=g-import-not-at-top
  from ordered_jax import experiment  # pylint: disable=g-import-not-at-top
  from probes import curvature  # pylint: disable=g-import-not-at-top
  config = paper_config(job.dry)
  if job.dry:
    config.probes.names = 'norms'
  else:
    config.probes.group = 'full'
  ps = probes.build(config)
  every = config.probe_every
  curv = next((p for p in ps if isinstance(p, curvature.Curvature)), None)
  job.save(probes=[p.name for p in ps], probe_every=every,
           curvature_fires=None if curv is None else bool(curv.fires(jnp.int32(every))))
  b = experiment.build(config, ps)
  probe_fn, s = _compiled(b.trainer.epoch, b.state, b.spec, b.data, jnp.int32(0),
                          do_eval=True, do_probe=True)
  job.save(compile_probe_s=s)
  between_fn, s = _compiled(b.trainer.epoch, b.state, b.spec, b.data, jnp.int32(0),
                            do_eval=True, do_probe=False)
  job.save(compile_between_s=s)
  # Epoch 1 warms up, 2 is timed; epoch `every` is a probe epoch.
  state, times, _ = _train_epochs(job, 'between_times_s', between_fn, b.state, b, [1, 2])
  job.save(between_s=times[-1])
  state, times, _ = _train_epochs(job, 'probe_times_s', probe_fn, state, b, [every])
  job.save(probe_epoch_s=times[-1], peak_bytes_with_probes=_peak_bytes())
  del state, b
  plain = experiment.build(paper_config(job.dry))
  train_fn, c_train = _compiled(plain.trainer.epoch, plain.state, plain.spec, plain.data,
                                jnp.int32(0), do_eval=False)
  eval_fn, c_eval = _compiled(plain.trainer.evaluate, plain.state.params, plain.data)
  job.save(compile_plain_s=c_train + c_eval)
  state, times, _ = _train_epochs(job, 'plain_times_s', train_fn, plain.state, plain, [1, 2])
  evals, _ = _evals(job, 'plain_eval_times_s', eval_fn, state.params, plain.data, 2)
  plain_s = times[-1] + evals[-1]
  t = job.result
  amortised = ((every - 1) * t['between_s'] + t['probe_epoch_s']) / every
  job.save(plain_s=plain_s, between_x=t['between_s'] / plain_s,
           probe_epoch_x=t['probe_epoch_s'] / plain_s, amortised_x=amortised / plain_s)


def run_job(name: str, path: str, dry: bool, cache: str, deadline: float) -> None:
  """The body of a section's process."""
  job = Job(path, dry)
  if name != 'determinism':  # that one starts main.py processes and keeps off the device
    _jax_setup(cache)
    from ordered_jax import environment  # pylint: disable=g-import-not-at-top
    job.save(environment=environment.metadata())
  if name.startswith('paper_r'):
    job_paper(job, int(name[len('paper_r'):]))
  elif name == 'precision':
    job_precision(job)
  elif name == 'determinism':
    job_determinism(job, cache, deadline)
  elif name == 'probes':
    job_probes(job)
  job.save(status='ok')


# ---------------------------------------------------------------------------------------
# The parent: runs each section's process under the budget, merges, writes JSON and Markdown


def _write_json(path: str, obj) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def projection(sections: dict) -> dict:
  """GPU-hours of the paper's table from the measured epochs (training + evaluation)."""
  r1 = sections.get('paper_r1') or {}
  r4 = sections.get('paper_r4') or {}
  pr = sections.get('probes') or {}
  out = {'epochs': PAPER_EPOCHS, 'reference_hours': round(sum(REFERENCE_HOURS.values()), 1),
         'reference_note': 'RTX 4090, --with-hooks full, the four runs one after another '
                           '(2.6 + 3.2 + 25.9 + 25.9 h)',
         'note': 'epoch = training + evaluation on all 1.3M pairs, timed apart and added; '
                 'a batch runs until its last run stops (stopped runs are masked, not '
                 'removed); full instrumentation = the measured amortised factor at R = 1 '
                 '(9 epochs between probe epochs, 1 probe epoch with curvature)'}
  full_x = pr.get('amortised_x')
  out['full_instrumentation_x'] = full_x
  rows = {}
  if r1.get('epoch_s'):
    rows['sequential_R1'] = sum(PAPER_EPOCHS.values()) * r1['epoch_s'] / 3600
  if r4.get('epoch_s'):
    rows['batched_R4'] = max(PAPER_EPOCHS.values()) * r4['epoch_s'] / 3600
  for k, h in list(rows.items()):
    out[f'{k}_hours'] = h
    if full_x:
      out[f'{k}_full_hours'] = h * full_x
  for k in [k for k in out if k.endswith('_hours') and k != 'reference_hours']:
    out[k.replace('_hours', '_vs_reference')] = out['reference_hours'] / out[k]
  return out


def _fmt(x, unit=''):
  if x is None:
    return '-'
  if isinstance(x, bool):
    return 'yes' if x else 'no'
  if isinstance(x, float):
    return (f'{x:.3g}' if abs(x) < 100 else f'{x:,.0f}') + unit
  return f'{x}{unit}'


def _gib(b):
  return None if b is None else b / 2**30


def markdown(report: dict) -> str:
  """One table: section, figure, value (GiB, seconds, hours, ratios)."""
  s = report['sections']
  env = report.get('environment') or {}
  lines = [f"# GPU check{' (DRY RUN: tiny sizes, figures meaningless)' if report['dry_run'] else ''}",
           '', f"{env.get('device_kind', '?')} x{env.get('device_count', '?')} "
           f"({env.get('backend', '?')}), jax {env.get('jax_version', '?')}, "
           f"{report.get('nvidia_smi') or 'no nvidia-smi'}; started {report['started']}, "
           f"budget {report['budget_s']} s, {report.get('elapsed_s', 0):.0f} s used.", '',
           '| section | figure | value |', '|---|---|---|']

  def row(sec, what, val):
    lines.append(f'| {sec} | {what} | {val} |')

  for name in report['order']:
    r = s.get(name) or {}
    st = r.get('status', 'not run')
    if st != 'ok':
      row(name, 'status', f"**{st}**" + (f": {r.get('error', '')[:200]}" if r.get('error') else ''))
    if name.startswith('paper_r'):
      row(name, 'batch', r.get('batch', '-'))
      row(name, 'compile train / eval', f"{_fmt(r.get('compile_train_s'), ' s')} / "
          f"{_fmt(r.get('compile_eval_s'), ' s')}")
      row(name, 's/epoch train / eval / total', f"{_fmt(r.get('epoch_train_s'))} / "
          f"{_fmt(r.get('epoch_eval_s'))} / **{_fmt(r.get('epoch_s'))}**")
      row(name, 'runs x steps/s', _fmt(r.get('runs_x_steps_per_s')))
      row(name, 'peak memory', _fmt(_gib(r.get('peak_bytes')), ' GiB'))
    elif name == 'precision':
      for p, v in (r.get('paper') or {}).items():
        row(name, f'{p}: s/epoch train / eval', f"{_fmt(v.get('epoch_train_s'))} / "
            f"{_fmt(v.get('epoch_eval_s'))}")
      row(name, 'training speed-up, tensorfloat32 over highest',
          _fmt(r.get('paper_train_speedup'), 'x'))
      row(name, 'short run identical', _fmt(r.get('short_run_identical')))
      row(name, 'short run: first differing epoch, max val-acc diff',
          f"{_fmt(r.get('short_run_first_difference'))}, "
          f"{_fmt(r.get('short_run_max_val_acc_diff'))}")
      row(name, 'short run final val acc', _fmt(r.get('short_run_final_val_acc')))
    elif name == 'determinism':
      for key in ('deterministic_ops_on', 'deterministic_ops_off'):
        v = r.get(key) or {}
        row(name, f'{key}: JSONL identical', f"**{_fmt(v.get('identical'))}** "
            f"(rows {v.get('rows', '-')}, first diff {_fmt(v.get('first_differing_row'))})")
        row(name, f'{key}: train s/epoch', _fmt(v.get('train_s_per_epoch')))
      row(name, 'cost of the flag (on / off)', _fmt(r.get('flag_cost'), 'x'))
    elif name == 'probes':
      row(name, 'compile probe / between / plain', f"{_fmt(r.get('compile_probe_s'), ' s')} / "
          f"{_fmt(r.get('compile_between_s'), ' s')} / {_fmt(r.get('compile_plain_s'), ' s')}")
      row(name, 's probe epoch / between / plain', f"{_fmt(r.get('probe_epoch_s'))} / "
          f"{_fmt(r.get('between_s'))} / {_fmt(r.get('plain_s'))}")
      row(name, 'x plain: probe / between / amortised', f"{_fmt(r.get('probe_epoch_x'))} / "
          f"{_fmt(r.get('between_x'))} / **{_fmt(r.get('amortised_x'))}**")
      row(name, 'peak memory', _fmt(_gib(r.get('peak_bytes_with_probes')), ' GiB'))
  p = report.get('projection') or {}
  for k, label in (('sequential_R1', 'four runs one after another'),
                   ('batched_R4', 'four runs as one batch')):
    row('projection', f'{label}, no probes', f"{_fmt(p.get(k + '_hours'), ' h')} "
        f"({_fmt(p.get(k + '_vs_reference'), 'x')} vs {p.get('reference_hours')} h)")
    row('projection', f'{label}, full probes', f"{_fmt(p.get(k + '_full_hours'), ' h')} "
        f"({_fmt(p.get(k + '_full_vs_reference'), 'x')} vs {p.get('reference_hours')} h)")
  return '\n'.join(lines) + '\n'


def _nvidia_smi():
  if not shutil.which('nvidia-smi'):
    return None
  try:
    return subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                           '--format=csv,noheader'], capture_output=True, text=True,
                          timeout=20).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _requirements_check():
  """Installed versions outside requirements.txt's ranges (the device's image is not
  pinned): {name: 'version (wanted spec)'} or {name: 'missing'}."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  try:
    from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {'packaging': 'missing: ranges not checked'}
  out = {}
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    for line in f:
      line = line.split('#')[0].strip()
      if not line or line.startswith('pytest'):
        continue
      req = Requirement(line)
      try:
        v = importlib.metadata.version(req.name)
      except importlib.metadata.PackageNotFoundError:
        out[req.name] = 'missing'
        continue
      if req.specifier and not req.specifier.contains(v, prereleases=True):
        out[req.name] = f'{v} (wanted {req.specifier})'
  return out


class Report:
  """The merged result, rewritten to --out as it grows."""

  def __init__(self, out: str, args):
    self.out = out
    self.t0 = time.time()
    self.data = {'dry_run': args.dry_run, 'budget_s': args.budget_s,
                 'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                 'order': list(args.sections), 'argv': sys.argv[1:],
                 'nvidia_smi': _nvidia_smi(), 'requirements_out_of_range': _requirements_check(),
                 'environment': None, 'sections': {}, 'projection': None}
    self.lock = threading.Lock()

  def update(self, name: str, result: dict | None):
    with self.lock:
      if result is not None:
        self.data['sections'][name] = result
        if self.data['environment'] is None and result.get('environment'):
          self.data['environment'] = result['environment']
      self.write()

  def write(self):
    self.data['elapsed_s'] = time.time() - self.t0
    self.data['projection'] = projection(self.data['sections'])
    _write_json(os.path.join(self.out, JSON_NAME), self.data)
    tmp = os.path.join(self.out, MD_NAME + '.tmp')
    with open(tmp, 'w') as f:
      f.write(markdown(self.data))
    os.replace(tmp, os.path.join(self.out, MD_NAME))


def _stream(proc, name, tail):
  for line in proc.stdout:
    tail.append(line.rstrip())
    print(f'[{name}] {line.rstrip()}', flush=True)


def run_section(name: str, args, work: str, cache: str, report: Report, deadline: float):
  """One section's process, stopped at ``deadline``; its (partial) result is merged."""
  path = os.path.join(work, f'{name}.json')
  cmd = [sys.executable, os.path.abspath(__file__), f'--job={name}', f'--work={work}',
         f'--cache={cache}', f'--deadline={deadline}'] + (['--dry_run'] if args.dry_run else [])
  t = time.time()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True,
                          env=dict(os.environ, PYTHONUNBUFFERED='1'))
  tail = collections.deque(maxlen=20)
  reader = threading.Thread(target=_stream, args=(proc, name, tail), daemon=True)
  reader.start()
  status, last = None, 0.0
  while proc.poll() is None:
    if time.time() > deadline:
      os.killpg(proc.pid, signal.SIGKILL)  # the section's process group only
      proc.wait()
      status = 'stopped at the time budget'
      break
    time.sleep(0.1)
    if time.time() - last > 5:  # the partial result, in case this process is killed
      report.update(name, _read_json(path))
      last = time.time()
  reader.join(timeout=5)
  result = _read_json(path) or {}
  if status:
    result['status'] = status
  elif proc.returncode:
    result['status'] = 'failed'
    errors = [l for l in tail if l.strip()]
    result['error'] = errors[-1] if errors else f'exit code {proc.returncode}'
    result['log_tail'] = list(tail)
  result['section_wall_s'] = time.time() - t
  report.update(name, result)


class OneLineParser(argparse.ArgumentParser):
  """Bad flags: one line naming the flag, exit 2, no usage dump."""

  def error(self, message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv=None):
  ap = OneLineParser(description=__doc__.splitlines()[0])
  ap.add_argument('--out', help='folder for gpu_check.json and gpu_check.md')
  ap.add_argument('--budget_s', type=float, default=420.0,
                  help='wall seconds for all sections (default 420: fits an 8-minute run)')
  ap.add_argument('--sections', default=','.join(SECTIONS),
                  help=f'comma list, in order (default: {",".join(SECTIONS)})')
  ap.add_argument('--dry_run', action='store_true',
                  help='tiny sizes on any device, under a minute on a CPU (CI)')
  ap.add_argument('--job', help=argparse.SUPPRESS)
  ap.add_argument('--work', help=argparse.SUPPRESS)
  ap.add_argument('--cache', help=argparse.SUPPRESS)
  ap.add_argument('--deadline', type=float, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.job:
    run_job(args.job, os.path.join(args.work, f'{args.job}.json'), args.dry_run, args.cache,
            args.deadline)
    return 0
  if not args.out:
    ap.error('--out is required')
  args.sections = [s.strip() for s in args.sections.split(',') if s.strip()]
  bad = [s for s in args.sections if s not in SECTIONS]
  if bad:
    ap.error(f'--sections: unknown {bad[0]!r}; choose from {", ".join(SECTIONS)}')
  if args.budget_s <= 0:
    ap.error('--budget_s: must be positive')
  try:
    os.makedirs(args.out, exist_ok=True)
  except OSError as e:
    ap.error(f'--out: cannot create {args.out!r} ({e.strerror})')
  report = Report(args.out, args)
  report.write()
  end = report.t0 + args.budget_s
  work = tempfile.mkdtemp(prefix='gpu_check-')
  cache = os.environ.get('ORDERED_JAX_CACHE') or os.path.join(work, 'jax-cache')
  try:
    for name in args.sections:
      left = end - time.time()
      if left < (3 if args.dry_run else MIN_START_S):
        report.update(name, {'status': f'skipped: {left:.0f} s of the budget left'})
        continue
      cap = left if args.dry_run else min(left, SECTION_CAP_S[name])
      print(f'== {name} (up to {cap:.0f} s)', flush=True)
      run_section(name, args, work, cache, report, time.time() + cap)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  report.write()
  print(open(os.path.join(args.out, MD_NAME)).read(), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
