"""Training-dynamics probes: pure JAX functions run inside the jitted epoch.

``build(config)`` turns ``config.probes`` into the probe objects the trainer takes (see
``ordered_jax.instrument`` for the protocol and docs/probes.md for every metric).
"""

from __future__ import annotations

from absl import logging

from ordered_jax import experiment, orderings, runs, teacher
from probes import (counterfactual, curvature, dln, dynamics, fourier, gradients, progress,
                    solution, steps, weights)

# The reference's hooks ported so far, and our additions.
OBSERVERS = ('norms', 'consecutive', 'variance', 'attention', 'fourier', 'phases',
             'weight_tracking',
             'token_gradient', 'subspace_gradient_info', 'parameter_delta', 'path_length',
             'batch_dynamics', 'training_diagnostics')
NEEDS_REFERENCE = ('gradient_projection',)  # join the groups when reference weights are set
INTERVENTIONS = ('hessian', 'counterfactual', 'adam_dynamics')
# 'full' is the reference's observers + interventions (its debug counterfactual_validator
# only by name) plus our curvature and progress measures.
ADAM_FAMILY = ('adamw', 'adam')  # adam_dynamics (and curvature's Adam form) read Adam's state
GROUPS = {'none': (), 'minimal': (), 'observers': OBSERVERS, 'interventions': INTERVENTIONS,
          'full': OBSERVERS + INTERVENTIONS + ('curvature', 'progress')}


def _factories(config):
  cfg = experiment.model_config(config)
  c = config.probes.curvature
  spe = orderings.steps_per_epoch(runs.sizes(config)[0], config.batch_size)
  h, a = config.probes.hessian, config.probes.adam_dynamics
  cf, pm = config.probes.counterfactual, config.probes.progress
  ref = bool(config.probes.reference_weights)
  gn = config.probes.get('gradient_noise', {})
  return {
      'dln': lambda: dln.DLN(cfg.depth, teacher_W=_teacher_matrix(config)),
      'gradient_noise': lambda: dln.GradientNoise(chunk=gn.get('chunk', 64),
                                                  hessian=gn.get('hessian', True)),
      'norms': lambda: gradients.Norms(cfg),
      'consecutive': lambda: gradients.Consecutive(cfg),
      'variance': lambda: gradients.Variance(cfg),
      'phases': lambda: gradients.Phases(cfg),
      'token_gradient': lambda: gradients.TokenGradient(cfg),
      'attention': lambda: weights.Attention(cfg),
      'weight_tracking': lambda: weights.WeightTracking(cfg),
      'fourier': lambda: fourier.Fourier(cfg),
      'parameter_delta': dynamics.ParameterDelta,
      'path_length': dynamics.PathLength,
      'batch_dynamics': dynamics.BatchDynamics,
      'gradient_projection': lambda: solution.GradientProjection(cfg),
      'subspace_gradient_info': lambda: solution.SubspaceGradientInfo(
          cfg, with_reference=ref),
      'counterfactual': lambda: counterfactual.Counterfactual(
          cfg, k=cf.k, window=cf.window, parallel=cf.parallel, with_reference=ref),
      'counterfactual_validator': lambda: counterfactual.CounterfactualValidator(
          cfg, k=cf.k, parallel=cf.parallel, with_reference=ref),
      'training_diagnostics': lambda: dynamics.TrainingDiagnostics(spe),
      'hessian': lambda: steps.Hessian(
          spe, every=h.every_n_steps, burst=h.burst_length, warmup=h.warmup,
          keys=steps.hessian_keys(cfg, ref), cfg=cfg),
      'adam_dynamics': lambda: steps.AdamDynamics(
          spe, every=a.every_n_steps, burst=a.burst_length, warmup=a.warmup,
          b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
          keys=steps.ADAM_KEYS + (steps.ADAM_REFERENCE_KEYS if ref else ())),
      'progress': lambda: progress.ProgressMeasures(
          cfg, n_key=pm.n_key, strip_rows=pm.strip_rows, train_pairs=pm.train_pairs),
      'curvature': lambda: curvature.Curvature(
          adam=config.optimizer in ADAM_FAMILY, batch_size=c.batch_size, k=c.k, lanczos_steps=c.lanczos_steps,
          hutchinson_samples=c.hutchinson_samples, b1=config.adam_b1, b2=config.adam_b2,
          eps=config.adam_eps, every_n_steps=c.every_n_steps, steps_per_epoch=spe,
          probe_every=config.probe_every),
  }


def _teacher_matrix(config):
  """The teacher W* of a teacher task when every run shares it (a diagonal teacher, or
  one data seed), else None (the dln probe then has no teacher_distance)."""
  if not runs.is_teacher(config):
    return None
  kind = config.task.strip().partition(':')[2]
  seeds = {r.data_seed for r in runs.expand(config)}
  kw = runs.teacher_kw(config)
  if (kind == 'random' or kw['rotate']) and len(seeds) != 1:
    return None
  t = config.teacher
  return teacher.matrix(kind, t.dim, t.scale, next(iter(seeds)), **kw)


# Probes that see the model only through its parameter vector and loss: any model, any task.
MODEL_AGNOSTIC = ('parameter_delta', 'path_length', 'batch_dynamics', 'training_diagnostics',
                  'curvature', 'gradient_noise')
DLN_ONLY = ('dln',)  # read a deep linear network's layers
STEP_CADENCE = ('hessian', 'adam_dynamics', 'training_diagnostics')  # steps per epoch fixed
CYCLIC_TASKS = ('add', 'sub', 'mul', 'div', 'poly')  # two operands in Z_p


def unsupported(config) -> dict[str, str]:
  """{probe: why} for the probes this config's model or task cannot run: the others read
  the reference transformer's named parameters (embedding, attention, layers) and Fourier
  structure over Z_p of a two-operand task; the progress measures are for a + b only."""
  base = str(config.task).split(':')[0]
  if config.model == 'dln':
    why = "reads the reference transformer's parameters (model is 'dln')"
    return {n: why for n in _factories(config) if n not in MODEL_AGNOSTIC + DLN_ONLY}
  dln_why = {n: f'reads a deep linear network (model=dln; model is {config.model!r})'
             for n in DLN_ONLY}
  if config.model != 'reference':
    why = f"reads the reference transformer's parameters (model is {config.model!r})"
  elif base not in CYCLIC_TASKS:
    why = f'needs a two-operand task over Z_p ({", ".join(CYCLIC_TASKS)}); task is {config.task!r}'
  else:
    return dln_why if base == 'add' else {
        'progress': f'is defined for task add; task is {config.task!r}', **dln_why}
  return {**{n: why for n in _factories(config) if n not in MODEL_AGNOSTIC}, **dln_why}


def names(config) -> list[str]:
  """The enabled probe names: the group's, then ``probes.names``, without repeats."""
  group = config.probes.group
  if group not in GROUPS:
    raise runs.ConfigError('probes.group', f'must be one of {", ".join(GROUPS)}; got '
                           f'{group!r}')
  out = list(GROUPS[group])
  if config.optimizer not in ADAM_FAMILY:  # groups leave out what this optimiser lacks
    out = [n for n in out if n != 'adam_dynamics']
  if group != 'none':  # ... and what this model or task cannot run
    skip = unsupported(config)
    out = [n for n in out if n not in skip]
  if group in ('observers', 'full') and config.probes.reference_weights:
    out += list(NEEDS_REFERENCE)
  for n in (s.strip() for s in config.probes.names.split(',')):
    if n and n not in out:
      out.append(n)
  return out


def build(config) -> list:
  """The probe objects for ``config`` (validated: one-line ``ConfigError`` on bad input)."""
  factories = _factories(config)
  selected = names(config)
  for n in selected:
    if n not in factories:
      raise runs.ConfigError('probes.names', f'unknown probe {n!r}; available: '
                             f'{", ".join(factories)}')
  skip = unsupported(config)
  left_out = [n for n in GROUPS.get(config.probes.group, ()) if n in skip]
  if left_out:
    logging.info('probes.group=%s leaves out what this model/task cannot run: %s',
                 config.probes.group, ', '.join(left_out))
  for n in selected:
    if n in skip:
      raise runs.ConfigError('probes.names', f'probe {n!r} {skip[n]}; probes for any model '
                             f'and task: {", ".join(MODEL_AGNOSTIC)}')
  per_step = [n for n in selected if n in STEP_CADENCE or (
      n == 'curvature' and config.probes.curvature.every_n_steps)]
  if per_step and runs.changes(config, 'batch_size'):
    raise runs.ConfigError('interventions.batch_size', f'probe {per_step[0]!r} counts '
                           'optimiser steps with one batch size; drop it or the batch-size '
                           'change')
  if 'adam_dynamics' in selected and config.optimizer not in ADAM_FAMILY:
    raise runs.ConfigError('probes.names', f"probe 'adam_dynamics' reads Adam's moments: "
                           f"optimizer must be adamw or adam; got {config.optimizer!r}")
  needing = [n for n in selected if n in NEEDS_REFERENCE]
  if needing and not config.probes.reference_weights:
    raise runs.ConfigError('probes.reference_weights', f'probe {needing[0]!r} needs reference '
                           "weights: 'auto' (an earlier run of this config in the workdir) "
                           'or the workdir of a finished run')
  for probe in ('hessian', 'adam_dynamics'):
    for field in ('every_n_steps', 'burst_length', 'warmup'):
      v = config.probes[probe][field]
      lo = 0 if field == 'warmup' else 1
      if not isinstance(v, int) or v < lo:
        raise runs.ConfigError(f'probes.{probe}.{field}', f'must be an integer >= {lo}; got {v!r}')
  pm = config.probes.progress
  for field, hi in (('n_key', (config.p - 1) // 2), ('strip_rows', config.p),
                    ('train_pairs', None)):  # train_pairs: at most the whole training set
    if 'progress' not in selected:  # its bounds depend on p: only checked when it runs
      hi = None
    if not isinstance(pm[field], int) or pm[field] < 1 or (hi is not None and pm[field] > hi):
      allowed = 'an integer >= 1' if hi is None else f'an integer in [1, {hi}]'
      raise runs.ConfigError(f'probes.progress.{field}', f'must be {allowed}; '
                             f'got {pm[field]!r}')
  if not isinstance(config.probes.every, int) or isinstance(config.probes.every, bool) or (
      config.probes.every < 1):
    raise runs.ConfigError('probes.every', 'must be an integer >= 1 (1 = every epoch, the '
                           f'reference); got {config.probes.every!r}')
  for field, lo in (('k', 1), ('window', 1), ('parallel', 0), ('every_epoch_until', 0)):
    v = config.probes.counterfactual[field]
    if not isinstance(v, int) or v < lo:
      raise runs.ConfigError(f'probes.counterfactual.{field}', f'must be an integer >= {lo}'
                             f'{" (0: all k at once)" if field == "parallel" else ""}; '
                             f'got {v!r}')
  c = config.probes.curvature
  for field in ('batch_size', 'k', 'lanczos_steps'):
    if not isinstance(c[field], int) or c[field] < 1:
      raise runs.ConfigError(f'probes.curvature.{field}', f'must be an integer >= 1; got '
                             f'{c[field]!r}')
  if c.k > c.lanczos_steps:
    raise runs.ConfigError('probes.curvature.k', f'must be <= lanczos_steps '
                           f'({c.lanczos_steps}); got {c.k}')
  if not isinstance(c.every_n_steps, int) or c.every_n_steps < 0:
    raise runs.ConfigError('probes.curvature.every_n_steps', 'must be an integer >= 0 (0 = '
                           f'every probe epoch); got {c.every_n_steps!r}')
  if not isinstance(c.hutchinson_samples, int) or c.hutchinson_samples < 1:
    raise runs.ConfigError('probes.curvature.hutchinson_samples',
                           f'must be an integer >= 1; got {c.hutchinson_samples!r}')
  gn = config.probes.get('gradient_noise', {})
  if not isinstance(gn.get('chunk', 64), int) or gn.get('chunk', 64) < 1:
    raise runs.ConfigError('probes.gradient_noise.chunk', 'must be an integer >= 1; got '
                           f'{gn.get("chunk")!r}')
  if not isinstance(gn.get('hessian', True), bool):
    raise runs.ConfigError('probes.gradient_noise.hessian', 'must be true or false; got '
                           f'{gn.get("hessian")!r}')
  return [factories[n]() for n in selected]
