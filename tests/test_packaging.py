"""pyproject.toml (issue 14 B7): the same dependencies as requirements.txt, every package."""

import os
import tomllib

from tests.conftest import ROOT


def _requirements():
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    lines = [l.split(' #')[0].strip() for l in f if not l.startswith('#')]  # pip's comments
  return [l for l in lines if l]


def test_pyproject_lists_requirements_and_packages():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)
  deps = project['project']['dependencies'] + project['project']['optional-dependencies']['test']
  assert sorted(deps) == sorted(_requirements())
  packages = project['tool']['setuptools']['packages']
  top = [d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, '__init__.py'))
         and d != 'tests' and d != 'benchmarks']
  found = sorted(os.path.relpath(folder, ROOT).replace(os.sep, '.')
                 for d in top for folder, _, files in os.walk(os.path.join(ROOT, d))
                 if '__init__.py' in files)  # subpackages too (ordered_jax.orderings)
  assert sorted(packages) == found
