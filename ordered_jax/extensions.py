"""Importing a package of extensions: every module of it, by name (each registers itself)."""

import importlib
import pkgutil


def import_all(package: str) -> None:
  """Import every module of ``package`` (e.g. 'ordered_jax.task_kinds') in name order."""
  pkg = importlib.import_module(package)
  for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
    importlib.import_module(f'{package}.{m.name}')
