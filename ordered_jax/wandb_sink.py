"""Weights & Biases: an optional sink (``pip install wandb``; never a dependency).

``--config.wandb.project=NAME`` logs each run's metric rows (the same keys as the JSONL,
step = epoch), its config and its environment to one W&B run named after the run;
``wandb.mode=offline`` writes them under ``<run>/wandb`` without a network, for
``wandb sync`` later. ``python -m analysis wandb_replay`` uploads finished runs' JSONL the
same way (the reference's ``replay_to_wandb``).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Mapping

MODES = ('online', 'offline')
MISSING = 'needs the wandb package, which is not installed: pip install wandb'


def available() -> bool:
  return importlib.util.find_spec('wandb') is not None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  out = {}
  for k, v in metrics.items():
    v = v.item() if hasattr(v, 'item') and getattr(v, 'ndim', 1) == 0 else v
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
      out[k] = v
  return out


class WandbSink:
  """One W&B run: ``write(epoch, metrics)`` logs the scalars at step = epoch."""

  def __init__(self, run_dir: str, name: str, config: Mapping[str, Any], *, project: str,
               entity: str = '', mode: str = 'online', group: str = ''):
    import wandb  # pylint: disable=g-import-not-at-top
    kw = dict(project=project, entity=entity or None, name=name, dir=run_dir,
              config=dict(config), mode=mode, group=group or None)
    try:  # several runs of a batch live in one process (wandb >= 0.19.10)
      self._run = wandb.init(reinit='create_new', **kw)
    except (TypeError, ValueError):
      self._run = wandb.init(reinit=True, **kw)

  def write(self, epoch: int, metrics: Mapping[str, Any]) -> None:
    values = _scalars(metrics)
    if values:
      self._run.log(values, step=int(epoch))

  def close(self) -> None:
    self._run.finish()


def replay(rows: list[dict], run_dir: str, name: str, config: Mapping[str, Any], *,
           project: str, entity: str = '', mode: str = 'online') -> str:
  """Log an existing run's metric rows (``epoch`` + keys) as one W&B run; its folder."""
  sink = WandbSink(run_dir, name, config, project=project, entity=entity, mode=mode)
  for r in sorted(rows, key=lambda r: r.get('epoch', 0)):
    sink.write(r.get('epoch', 0), {k: v for k, v in r.items() if k != 'epoch'})
  path = getattr(sink._run, 'dir', run_dir)  # pylint: disable=protected-access
  sink.close()
  return path
