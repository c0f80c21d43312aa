"""Training-dynamics probes: pure JAX functions run inside the jitted epoch.

``build(config)`` turns ``config.probes`` into the probe objects the trainer takes (see
``ordered_jax.instrument`` for the protocol, ``probes.registry`` for how a probe declares
itself, and docs/probes.md for every metric).
"""

from __future__ import annotations

import importlib
import pkgutil

from absl import logging

from ordered_jax import runs
from probes import registry

# Importing a probe module registers its probes (probes.registry): the built-ins in this
# order (that of --probes_list), then every other module here by name (a new probe is
# one new file: docs/extending.md).
_BUILT_IN = ('gradients', 'weights', 'fourier', 'solution', 'dynamics', 'steps',
             'counterfactual', 'curvature', 'progress', 'dln')
_NOT_PROBES = ('registry', 'catalog', 'common', 'spectra')
for _name in _BUILT_IN + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                                      if m.name not in _BUILT_IN + _NOT_PROBES)):
  importlib.import_module(f'{__name__}.{_name}')

ADAM_FAMILY = registry.ADAM_FAMILY
CYCLIC_TASKS = registry.CYCLIC_TASKS
# The reference's hook groups as registered: observers, interventions; 'full' is both plus
# our curvature and progress measures (the reference's debug counterfactual_validator only
# by name); probes needing reference weights join observers and full when they are set.
GROUPS = {g: registry.group(g) for g in registry.GROUP_NAMES}
OBSERVERS, INTERVENTIONS = GROUPS['observers'], GROUPS['interventions']
# Probes that see the model only through its parameter vector and loss: any model, any task.
MODEL_AGNOSTIC = tuple(n for n, e in registry.entries().items()
                       if not e.needs.models and not e.needs.named and not e.needs.tasks)


def unsupported(config) -> dict[str, str]:
  """{probe: why} for the registered probes this config's model or task cannot run (their
  ``Needs``: most read the reference transformer's named parameters and a two-operand task
  over Z_p)."""
  out = {}
  for name, e in registry.entries().items():
    why = registry.why_not(e, config)
    if why:
      out[name] = why
  return out


def names(config) -> list[str]:
  """The enabled probe names: the group's, then ``probes.names``, without repeats."""
  group = config.probes.group
  if group not in GROUPS:
    raise runs.ConfigError('probes.group', f'must be one of {", ".join(GROUPS)}; got '
                           f'{group!r}')
  out = list(registry.group(group, reference=bool(config.probes.reference_weights)))
  entries = registry.entries()
  # Groups leave out what this optimiser, model or task cannot run.
  out = [n for n in out if not entries[n].needs.optimizers
         or config.optimizer in entries[n].needs.optimizers]
  skip = unsupported(config)
  out = [n for n in out if n not in skip]
  for n in (s.strip() for s in config.probes.names.split(',')):
    if n and n not in out:
      out.append(n)
  return out


def build(config) -> list:
  """The probe objects for ``config`` (validated: one-line ``ConfigError`` on bad input)."""
  if not isinstance(config.probes.every, int) or isinstance(config.probes.every, bool) or (
      config.probes.every < 1):
    raise runs.ConfigError('probes.every', 'must be an integer >= 1 (1 = every epoch, the '
                           f'reference); got {config.probes.every!r}')
  entries = registry.entries()
  opts = registry.check_options(config)  # every section checked
  selected = names(config)
  for n in selected:
    if n not in entries:
      raise runs.ConfigError('probes.names', f'unknown probe {n!r}; available: '
                             f'{", ".join(entries)}')
  skip = unsupported(config)
  left_out = [n for n in GROUPS.get(config.probes.group, ()) if n in skip]
  if left_out:
    logging.info('probes.group=%s leaves out what this model/task cannot run: %s',
                 config.probes.group, ', '.join(left_out))
  for n in selected:
    if n in skip:
      raise runs.ConfigError('probes.names', f'probe {n!r} {skip[n]}; probes for any model '
                             f'and task: {", ".join(MODEL_AGNOSTIC)}')
  per_step = [n for n in selected if registry.fixed_steps(entries[n], opts[n])]
  if per_step and runs.changes(config, 'batch_size'):
    raise runs.ConfigError('interventions.batch_size', f'probe {per_step[0]!r} counts '
                           'optimiser steps with one batch size; drop it or the batch-size '
                           'change')
  for n in selected:
    need = entries[n].needs
    if need.optimizers and config.optimizer not in need.optimizers:
      raise runs.ConfigError('probes.names', f"probe {n!r} reads Adam's moments: "
                             f"optimizer must be {' or '.join(need.optimizers)}; got "
                             f"{config.optimizer!r}" if need.optimizers == ADAM_FAMILY else
                             f"probe {n!r} needs optimizer {' or '.join(need.optimizers)}; "
                             f"got {config.optimizer!r}")
    if need.reference_weights and not config.probes.reference_weights:
      raise runs.ConfigError('probes.reference_weights', f'probe {n!r} needs reference '
                             "weights: 'auto' (an earlier run of this config in the workdir) "
                             'or the workdir of a finished run')
  ctx = registry.context(config)
  for n in selected:
    registry.check(entries[n], opts[n], ctx)
  return [entries[n].make(ctx, opts[n]) for n in selected]
