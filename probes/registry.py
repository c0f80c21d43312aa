"""The probe registry: each probe module declares its probes here, and nothing else lists them.

A declaration (``register``) says, for one probe name:

* ``make(ctx, options)``: builds the probe object (``ordered_jax.instrument``'s protocol)
  from a ``Context`` (the config and what is derived from it once) and its options;
* ``needs``: what it must have to run (``Needs``): a model, a task, an optimiser family,
  reference weights, a fixed number of optimiser steps per epoch. ``probes.unsupported``,
  the groups' filtering, ``probes.build``'s refusals and ``--probes_list``'s support column
  are all read from it;
* ``groups`` and ``rank``: the groups it joins (``observers``, ``interventions``; ``full``
  holds both) and its place in them (the reference's hook order: the order of the keys
  in a row);
* ``options``: a dataclass built from ``config.probes.<options_key>`` (absent from the
  config: its defaults), validating itself in ``__post_init__`` by raising
  ``ConfigError(<field>, ...)``, re-raised here with its full path;
* ``check(options, ctx)``: validation that depends on the config (bounds in p), run only
  when the probe is enabled;
* ``doc``: its ``probes.catalog.Probe`` entry, for a probe whose module documents itself
  (the built-in ones are documented in ``probes/catalog.py``);
* ``memory(options, sizes)``: the bytes one run's probe holds at once (its windows, Lanczos
  basis, replays) from a ``Sizes``, for the memory estimate (``ordered_jax.budget``) to
  refuse a config that cannot fit before anything is allocated; omitted: negligible;
* ``headlines``: (label, metric key) pairs that ``--live`` shows, under the probe's name,
  as it shows the built-in probes' headline values.

So a new probe is one module that calls ``register`` (and is imported by
``probes/__init__.py``'s list of modules, or by the user's own code before ``build``):
docs/extending.md shows one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ordered_jax import experiment, models, orderings, runs, tasks

ADAM_FAMILY = ('adamw', 'adam')  # optimisers with Adam's moments in their state
CYCLIC_TASKS = ('add', 'sub', 'mul', 'div', 'poly')  # two operands in Z_p
GROUP_NAMES = ('none', 'minimal', 'observers', 'interventions', 'full')
# A group holds the probes that declare it, and those of the groups it includes.
INCLUDES = {'full': ('observers', 'interventions')}


@dataclasses.dataclass(frozen=True)
class Needs:
  """What a probe must have to run; the defaults mean 'anything'."""

  models: tuple[str, ...] = ()      # model kinds it reads the parameters of; () = any
  named: bool = False               # it reads the model's semantic view (models.roles):
                                    # any model registered with one
  tasks: tuple[str, ...] = ()       # task base names (before ':'); () = any
  optimizers: tuple[str, ...] = ()  # () = any
  reference_weights: bool = False   # probes.reference_weights must be set
  # It counts optimiser steps with one batch size (a bool, or a function of its options).
  fixed_steps: bool | Callable[[Any], bool] = False


@dataclasses.dataclass(frozen=True)
class Context:
  """What factories read: the config and the values derived from it once."""

  config: Any
  model: Any                # experiment.model_config(config)
  steps_per_epoch: int
  reference: bool           # reference ("solution") weights are configured


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What a ``memory`` declaration reads: one run's sizes, from the config alone."""

  params: int         # parameters (float32 each)
  example_bytes: int  # activations of one training example, forward and backward
  batch_size: int     # the training batch
  n_train: int = 0    # training examples (a probe batch of more rows holds only these)


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  make: Callable[[Context, Any], Any]
  needs: Needs = Needs()
  groups: tuple[str, ...] = ()
  rank: int = 1000
  options: type | None = None
  options_key: str | None = None   # config.probes.<key>; default: the probe's name
  check: Callable[[Any, Context], None] | None = None
  doc: Any = None                  # its probes.catalog.Probe (built-in ones: in catalog.py)
  support_note: str = ''           # added to its support text, in parentheses
  memory: Callable[[Any, Sizes], int] | None = None  # bytes per run (``budget``)
  headlines: tuple[tuple[str, str], ...] = ()  # (label, key): shown by --live


_ENTRIES: dict[str, Entry] = {}


def register(name: str, make: Callable[[Context, Any], Any], **kw) -> Entry:
  """Declare probe ``name`` (see the module docstring); returns its entry."""
  if name in _ENTRIES:
    raise ValueError(f'probe {name!r} is registered twice')
  for g in kw.get('groups', ()):
    if g not in GROUP_NAMES:
      raise ValueError(f'probe {name!r}: unknown group {g!r}; one of {GROUP_NAMES}')
  entry = Entry(name, make, **kw)
  _ENTRIES[name] = entry
  return entry


def unregister(name: str) -> None:
  """Remove probe ``name`` (tests, and a notebook redefining its probe)."""
  _ENTRIES.pop(name, None)


def entries() -> dict[str, Entry]:
  """Every registered probe, by name, in registration order."""
  return dict(_ENTRIES)


def group(name: str, reference: bool = False) -> tuple[str, ...]:
  """The probes of group ``name`` in rank order; those needing reference weights only when
  ``reference`` (they join their groups then, after the others)."""
  wanted = {name, *INCLUDES.get(name, ())}
  members = [e for e in _ENTRIES.values() if wanted & set(e.groups)
             and (reference or not e.needs.reference_weights)]
  return tuple(e.name for e in sorted(members, key=lambda e: (e.needs.reference_weights,
                                                               e.rank)))


def options_key(entry: Entry) -> str:
  return entry.options_key or entry.name


def check_options(config) -> dict[str, Any]:
  """Every registered probe's options from ``config`` ({name: options}), so that a bad value
  in any section is a ``ConfigError``, whichever probes the config enables."""
  return {n: options(e, config) for n, e in _ENTRIES.items()}


def options(entry: Entry, config) -> Any:
  """``entry``'s options from ``config.probes.<key>`` (missing fields: the defaults); a bad
  value is a ``ConfigError`` naming ``probes.<key>.<field>``."""
  if entry.options is None:
    return None
  key = options_key(entry)
  section = config.probes.get(key, {}) if 'probes' in config else {}
  known = {f.name for f in dataclasses.fields(entry.options)}
  try:
    return entry.options(**{k: v for k, v in dict(section).items() if k in known})
  except runs.ConfigError as e:
    raise runs.ConfigError(f'probes.{key}.{e.field}',
                           str(e).split(': ', 1)[1]) from None


def check(entry: Entry, opts, ctx: Context) -> None:
  """``entry.check(opts, ctx)``; a ``ConfigError`` naming one of its options (``field``)
  is raised again naming ``probes.<key>.<field>``, as ``options`` does (a field that
  already starts with ``probes.`` or names another part of the config stays)."""
  if entry.check is None:
    return
  try:
    entry.check(opts, ctx)
  except runs.ConfigError as e:
    known = {f.name for f in dataclasses.fields(entry.options)} if entry.options else set()
    if e.field.split('.')[0] not in known:
      raise
    raise runs.ConfigError(f'probes.{options_key(entry)}.{e.field}',
                           str(e).split(': ', 1)[1]) from None


def context(config) -> Context:
  return Context(config=config, model=experiment.model_config(config),
                 steps_per_epoch=orderings.steps_per_epoch(runs.sizes(config)[0],
                                                           config.batch_size),
                 reference=bool(config.probes.reference_weights))


def why_not(entry: Entry, config) -> str | None:
  """Why ``entry`` cannot run with this config's model and task (None: it can)."""
  n, model, task = entry.needs, config.model, str(config.task)
  base = task.split(':')[0]
  if n.named and model not in models.named_models():
    return (f"reads a model's named parameters (model {_or(models.named_models())}; model "
            f'is {model!r})')
  if n.models and model not in n.models:
    if n.models == ('dln',):
      return f'reads a deep linear network (model=dln; model is {model!r})'
    if n.models == ('reference',):
      return f"reads the reference transformer's parameters (model is {model!r})"
    return f"reads the parameters of model {_or(n.models)} (model is {model!r})"
  if n.tasks and base not in task_names(n):
    if n.tasks == CYCLIC_TASKS:
      return (f'needs a two-operand task over Z_p ({", ".join(task_names(n))}); task is '
              f'{task!r}')
    return f'is defined for task {" or ".join(n.tasks)}; task is {task!r}'
  return None


def _or(names) -> str:
  """'a', 'a or b', 'a, b or c'."""
  names = list(names)
  return names[0] if len(names) == 1 else f'{", ".join(names[:-1])} or {names[-1]}'


def task_names(needs: Needs) -> tuple[str, ...]:
  """The task kinds ``needs.tasks`` admits: ``CYCLIC_TASKS`` stands for every kind over
  Z_p (``tasks.register_kind(zp=True)``: the built-in ones and any registered since)."""
  if needs.tasks != CYCLIC_TASKS:
    return needs.tasks
  return tuple(n for n, k in tasks.KINDS.items() if k.zp)


def support_text(entry: Entry) -> str:
  """Which models, tasks and optimisers a probe runs with, in words (``--probes_list``)."""
  n = entry.needs
  kinds = n.models or (models.named_models() if n.named else ())
  if not kinds and not n.tasks:
    text = 'any model, any task'
  else:
    text = (f'model {_or(kinds)}' if kinds else 'any model') + '; ' + (
        f'task{"s" if len(task_names(n)) > 1 else ""} {", ".join(task_names(n))}' if n.tasks
        else 'any task')
  if entry.support_note:
    text += f' ({entry.support_note})'
  if n.optimizers:
    text += f'; optimizer {" or ".join(n.optimizers)}'
  if n.reference_weights:
    text += '; probes.reference_weights'
  return text


def fixed_steps(entry: Entry, opts) -> bool:
  f = entry.needs.fixed_steps
  return bool(f(opts) if callable(f) else f)


# -- validation helpers for options dataclasses ---------------------------------------------

def check_int(value, field: str, lo: int, hi: int | None = None, note: str = '') -> None:
  """``value`` is an int (not a bool) in [lo, hi]; else ``ConfigError(field, ...)``."""
  if (not isinstance(value, int) or isinstance(value, bool) or value < lo
      or (hi is not None and value > hi)):
    allowed = f'an integer >= {lo}' if hi is None else f'an integer in [{lo}, {hi}]'
    raise runs.ConfigError(field, f'must be {allowed}{note}; got {value!r}')


def check_bool(value, field: str) -> None:
  if not isinstance(value, bool):
    raise runs.ConfigError(field, f'must be true or false; got {value!r}')
