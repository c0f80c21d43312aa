"""Lockstep comparison: the runs of one batch, started from one initialisation on one data
set, compared with each other after every evaluated epoch (``config.lockstep``).

This is the comparative trainer of the training-dynamics codebase, for any number of
orderings at once: the batch already advances its runs in lockstep (one jitted epoch for
all of them), so a comparison is one more jitted function of the batched parameters. For
every pair (a, b) of runs, a < b in batch order:

* ``param_distance``  ||theta_a - theta_b||_2 over every parameter;
* ``param_cosine``    <theta_a, theta_b> / (||theta_a|| ||theta_b||);
* ``layer_distance/<name>``  the same distance per parameter tensor (dotted tree names);
* ``prediction_disagreement``  percent of test examples whose argmax predictions differ;
  for a regression (task ``teacher``) instead ``prediction_mse``, the mean over test
  examples and outputs of (f_a(x) - f_b(x))^2;
* ``effective_distance``  for a deep linear network, ||W_a - W_b||_F of the end-to-end
  weights W = W_L ... W_1 (the codebase's ``frobenius_distance``).

Rows go to ``<workdir>/lockstep.jsonl`` (one per pair and evaluated epoch); see
docs/lockstep.md.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ordered_jax import models, teacher

FILENAME = 'lockstep.jsonl'
SCALARS = ('param_distance', 'param_cosine', 'prediction_disagreement', 'prediction_mse',
           'effective_distance')  # per pair, in row order


def pairs(n: int) -> list[tuple[int, int]]:
  """Every (a, b) with a < b < n, in batch order."""
  return list(itertools.combinations(range(n), 2))


def make_compare(apply, n_runs: int, *, regression_in: int = 0, dln: bool = False):
  """A jitted ``compare(params, test_chunks, test_valid) -> {metric: [P] or [P, L]}`` for
  batched params (leading runs axis) and one shared, chunked test set. ``regression_in``
  > 0: rows are ``teacher.to_rows``' (x of that size); ``dln``: add effective_distance."""
  a_P, b_P = (np.array(x, np.int32) for x in zip(*pairs(n_runs)))

  def outputs(params, chunks_HxKxC):
    return jax.lax.map(lambda rows_KxC: apply(params, teacher.split(rows_KxC, regression_in)[0]),
                       chunks_HxKxC)

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
    out = {'param_distance': jnp.sqrt(jnp.sum(diff_PxL, axis=1)),
           'param_cosine': dot_P / jnp.sqrt(sq_R[a_P] * sq_R[b_P]),
           'layer_distance': jnp.sqrt(diff_PxL)}
    if regression_in:
      y_RxHxKxE = jax.vmap(outputs, in_axes=(0, None))(params, chunks_HxKxC)
      sq_PxHxK = jnp.mean(jnp.square(y_RxHxKxE[a_P] - y_RxHxKxE[b_P]), axis=-1)
      out['prediction_mse'] = jnp.sum(sq_PxHxK * valid_HxK, axis=(1, 2)) / jnp.sum(valid_HxK)
    else:
      pred_RxHxK = jax.vmap(predictions, in_axes=(0, None, None))(params, chunks_HxKxC,
                                                                   valid_HxK)
      differ_P = jnp.sum((pred_RxHxK[a_P] != pred_RxHxK[b_P]) & valid_HxK, axis=(1, 2))
      out['prediction_disagreement'] = 100.0 * differ_P / jnp.sum(valid_HxK)
    if dln:
      w_R = jax.vmap(models.dln_product)(params)
      out['effective_distance'] = jnp.sqrt(jnp.sum(jnp.square(w_R[a_P] - w_R[b_P]),
                                                   axis=(1, 2)))
    return out

  return jax.jit(compare)


def rows(metrics: dict, run_names: Sequence[str], layer_names: Sequence[str]) -> list[dict]:
  """Host rows (one per pair) from ``compare``'s fetched output."""
  out = []
  for k, (a, b) in enumerate(pairs(len(run_names))):
    row = {'a': run_names[a], 'b': run_names[b]}
    row.update({key: float(metrics[key][k]) for key in SCALARS if key in metrics})
    row.update({f'layer_distance/{n}': float(v)
                for n, v in zip(layer_names, metrics['layer_distance'][k])})
    out.append(row)
  return out
