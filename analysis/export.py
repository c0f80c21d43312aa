"""tensorboard: replay a metrics JSONL (ours or the reference's) into TensorBoard event files.

The reference replays its JSONL into Weights & Biases; this writes local event files with
tensorboardX instead (no account). As the reference's W&B sink does: numbers become
scalars at step = epoch, dicts are flattened to ``key/subkey`` scalars, lists become a
histogram plus a ``key_mean`` scalar. Paper-era names are renamed (``val_acc`` ->
``training_metrics/validation_accuracy``, ...); the run's config goes in as text.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np

from analysis.readers import InputError, canonical


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def replay(raw_rows: list[dict], logdir: str, *, config: dict | None = None) -> str:
  """Write ``raw_rows`` (unmerged JSONL rows) as event files under ``logdir`` (event files
  already there are replaced); returns ``logdir``."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  os.makedirs(logdir, exist_ok=True)
  for old in glob.glob(os.path.join(logdir, 'events.out.tfevents.*')):
    os.remove(old)
  writer = SummaryWriter(logdir)
  try:
    if config:
      writer.add_text('config', '```\n' + json.dumps(config, indent=2) + '\n```', 0)
    for row in raw_rows:
      epoch = row.get('epoch', row.get('step'))
      if not _number(epoch):
        raise InputError(f'a metrics row has no integer epoch: {str(row)[:80]}')
      for key, v in row.items():
        if key in ('epoch', 'step', 'hook_point'):
          continue
        key = canonical(key)
        if _number(v):
          writer.add_scalar(key, float(v), int(epoch))
        elif isinstance(v, dict):
          for sub, x in v.items():
            if _number(x):
              writer.add_scalar(f'{key}/{sub}', float(x), int(epoch))
        elif isinstance(v, list):
          nums = np.array([float(x) for x in v if _number(x)])
          finite = nums[np.isfinite(nums)]
          if finite.size:
            writer.add_scalar(f'{key}_mean', float(finite.mean()), int(epoch))
            writer.add_histogram(key, finite, int(epoch))
          elif nums.size:
            writer.add_scalar(f'{key}_mean', math.nan, int(epoch))
  finally:
    writer.flush()
    writer.close()
  return logdir
