"""Vector views of parameter pytrees shared by the probes (the reference's conventions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ordered_jax import models


def reference_view(tree, cfg: models.ModelConfig) -> dict[str, jax.Array]:
  """{parameter name: array in PyTorch layout} (``models.layout``: the reference's own
  names, e.g. 'embedding.weight'; PyTorch-style names for the power model)."""
  out = {}
  for name, path, transpose in models.layout(cfg):
    x = tree
    for k in path:
      x = x[k]
    out[name] = x.T if transpose else x
  return out


def raw_view(tree, cfg: models.ModelConfig) -> dict[str, jax.Array]:
  """{parameter name: array in OUR layout} (no transposes): for norms, dot
  products and cosines, which a transpose leaves unchanged. Inside the training step this
  keeps XLA's layout choices for the gradient, and so the trajectory, as without probes."""
  out = {}
  for name, path, _ in models.layout(cfg):
    x = tree
    for k in path:
      x = x[k]
    out[name] = x
  return out


def non_bias_names(cfg: models.ModelConfig) -> list[str]:
  """Sorted reference names without 'bias': what the reference's flat() concatenates."""
  names = [n for n, _, _ in models.layout(cfg)]
  return sorted(n for n in names if 'bias' not in n)


def flat_non_bias(tree, cfg: models.ModelConfig) -> jax.Array:
  """The reference's flat(): non-bias parameters, sorted by name, concatenated."""
  view = reference_view(tree, cfg)
  return jnp.concatenate([view[n].ravel() for n in non_bias_names(cfg)])


def flat_all(tree) -> jax.Array:
  """Every leaf of a pytree concatenated (biases included)."""
  return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


def cos(u: jax.Array, v: jax.Array, eps: float = 1e-8) -> jax.Array:
  return jnp.dot(u, v) / (jnp.linalg.norm(u) * jnp.linalg.norm(v) + eps)


def flat_non_bias_raw(tree) -> jax.Array:
  """Non-bias parameters concatenated in our own layout (no transposes): the same vector as
  ``flat_non_bias`` up to a fixed permutation, so norms, dot products and Gram matrices are
  equal; cheap enough for every optimiser step."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return jnp.concatenate([x.ravel() for path, x in leaves
                          if getattr(path[-1], 'key', None) != 'bias'])


def window_init(d: int, window: int) -> dict:
  """An empty window of the last ``window`` vectors of size d (a ring buffer) and the Gram
  matrix of its rows, kept up to date as vectors come in."""
  return {'buf': jnp.zeros((window, d)), 'count': jnp.zeros((), jnp.int32),
          'gram': jnp.zeros((window, window))}


def window_push(state: dict, x: jax.Array, active=True):
  """(the window with x added, members n, mask of the filled rows, the rows' Gram matrix).

  The Gram matrix gains x's dot products with the window (one pass over it, before x
  overwrites the oldest row) instead of being recomputed: O(window D), not O(window^2 D).
  Rows not yet filled are zero, and so are their entries. With ``active`` False (a stopped
  run) the window stays as it was, so the trainer need not restore it (``masks_inactive``)."""
  window = state['buf'].shape[0]
  slot = state['count'] % window
  active = jnp.asarray(active)
  x = jnp.where(active, x, jax.lax.dynamic_index_in_dim(state['buf'], slot, 0, False))
  hi = jax.lax.Precision.HIGHEST
  dots = jnp.matmul(state['buf'], x, precision=hi).at[slot].set(jnp.dot(x, x, precision=hi))
  gram = jnp.where(active, state['gram'].at[slot, :].set(dots).at[:, slot].set(dots),
                   state['gram'])
  buf = jax.lax.dynamic_update_slice(state['buf'], x[None], (slot, 0))
  count = state['count'] + active.astype(jnp.int32)
  n = jnp.minimum(count, window)
  valid = (jnp.arange(window) < n).astype(buf.dtype)
  return {'buf': buf, 'count': count, 'gram': gram}, n, valid, gram
