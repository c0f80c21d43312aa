"""Lockstep comparison: the runs of one batch, started from one initialisation on one data
set, compared with each other after every evaluated epoch (``config.lockstep``).

This is the comparative trainer of the training-dynamics codebase, for any number of
orderings at once: the batch already advances its runs in lockstep (one jitted epoch for
all of them), so a comparison is one more jitted function of the batched parameters. For
every pair (a, b) of runs, a < b in batch order:

* ``param_distance``  ||theta_a - theta_b||_2 over every parameter;
* ``param_cosine``    <theta_a, theta_b> / (||theta_a|| ||theta_b||);
* ``layer_distance/<name>``  the same distance per parameter tensor (dotted tree names);
* ``prediction_disagreement``  percent of test examples whose argmax predictions differ.

Rows go to ``<workdir>/lockstep.jsonl`` (one per pair and evaluated epoch); see
docs/lockstep.md.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FILENAME = 'lockstep.jsonl'


def pairs(n: int) -> list[tuple[int, int]]:
  """Every (a, b) with a < b < n, in batch order."""
  return list(itertools.combinations(range(n), 2))


def make_compare(apply, n_runs: int):
  """A jitted ``compare(params, test_chunks, test_valid) -> {metric: [P] or [P, L]}`` for
  batched params (leading runs axis) and one shared, chunked test set."""
  a_P, b_P = (np.array(x, np.int32) for x in zip(*pairs(n_runs)))

  def predictions(params, chunks_HxKxC, valid_HxK):
    del valid_HxK
    return jax.lax.map(lambda abc_KxC: jnp.argmax(apply(params, abc_KxC[:, :-1]), axis=-1),
                       chunks_HxKxC)

  def compare(params, chunks_HxKxC, valid_HxK):
    leaves = jax.tree.leaves(params)
    diff_PxL = jnp.stack([jnp.sum(jnp.square(x[a_P] - x[b_P]).reshape(len(a_P), -1), axis=1)
                          for x in leaves], axis=1)
    dot_P = sum(jnp.sum((x[a_P] * x[b_P]).reshape(len(a_P), -1), axis=1) for x in leaves)
    sq_R = sum(jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1) for x in leaves)
    pred_RxHxK = jax.vmap(predictions, in_axes=(0, None, None))(params, chunks_HxKxC,
                                                                 valid_HxK)
    differ_P = jnp.sum((pred_RxHxK[a_P] != pred_RxHxK[b_P]) & valid_HxK, axis=(1, 2))
    return {'param_distance': jnp.sqrt(jnp.sum(diff_PxL, axis=1)),
            'param_cosine': dot_P / jnp.sqrt(sq_R[a_P] * sq_R[b_P]),
            'layer_distance': jnp.sqrt(diff_PxL),
            'prediction_disagreement': 100.0 * differ_P / jnp.sum(valid_HxK)}

  return jax.jit(compare)


def rows(metrics: dict, run_names: Sequence[str], layer_names: Sequence[str]) -> list[dict]:
  """Host rows (one per pair) from ``compare``'s fetched output."""
  out = []
  for k, (a, b) in enumerate(pairs(len(run_names))):
    row = {'a': run_names[a], 'b': run_names[b],
           'param_distance': float(metrics['param_distance'][k]),
           'param_cosine': float(metrics['param_cosine'][k]),
           'prediction_disagreement': float(metrics['prediction_disagreement'][k])}
    row.update({f'layer_distance/{n}': float(v)
                for n, v in zip(layer_names, metrics['layer_distance'][k])})
    out.append(row)
  return out
