"""Golden outputs: micro runs whose outputs must stay bit-identical across refactors.

``cases()`` names small configs (every ordering, resonant, probes on, several seeds, a
sweep's run ids); ``outputs(name, workdir)`` trains one and returns everything it wrote
that does not depend on the clock: every JSONL row (floats exactly, as JSON writes
them), the summaries' metrics and a sha256 of each run's final weights. The recorded
values live in ``tests/data/golden/<case>.json``; ``python tests/make_golden.py`` writes
them again (do that, in its own commit saying why, only when a change is *meant* to
change trajectories). ``tests/test_golden.py`` compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import jax
import numpy as np

from tests.conftest import micro_config

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_DIR = os.path.join(HERE, 'data', 'golden')
ALL_ORDERINGS = 'stride,target,random,fixed-random,alternating'
PROBES = 'norms,consecutive,fourier,parameter_delta,training_diagnostics,counterfactual'


def cases() -> dict:
  """name -> config overrides of ``micro_config`` (or a sweep: see ``sweep_ids``)."""
  return {
      'orderings': dict(strategy=ALL_ORDERINGS),
      'resonant': dict(strategy='resonant'),
      'probes': dict(strategy='stride,random', seeds=(3, 4), epochs=4, probe_every=2),
  }


def _probe_overrides(config):
  if config.strategy == 'stride,random':
    with config.unlocked():
      config.probes.names = PROBES
      config.probes.counterfactual.k = 2
      config.probes.counterfactual.window = 2
  return config


def config_of(name: str):
  c = micro_config(**cases()[name])
  return _probe_overrides(c)


def environment() -> dict:
  """What the recorded floats depend on besides the code (elsewhere: a tolerance)."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'machine': platform.machine(), 'backend': jax.default_backend(), 'cpu': _cpu()}


def _cpu() -> str:
  """The CPU model and the vector extensions XLA:CPU generates code for: another CPU of
  the same architecture may round differently (e.g. AVX-512 against AVX2 kernels)."""
  model, flags = platform.processor(), set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name':
          model = value.strip()
        elif key.strip() == 'flags':
          flags = set(value.split())
          break
  except OSError:
    pass
  wanted = ('avx', 'avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_tile', 'asimd', 'sve')
  return ' '.join([model] + [f for f in wanted if f in flags])


def params_sha256(tree) -> str:
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(a.dtype).encode() + str(a.shape).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def outputs(name: str, workdir: str) -> dict:
  """Train case ``name`` in ``workdir``; its clock-free outputs."""
  import probes  # pylint: disable=g-import-not-at-top
  from ordered_jax import checkpoint, experiment, models, runs  # pylint: disable=g-import-not-at-top
  config = config_of(name)
  summaries = experiment.run(config, workdir, quiet=True, probes=probes.build(config))
  model = models.Model(experiment.model_config(runs.resolve(config)))
  out = {}
  for s in summaries:
    d = os.path.join(workdir, s['run'])
    with open(os.path.join(d, f"{s['run']}.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    out[s['run']] = {
        'rows': rows,
        'final_eval': s['final_eval'], 'grokking': s['grokking'],
        'training': {k: v for k, v in s['training'].items() if k != 'device'},
        'params_sha256': params_sha256(checkpoint.load_params(d, model)),
    }
  return out


def sweep_ids() -> dict:
  """Run ids of a small sweep (the ids name run folders: they must not change)."""
  from ordered_jax import sweeper  # pylint: disable=g-import-not-at-top
  c = micro_config()
  with c.unlocked():
    c.sweep.grid.seed = '0,1'
    c.sweep.grid.strategy = 'stride,random,alternating'
    c.sweep.grid.weight_decay = '0.1,1.0'
  ids = {}
  for it in sweeper.plan(c):
    ids[json.dumps(it.keys, sort_keys=True)] = it.id
  r = micro_config(strategy='resonant')
  with r.unlocked():
    r.sweep.grid.seed = '0,1'
  for it in sweeper.plan(r):
    ids[json.dumps(it.keys, sort_keys=True)] = it.id
  return ids


def path(name: str) -> str:
  return os.path.join(GOLDEN_DIR, f'{name}.json')
