"""Discoverability (issue 14 A1): --list, --probes_list, --probes_describe, and the probe
tables of docs/probes.md generated from the same catalog."""

import os
import subprocess
import sys

import pytest

import probes
from ordered_jax import listing
from probes import catalog, registry
from tests.conftest import ROOT, micro_config


def test_docs_equal_the_generated_tables():
  with open(catalog.DOCS) as f:
    text = f.read()
  assert catalog.replace_generated(text) == text, (
      'docs/probes.md is stale: run python -m probes.catalog --write')
  assert catalog.main([]) == 0


def test_catalog_covers_every_probe_and_nothing_else():
  # A probe registered in its own module documents itself (``doc=``): the built-in table
  # plus those docs cover every registered probe, a user's too.
  assert set(catalog.entries()) == set(registry.entries())
  for p in catalog.entries().values():
    assert p.cost in catalog.COSTS and p.metrics and p.summary and p.cadence, p.name
    keys = [m.key for m in p.metrics]
    assert len(keys) == len(set(keys)), p.name
    assert all(m.definition and m.direction for m in p.metrics), p.name


def test_groups_and_support_follow_probes():
  assert catalog.groups('norms') == 'observers, full'
  assert catalog.groups('hessian') == 'interventions, full'
  assert catalog.groups('counterfactual_validator') == 'by name only'
  assert 'with reference weights' in catalog.groups('gradient_projection')
  assert catalog.support('path_length') == 'any model, any task'
  assert catalog.support('progress') == 'model reference; task add'
  assert 'optimizer adamw or adam' in catalog.support('adam_dynamics')


def test_every_listed_name_has_a_description():
  sections = listing.sections()
  assert [s[0] for s in sections] == ['Configs', 'Tasks', 'Models', 'Orderings', 'Optimizers',
                                      'Schedules']
  for title, _, rows in sections:
    assert rows, title
    for name, text in rows.items():
      assert text, f'{title}: {name} has no description (ordered_jax/listing.py)'
  assert 'configs/tiny.py' in sections[0][2]


def _main(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('args,needles', [
    (['--list'], ['configs/tiny.py', 'sym', 'fixed-random', 'muon', 'cosine_step']),
    (['--probes_list'], list(catalog.CATALOG)),
    (['--probes_describe=fourier'], [m.key for m in catalog.CATALOG['fourier'].metrics]
     + ['P_hat[m s]', '(FFTs of [p, d] and [mlp, p] per layer)']),  # brackets are not markup
    (['--probes_describe=curvature'], ['--config.probes.curvature.lanczos_steps',
                                       '--config.probes.curvature.hutchinson_samples']),
])
def test_listing_flags_print_and_exit_without_a_config(args, needles):
  proc = _main(*args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '\r' not in proc.stdout
  for n in needles:
    assert n in proc.stdout, n


def test_bad_probe_name_and_missing_config_are_one_line():
  proc = _main('--probes_describe=nrms')
  assert proc.returncode == 2 and proc.stderr.startswith(
      "error: --probes_describe: unknown probe 'nrms'; one of norms,")
  proc = _main()
  assert proc.returncode == 2 and proc.stderr.strip() == (
      'error: --config: required, e.g. --config=configs/tiny.py (python main.py --list shows '
      'the configs)')


def test_every_option_describe_shows_is_a_flag_that_works():
  """--probes_describe lists each option as the flag that sets it: every built-in probe's
  options are fields of the default config, so each flag names a real field."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from probes import registry  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  seen = 0
  for name, e in registry.entries().items():
    if e.options is None:
      assert catalog.options_table(name) is None
      continue
    key = registry.options_key(e)
    for f in dataclasses.fields(e.options):
      assert f.name in c.probes[key], f'config.probes.{key}.{f.name}'
      seen += 1
  assert seen >= 10
