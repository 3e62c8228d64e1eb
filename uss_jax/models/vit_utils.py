"""Position embeddings and token masking of the audio ViT (``uss_jax.models.vit``): numpy / jax functions, no modules.

Sources:
  * He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022), Sec. 3: per-example random masking by
    argsort of uniform noise; MAE ``util/pos_embed.py`` (``get_1d_sincos_pos_embed_from_grid``,
    ``get_2d_sincos_pos_embed_flexible``).
  * Huang et al., "Masked Autoencoders that Listen" (NeurIPS 2022); facebookresearch/AudioMAE ``models_mae.py``
    (``random_masking``), ``models_vit.py`` (``random_masking_2d``, fine-tuning), ``util/pos_embed.py``
    (``interpolate_pos_embed_audio``).

Tokens are in time-major order: token ``t * F + f`` on a ``T x F`` (time patches x frequency patches) grid.

Position embedding layouts (``sincos_pos_embed_2d``): ``'time_freq'`` is MAE's ``get_2d_sincos_pos_embed_flexible``
on the (time, freq) grid: the first ``embed_dim / 2`` channels encode the frequency index, the rest the time index,
so the embedding of a shorter input is exactly the prefix of a longer one. ``'audiomae'`` reproduces the released
AudioMAE pretraining table (built with ``PatchEmbed_org``, whose ``patch_hw`` has the two sides swapped: on a
``T x F`` grid token ``n`` gets the "column" position ``n % T`` and the "row" position ``n // T``); it only means
something at the pretraining grid (64 x 8).

Resizing a stored table (``resize_pos_table``) from the nominal grid ``T0 x F0`` to an input grid ``T x F0``:
``T < T0``: keep the first ``T`` time rows (AudioMAE ``interpolate_pos_embed_audio``, used for 5 s ESC-50 clips);
``T > T0``: linear interpolation along time of the ``T0`` rows to ``T`` rows, half-pixel centres with the edges
clamped (PyTorch ``F.interpolate(mode='linear', align_corners=False)``); the frequency side is never resized (a
different ``F`` raises) and the cls row (row 0) is kept.

Everything here is re-exported by ``uss_jax.models.vit`` (``vit.sincos_pos_embed_2d``, ``vit.num_kept``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

POS_EMBED_LAYOUTS = ("time_freq", "audiomae")

__all__ = ["POS_EMBED_LAYOUTS", "sincos_1d", "sincos_pos_embed_2d", "linear_resize_indices", "resize_pos_table",
           "num_kept", "masking_from_noise", "random_masking", "masking_from_ids_keep", "random_masking_2d"]

# --------------------------------------------------------------------------------------------------------------------
# Position embeddings.
# --------------------------------------------------------------------------------------------------------------------


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  """1-D sin-cos embedding: ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000^(-k / (embed_dim/2))``, k < embed_dim/2.

  Source: MAE ``util/pos_embed.py`` ``get_1d_sincos_pos_embed_from_grid`` (Vaswani et al. 2017, Sec. 3.5, with the
  sines and cosines in two halves rather than interleaved).

  Args:
    embed_dim: even output width.
    positions: any shape ``(M...)`` of positions (floats or ints).

  Returns:
    ``(M, embed_dim)`` float64 for the flattened positions.

  Raises:
    ValueError: odd ``embed_dim``.
  """
  if embed_dim % 2:
    raise ValueError(f"sin-cos embedding needs an even width, got {embed_dim}")
  omega = 1.0 / 10000.0 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
  angles = np.asarray(positions, np.float64).reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(embed_dim: int, grid: Sequence[int], *, layout: str = "time_freq",
                        cls_token: bool = False) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding for a ``time x freq`` token grid, tokens in time-major order.

  ``layout='time_freq'``: token ``t * F + f`` gets ``[sincos_1d(D/2, f), sincos_1d(D/2, t)]`` (MAE
  ``get_2d_sincos_pos_embed_flexible(D, (T, F))``, i.e. the column index in the first half, the row index in the
  second). ``layout='audiomae'``: the AudioMAE pretraining table, ``get_2d_sincos_pos_embed_flexible(D, (F, T))``
  (``PatchEmbed_org.patch_hw`` is (freq, time)) applied to time-major tokens: token ``n`` gets
  ``[sincos_1d(D/2, n % T), sincos_1d(D/2, n // T)]``.

  Args:
    embed_dim: width ``D``, a multiple of 4.
    grid: ``(T, F)`` = (time patches, frequency patches).
    layout: ``'time_freq'`` or ``'audiomae'``.
    cls_token: prepend a zero row for the cls token.

  Returns:
    ``(T * F [+ 1], D)`` float32 (computed in float64, then rounded, as the reference does).

  Raises:
    ValueError: ``embed_dim`` not a multiple of 4, or an unknown layout.
  """
  if embed_dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs embed_dim % 4 == 0, got {embed_dim}")
  t_size, f_size = (int(g) for g in grid)
  n = np.arange(t_size * f_size)
  if layout == "time_freq":
    first, second = n % f_size, n // f_size
  elif layout == "audiomae":
    first, second = n % t_size, n // t_size
  else:
    raise ValueError(f"unknown position-embedding layout {layout!r}; expected one of {POS_EMBED_LAYOUTS}")
  emb = np.concatenate([sincos_1d(embed_dim // 2, first), sincos_1d(embed_dim // 2, second)], axis=1)
  if cls_token:
    emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
  return emb.astype(np.float32)


def linear_resize_indices(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source rows and weights of 1-D linear interpolation ``n_in -> n_out`` with half-pixel centres.

  ``src = max((i + 0.5) * n_in / n_out - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, n_in - 1)``,
  ``w = src - i0``; ``out[i] = (1 - w) x[i0] + w x[i1]`` (PyTorch ``F.interpolate(mode='linear',
  align_corners=False)``).

  Returns:
    ``(i0, i1, w)``, each ``(n_out,)`` (int, int, float32).
  """
  src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def resize_pos_table(table: jax.Array, grid0: Sequence[int], grid: Sequence[int]) -> jax.Array:
  """Adapts a stored position table for the nominal grid ``grid0`` to the input grid ``grid`` (time axis only).

  Rule (module docstring): same grid -> unchanged; fewer time patches -> the first ``T`` time rows (AudioMAE
  ``interpolate_pos_embed_audio``); more -> linear interpolation along time (``linear_resize_indices``). The cls row
  (row 0) is kept.

  Args:
    table: ``(1, 1 + T0 * F0, D)``.
    grid0: ``(T0, F0)`` the table was made for.
    grid: ``(T, F)`` of the input.

  Returns:
    ``(1, 1 + T * F, D)``.

  Raises:
    ValueError: ``F != F0``, or a table whose length is not ``1 + T0 * F0``.
  """
  t0, f0 = (int(g) for g in grid0)
  t, f = (int(g) for g in grid)
  if table.shape[1] != 1 + t0 * f0:
    raise ValueError(f"position table has {table.shape[1]} rows, expected 1 + {t0} x {f0}")
  if f != f0:
    raise ValueError(f"the input gives {f} frequency patches but the position table has {f0}; only the time axis "
                     "may differ from the model's img_size")
  if t == t0:
    return table
  cls_row, rows = table[:, :1], table[:, 1:].reshape(table.shape[0], t0, f0, table.shape[-1])
  if t < t0:
    rows = rows[:, :t]
  else:
    i0, i1, w = linear_resize_indices(t0, t)
    w = jnp.asarray(w, table.dtype)[None, :, None, None]
    rows = (1 - w) * rows[:, i0] + w * rows[:, i1]
  return jnp.concatenate([cls_row, rows.reshape(table.shape[0], t * f, table.shape[-1])], axis=1)


# --------------------------------------------------------------------------------------------------------------------
# Masking (shape-static: a fixed number of kept tokens per example).
# --------------------------------------------------------------------------------------------------------------------


def num_kept(num_tokens: int, mask_ratio: float) -> int:
  """Tokens kept by random masking: MAE's ``int(L * (1 - mask_ratio))`` (floor), guarded against float round-off.

  E.g. 512 tokens at ratio 0.8 -> 102, at 0.75 -> 128, at 0.6 -> 204 (floor, not round); 10 at 0.9 -> 1 (where the
  unguarded float product 0.9999999999999998 would give 0).

  Raises:
    ValueError: a ratio outside [0, 1).
  """
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
  return int(num_tokens * (1.0 - mask_ratio) + 1e-9)


def masking_from_noise(noise: jax.Array, keep: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MAE ``random_masking`` given the noise: keep the ``keep`` tokens with the smallest noise, per example.

  ``ids_shuffle = argsort(noise)``; ``ids_restore = argsort(ids_shuffle)``; ``ids_keep = ids_shuffle[:, :keep]``
  (in shuffled order, as MAE); ``mask = 1`` where removed, i.e. ``ids_restore >= keep``.

  Args:
    noise: ``(batch, tokens)`` float.
    keep: number kept, ``0 < keep <= tokens``.

  Returns:
    ``ids_keep`` ``(batch, keep)`` int32, ``mask`` ``(batch, tokens)`` float32 (0 keep, 1 remove), ``ids_restore``
    ``(batch, tokens)`` int32: the decoder puts ``concat(kept, mask_tokens)[ids_restore]`` back in token order.

  Raises:
    ValueError: ``keep`` out of range.
  """
  n = noise.shape[1]
  if not 0 < keep <= n:
    raise ValueError(f"keep must be in 1..{n}, got {keep}")
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  mask = (ids_restore >= keep).astype(jnp.float32)
  return ids_shuffle[:, :keep], mask, ids_restore


def random_masking(key: jax.Array, batch_size: int, num_tokens: int,
                   mask_ratio: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example unstructured random masking (MAE / AudioMAE ``random_masking``), uniform noise from ``key``.

  Keeps ``num_kept(num_tokens, mask_ratio)`` tokens of every example (AudioMAE: 102 of 512 at ratio 0.8).

  Returns:
    ``(ids_keep (batch, keep) int32, mask (batch, tokens) float32, ids_restore (batch, tokens) int32)``, see
    ``masking_from_noise``.
  """
  noise = jax.random.uniform(key, (batch_size, num_tokens))
  return masking_from_noise(noise, num_kept(num_tokens, mask_ratio))


def masking_from_ids_keep(ids_keep: jax.Array, num_tokens: int) -> tuple[jax.Array, jax.Array]:
  """``mask`` and ``ids_restore`` for a caller-given per-example set of kept token indices.

  The implied shuffle is ``ids_keep`` (in the given order) followed by the removed tokens in ascending order, so the
  MAE decoder convention holds: ``concat(kept, mask_tokens)`` gathered with ``ids_restore`` is in token order.

  Args:
    ids_keep: ``(batch, keep)`` distinct token indices per example (any order).
    num_tokens: ``L``, the full token count.

  Returns:
    ``mask`` ``(batch, L)`` float32 (1 = removed), ``ids_restore`` ``(batch, L)`` int32.
  """
  b, keep = ids_keep.shape
  ids_keep = ids_keep.astype(jnp.int32)
  rows = jnp.arange(b)[:, None]
  kept = jnp.zeros((b, num_tokens), bool).at[rows, ids_keep].set(True)
  # Removed tokens in ascending order after the kept ones: sort key = index + L for removed, rank for kept.
  key = jnp.where(kept, 0, jnp.arange(num_tokens, dtype=jnp.int32)[None] + num_tokens)
  key = key.at[rows, ids_keep].set(jnp.broadcast_to(jnp.arange(keep, dtype=jnp.int32), (b, keep)))
  ids_shuffle = jnp.argsort(key, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  return (~kept).astype(jnp.float32), ids_restore


def random_masking_2d(key: jax.Array, batch_size: int, grid: Sequence[int], mask_t_prob: float,
                      mask_f_prob: float) -> jax.Array:
  """AudioMAE fine-tuning 2-D masking: drop whole time rows and whole frequency columns of the token grid.

  Source: AudioMAE ``models_vit.py`` ``random_masking_2d`` (used by ``forward_features_mask`` in training):
  ``int(T * (1 - mask_t_prob))`` time rows and ``int(F * (1 - mask_f_prob))`` frequency columns are kept per example,
  chosen by argsort of uniform noise. The kept tokens are returned in time-major order (the reference keeps them in
  shuffled order; the encoder and its mean pool are permutation invariant, so outputs agree).

  Args:
    key: PRNG key.
    batch_size: ``B``.
    grid: ``(T, F)`` token grid.
    mask_t_prob, mask_f_prob: fractions of time rows / frequency columns to drop, in [0, 1).

  Returns:
    ``ids_keep`` ``(B, kept_t * kept_f)`` int32 token indices ``t * F + f``.
  """
  t_size, f_size = (int(g) for g in grid)
  keep_t, keep_f = num_kept(t_size, mask_t_prob), num_kept(f_size, mask_f_prob)
  kt, kf = jax.random.split(key)
  rows = jnp.sort(jnp.argsort(jax.random.uniform(kt, (batch_size, t_size)), axis=1)[:, :keep_t], axis=1)
  cols = jnp.sort(jnp.argsort(jax.random.uniform(kf, (batch_size, f_size)), axis=1)[:, :keep_f], axis=1)
  return (rows[:, :, None] * f_size + cols[:, None, :]).reshape(batch_size, keep_t * keep_f).astype(jnp.int32)
