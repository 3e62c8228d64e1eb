"""Masked autoencoders over audio spectrograms: AudioMAE decoders, the MAM-CLAP local decoder, the SupMAM branch.

Sources:
  * Huang et al., "Masked Autoencoders that Listen" (NeurIPS 2022), Sec. 3.3 (decoder with local attention);
    reference implementation facebookresearch/AudioMAE ``models_mae.py`` (``MaskedAutoencoderViT.forward_decoder``,
    ``patchify``, ``forward_loss``; ``decoder_mode`` 0 = global ViT blocks, 1 = 16 Swin-V2-style blocks) and
    ``timm_patch/swin_transformer.py`` (``WindowMultiHeadAttention``, ``SwinTransformerBlock``: post-norm, scaled
    cosine attention with a learnable per-head temperature ``tau`` clamped at 0.01, log-spaced continuous relative
    position bias from a 2 -> 384 -> heads MLP, cyclic shift with a -100 attention mask).
  * Liu et al., "Swin Transformer V2" (CVPR 2022), Eqs. (2)-(4) (scaled cosine attention, log-spaced coordinates).
  * Xin, Peng, Lu, "Masked Audio Modeling with CLAP and Multi-Objective Learning" (seed 004): MAM-CLAP decoder = one
    transformer block with shifted local attention, head = Linear + LayerNorm (Sec. 2.1, 3.2); SupMAM classification
    branch = average of the visible encoder tokens -> Linear -> BatchNorm -> ReLU -> Linear (Sec. 2.2). Its unstated
    hidden width (3072) follows SupMAE (Liang et al. 2022; enyac-group/supmae ``models_supmae.py`` ``cls_head``).

Token layout (shared with ``uss_jax.models.vit``): the input ``fbank`` ``(batch, frames, bins)`` is cut into
``patch_t x patch_f`` patches on a ``T x F`` grid (AudioMAE: 64 x 8 for 1024 x 128 and 16 x 16 patches); token
``t * F + f`` is time-major. A patch's pixels are flattened time-major too: pixel ``(i, j)`` (frame ``i``, bin ``j``
inside the patch) is element ``i * patch_f + j`` (``patchify``; MAE's ``einsum('nchpwq->nhwpqc')`` with ``h`` = time).

Decoder kinds (``MAEDecoder``; presets in ``DECODER_PRESETS``):
  * ``'global'`` (AudioMAE ``decoder_mode`` 0, MAE): ``depth`` pre-LN ViT blocks over cls + all tokens.
  * ``'swin'`` (AudioMAE ``decoder_mode`` 1, the released configuration): ``depth`` = 16 ``SwinV2Block`` s of width 512,
    16 heads, window (4, 4); blocks with an odd index are shifted by (2, 0) (time only); the cls token is dropped
    before the blocks. The MAM-CLAP decoder is one such block with the shift applied (``shift_blocks='all'``) and a
    Linear + LayerNorm head (``pred_norm=True``).

Parameters carry logical axis names: decoder residual width ``'embed'`` (like the encoder's), ``decoder_embed``
``('embed', 'embed')`` (the second use of a mesh axis is dropped by the sharding rules), qkv kernel
``(D, 3, heads, head_dim)`` ``('embed', 'qkv', 'heads', 'kv')`` (``uss_jax.nn.attention.FusedQKV``),
attention output ``('heads', 'embed')``, MLP ``('embed', 'mlp')`` / ``('mlp', 'embed')``, mask token
``(None, None, 'embed')``, LayerNorms ``('embed',)``, prediction head ``('embed', None)``; the tiny relative-position
MLP and ``tau`` are replicated (``None``). SupMAM branch: ``('embed', 'mlp')``, BatchNorm ``('mlp',)``,
``('mlp', 'classes')``. Activations pass ``uss_jax.nn.partitioning.constrain`` at the block boundaries (tokens
``('batch', 'length', 'embed')``, per-head q / k / v ``('batch', None, 'length', 'heads', 'kv')``), and the decoder
blocks are rematerialised under the trainer's ``config.remat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.models import vit
from uss_jax.nn import partitioning
from uss_jax.nn.attention import FusedQKV
# The window helpers are shared with HTS-AT (re-exported here for the tests and converters that import them).
from uss_jax.nn.swin import (  # pylint: disable=unused-import
    SWIN_MASK_VALUE, shifted_window_mask, window_partition, window_reverse)

DECODER_KINDS = ("global", "swin")
SHIFT_BLOCKS = ("odd", "all", "none")
TAU_MIN = 0.01  # WindowMultiHeadAttention: attn / tau.clamp(min=0.01)
COSINE_EPS = 1e-6  # denom.clamp(min=1e-6)

# Decoder presets: AudioMAE decoder_mode 1 (released), decoder_mode 0 (MAE 8 global blocks), MAM-CLAP (one block).
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    "audiomae_swin": dict(kind="swin", embed_dim=512, depth=16, num_heads=16, window=(4, 4), shift=(2, 0),
                          shift_blocks="odd"),
    "audiomae_global": dict(kind="global", embed_dim=512, depth=8, num_heads=16),
    "mam_clap_local": dict(kind="swin", embed_dim=512, depth=1, num_heads=16, window=(4, 4), shift=(2, 0),
                           shift_blocks="all", pred_norm=True),
}


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(x, int):
    return (x, x)
  a, b = x
  return (int(a), int(b))


def _dense(din: int, dout: int, names: tuple[str | None, str | None], *, precision: Any, dtype: Any,
           param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  # MAE initialize_weights: every nn.Linear xavier_uniform, bias 0 (also the Swin blocks' meta MLP).
  return nnx.Linear(din, dout, precision=precision, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), names),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)), rngs=rngs)


def _layer_norm(dim: int, *, epsilon: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=epsilon, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                       scale_metadata={"out_sharding": ("embed",)}, bias_metadata={"out_sharding": ("embed",)},
                       rngs=rngs)


# --------------------------------------------------------------------------------------------------------------------
# Patches.
# --------------------------------------------------------------------------------------------------------------------


def patchify(fbank: jax.Array, patch_size: int | Sequence[int] = 16) -> jax.Array:
  """Non-overlapping patches of a spectrogram, tokens and pixels time-major (AudioMAE ``patchify``).

  Args:
    fbank: ``(batch, frames, bins)``; frames / bins beyond the last whole patch are dropped (as the encoder's
      patch convolution does).
    patch_size: ``(patch_t, patch_f)`` (an int means square); 16.

  Returns:
    ``(batch, T * F, patch_t * patch_f)`` with ``T = frames // patch_t``, ``F = bins // patch_f``; token
    ``t * F + f``, pixel ``i * patch_f + j``.

  Raises:
    ValueError: not 3-D, or smaller than one patch.
  """
  pt, pf = _pair(patch_size)
  if fbank.ndim != 3:
    raise ValueError(f"patchify expects (batch, frames, bins), got {fbank.shape}")
  b, frames, bins = fbank.shape
  t, f = frames // pt, bins // pf
  if t == 0 or f == 0:
    raise ValueError(f"input of {frames} frames x {bins} bins is smaller than one {(pt, pf)} patch")
  x = fbank[:, :t * pt, :f * pf].reshape(b, t, pt, f, pf)
  return x.transpose(0, 1, 3, 2, 4).reshape(b, t * f, pt * pf)


def unpatchify(patches: jax.Array, grid: Sequence[int], patch_size: int | Sequence[int] = 16) -> jax.Array:
  """Inverse of ``patchify``: ``(batch, T * F, patch_t * patch_f)`` -> ``(batch, T * patch_t, F * patch_f)``.

  Raises:
    ValueError: shapes that do not match ``grid`` and ``patch_size``.
  """
  pt, pf = _pair(patch_size)
  t, f = (int(g) for g in grid)
  b, n, d = patches.shape
  if n != t * f or d != pt * pf:
    raise ValueError(f"patches {patches.shape} do not match grid {(t, f)} and patch {(pt, pf)}")
  return patches.reshape(b, t, f, pt, pf).transpose(0, 1, 3, 2, 4).reshape(b, t * pt, f * pf)


# --------------------------------------------------------------------------------------------------------------------
# Windows (static numpy helpers evaluated at trace time).
# --------------------------------------------------------------------------------------------------------------------


def effective_window_and_shift(grid: Sequence[int], window: Sequence[int],
                               shift: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """timm ``SwinTransformerBlock._calc_window_shift``: a window no larger than the grid, no shift where it spans it.

  ``window_i = min(grid_i, window_i)``; ``shift_i = 0 if grid_i <= window_i else shift_i``.
  """
  win = tuple(min(int(g), int(w)) for g, w in zip(grid, window))
  sh = tuple(0 if int(g) <= w else int(s) for g, w, s in zip(grid, win, shift))
  return win, sh  # type: ignore[return-value]


def relative_coordinates_log(window: Sequence[int]) -> np.ndarray:
  """Log-spaced relative coordinates of all token pairs of a window (Swin V2 Eq. (4)).

  ``d = p_i - p_j`` for window positions ``p = (row, col)`` in row-major order, ``sign(d) * log(1 + |d|)``.

  Returns:
    ``(L * L, 2)`` float32, ``L = window_t * window_f``, pair ``(i, j)`` at row ``i * L + j``.
  """
  wt, wf = (int(w) for w in window)
  coords = np.stack(np.meshgrid(np.arange(wt), np.arange(wf), indexing="ij")).reshape(2, -1)  # (2, L)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0).reshape(-1, 2).astype(np.float64)
  return (np.sign(rel) * np.log1p(np.abs(rel))).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Swin-V2-style block (AudioMAE timm_patch/swin_transformer.py).
# --------------------------------------------------------------------------------------------------------------------


def _safe_norm(x: jax.Array) -> jax.Array:
  # |x| over the last axis in float32 with a finite gradient at x = 0 (torch.norm's subgradient there is 0).
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)
  return jnp.sqrt(jnp.maximum(sq, 1e-30))


class WindowAttention(nnx.Module):
  """Window multi-head attention with scaled cosine similarity and a continuous relative position bias.

  Per window and head: ``A = softmax(cos(q_i, k_j) / max(tau_h, 0.01) + B_h(i, j) + M(i, j))``, ``out = proj(A v)``
  with ``cos = q.k / max(|q| |k|, 1e-6)``, ``B = meta_mlp(relative_coordinates_log(window))`` (Linear 2 -> 384, ReLU,
  dropout, Linear 384 -> heads, dropout; dropout 0.1 in the reference), ``M`` the shift mask. Source: AudioMAE
  ``timm_patch/swin_transformer.py`` ``WindowMultiHeadAttention._forward_batch``.

  Args:
    dim: width ``C``; num_heads: heads (``C % heads == 0``).
    meta_hidden: hidden width of the bias MLP (384).
    meta_dropout: dropout of the bias MLP in train mode (0.1, reference).
    attn_dropout, proj_dropout: dropout on attention weights / after ``proj`` (0 in AudioMAE).
    precision, dtype, param_dtype: matmul precision, compute and parameter dtypes.
    rngs: initialisation RNGs.

  Raises:
    ValueError: ``dim`` not divisible by ``num_heads``.
  """

  def __init__(self, dim: int, num_heads: int, *, meta_hidden: int = 384, meta_dropout: float = 0.1,
               attn_dropout: float = 0.0, proj_dropout: float = 0.0, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.precision = precision
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = FusedQKV(dim, num_heads, self.head_dim, **kw)  # Xavier-uniform of the flat (D, 3D) kernel
    self.proj = _dense(dim, dim, ("heads", "embed"), **kw)
    self.meta_fc1 = _dense(2, meta_hidden, (None, None), **kw)
    self.meta_fc2 = _dense(meta_hidden, num_heads, (None, None), **kw)
    self.meta_drop = nnx.Dropout(meta_dropout)
    self.tau = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), (None,))(
        rngs.params(), (num_heads,), param_dtype))
    self.attn_drop = nnx.Dropout(attn_dropout)
    self.proj_drop = nnx.Dropout(proj_dropout)

  def position_bias(self, window: Sequence[int], *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Relative position bias ``(heads, L, L)`` of a window (``L = window_t * window_f``), float32."""
    wa = int(window[0]) * int(window[1])
    h = jax.nn.relu(self.meta_fc1(jnp.asarray(relative_coordinates_log(window))))
    h = self.meta_fc2(self.meta_drop(h, rngs=rngs))
    h = self.meta_drop(h, rngs=rngs)
    return h.astype(jnp.float32).T.reshape(self.num_heads, wa, wa)

  def __call__(self, x: jax.Array, window: Sequence[int], mask: jax.Array | np.ndarray | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """``(batch, windows, L, C)`` -> same shape; ``mask`` ``(windows, L, L)`` additive (or None)."""
    b, nw, n, c = x.shape
    heads = ("batch", None, "length", "heads", "kv")
    qkv = self.qkv(x)  # (b, nw, n, 3, heads, hd)
    q, k, v = (partitioning.constrain(qkv[..., i, :, :], heads) for i in range(3))  # (b, nw, n, heads, hd)
    dots = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k, precision=self.precision).astype(jnp.float32)
    qn = _safe_norm(q)  # (b, nw, n, heads)
    kn = _safe_norm(k)
    denom = jnp.einsum("bwqh,bwkh->bwhqk", qn, kn)
    logits = dots / jnp.maximum(denom, COSINE_EPS)
    tau = jnp.maximum(self.tau[...].astype(jnp.float32), TAU_MIN)
    logits = logits / tau[:, None, None] + self.position_bias(window, rngs=rngs)
    if mask is not None:
      logits = logits + jnp.asarray(mask, jnp.float32)[None, :, None]
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    weights = self.attn_drop(weights, rngs=rngs)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", weights, v, precision=self.precision)
    out = partitioning.constrain(out, heads).reshape(b, nw, n, c)
    return self.proj_drop(self.proj(out), rngs=rngs)


class SwinV2Block(nnx.Module):
  """Post-norm shifted-window block: ``x + norm1(W-MSA(x))`` then ``x + norm2(mlp(x))``.

  Source: AudioMAE ``timm_patch/swin_transformer.py`` ``SwinTransformerBlock`` (``extra_norm=False``, drop path 0):
  the token grid ``(T, F)`` is cyclically rolled by ``-shift``, cut into ``window`` tiles (``window_partition``),
  attended with ``WindowAttention`` (with ``shifted_window_mask`` when shifted), put back and rolled by ``+shift``.
  The window / shift are clamped to the grid as the reference does (``effective_window_and_shift``). MLP: exact-GELU
  ``uss_jax.models.vit.Mlp``.

  Args:
    dim, num_heads, mlp_ratio: width, heads, MLP hidden = ``int(dim * mlp_ratio)``.
    window: ``(window_t, window_f)`` (4, 4); shift: ``(shift_t, shift_f)``, (2, 0) on AudioMAE's odd blocks.
    norm_epsilon: LayerNorm epsilon (1e-6).
    meta_hidden, meta_dropout, dropout, attn_dropout: see ``WindowAttention`` (``dropout`` is timm ``drop``).
    precision, dtype, param_dtype, rngs: as ``WindowAttention``.
  """

  def __init__(self, dim: int, num_heads: int, *, window: Sequence[int] = (4, 4), shift: Sequence[int] = (0, 0),
               mlp_ratio: float = 4.0, norm_epsilon: float = 1e-6, meta_hidden: int = 384,
               meta_dropout: float = 0.1, dropout: float = 0.0, attn_dropout: float = 0.0, precision: Any = None,
               dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.window = _pair(window)
    self.shift = _pair(shift)
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn = WindowAttention(dim, num_heads, meta_hidden=meta_hidden, meta_dropout=meta_dropout,
                                attn_dropout=attn_dropout, proj_dropout=dropout, **kw)
    self.norm1 = _layer_norm(dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mlp = vit.Mlp(dim, int(dim * mlp_ratio), dropout=dropout, **kw)
    self.norm2 = _layer_norm(dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, grid: Sequence[int], *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """``(batch, T * F, C)`` time-major tokens on ``grid = (T, F)`` -> same shape.

    Raises:
      ValueError: ``T * F`` differs from the token count, or the grid is not divisible by the window.
    """
    b, n, c = x.shape
    t, f = (int(g) for g in grid)
    if n != t * f:
      raise ValueError(f"{n} tokens do not fill the grid {(t, f)}")
    window, shift = effective_window_and_shift((t, f), self.window, self.shift)
    y = x.reshape(b, t, f, c)
    if any(shift):
      y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
    y = self.attn(window_partition(y, window), window, shifted_window_mask((t, f), window, shift), rngs=rngs)
    y = window_reverse(y, window, (t, f))
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    x = partitioning.constrain(x + self.norm1(y.reshape(b, n, c)), ("batch", "length", "embed"))
    return partitioning.constrain(x + self.norm2(self.mlp(x, rngs=rngs)), ("batch", "length", "embed"))


# --------------------------------------------------------------------------------------------------------------------
# Decoder, supervised branch, the masked autoencoder.
# --------------------------------------------------------------------------------------------------------------------


class MAEDecoder(nnx.Module):
  """MAE decoder: embed the visible latents, insert mask tokens, unshuffle, add positions, blocks, norm, predict.

  Forward (AudioMAE ``forward_decoder``): ``x = decoder_embed(latent)`` ``(B, 1 + K, D)``; the ``N - K`` mask tokens
  are appended after the kept tokens and the sequence is put back in token order with ``ids_restore``; cls is kept
  in front; a fixed 2-D sin-cos position embedding for the actual grid is added (``vit.sincos_pos_embed_2d`` with
  ``pos_embed_layout``; AudioMAE's released table is ``'audiomae'``); ``'global'``: ``depth`` ``vit.Block`` s over
  cls + tokens, cls removed after the head; ``'swin'``: cls removed, ``depth`` ``SwinV2Block`` s. Then
  ``decoder_norm`` and ``decoder_pred`` (Linear ``D -> out_dim``; with ``pred_norm`` a LayerNorm after it, the
  MAM-CLAP head).

  Args:
    encoder_dim: width of the encoder latent (768 for ViT-B).
    out_dim: prediction width (``patch_t * patch_f`` = 256 for reconstruction, or a teacher feature width).
    kind: ``'global'`` | ``'swin'`` (module docstring); embed_dim / depth / num_heads / mlp_ratio: 512 / 16 / 16 / 4
      (AudioMAE decoder_mode 1).
    window, shift: Swin window / shift; shift_blocks: which blocks are shifted: ``'odd'`` (1, 3, ...: AudioMAE),
      ``'all'`` (MAM-CLAP's single block), ``'none'`` (AudioMAE ``no_shift``).
    pred_norm: LayerNorm after ``decoder_pred``.
    pos_embed_layout: ``'time_freq'`` | ``'audiomae'``.
    norm_epsilon: LayerNorm epsilon (1e-6).
    meta_hidden, meta_dropout: Swin relative-position MLP (384, 0.1).
    attention: ``'einsum'`` | ``'dot_product_attention'`` for the global blocks (``vit.Attention``).
    precision, dtype, param_dtype: matmul precision, compute / parameter dtypes.
    rngs: initialisation RNGs.

  Raises:
    ValueError: unknown ``kind`` / ``shift_blocks`` / layout, or ``embed_dim`` not a multiple of 4.
  """

  def __init__(self, encoder_dim: int, out_dim: int = 256, *, kind: str = "swin", embed_dim: int = 512,
               depth: int = 16, num_heads: int = 16, mlp_ratio: float = 4.0, window: Sequence[int] = (4, 4),
               shift: Sequence[int] = (2, 0), shift_blocks: str = "odd", pred_norm: bool = False,
               pos_embed_layout: str = "time_freq", norm_epsilon: float = 1e-6, meta_hidden: int = 384,
               meta_dropout: float = 0.1, attention: str = "einsum", precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if kind not in DECODER_KINDS:
      raise ValueError(f"unknown decoder kind {kind!r}; expected one of {DECODER_KINDS}")
    if shift_blocks not in SHIFT_BLOCKS:
      raise ValueError(f"unknown shift_blocks {shift_blocks!r}; expected one of {SHIFT_BLOCKS}")
    if pos_embed_layout not in vit.POS_EMBED_LAYOUTS:
      raise ValueError(f"unknown pos_embed_layout {pos_embed_layout!r}; expected one of {vit.POS_EMBED_LAYOUTS}")
    if embed_dim % 4:
      raise ValueError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
    self.kind = kind
    self.embed_dim = embed_dim
    self.out_dim = out_dim
    self.pos_embed_layout = pos_embed_layout
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.decoder_embed = _dense(encoder_dim, embed_dim, ("embed", "embed"), **kw)
    self.mask_token = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, "embed"))(
        rngs.params(), (1, 1, embed_dim), param_dtype))
    if kind == "global":
      self.blocks = nnx.List([
          vit.Block(embed_dim, num_heads, mlp_ratio, norm_epsilon=norm_epsilon, attention=attention, **kw)
          for _ in range(depth)])
    else:
      shifted = {"odd": lambda i: i % 2 == 1, "all": lambda i: True, "none": lambda i: False}[shift_blocks]
      self.blocks = nnx.List([
          SwinV2Block(embed_dim, num_heads, window=window, shift=shift if shifted(i) else (0, 0),
                      mlp_ratio=mlp_ratio, norm_epsilon=norm_epsilon, meta_hidden=meta_hidden,
                      meta_dropout=meta_dropout, **kw) for i in range(depth)])
    self.decoder_norm = _layer_norm(embed_dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype,
                                    rngs=rngs)
    self.decoder_pred = _dense(embed_dim, out_dim, ("embed", None), **kw)
    if pred_norm:
      self.pred_norm = nnx.LayerNorm(out_dim, epsilon=norm_epsilon, use_fast_variance=False, dtype=dtype,
                                     param_dtype=param_dtype, scale_metadata={"out_sharding": (None,)},
                                     bias_metadata={"out_sharding": (None,)}, rngs=rngs)
    else:
      self.pred_norm = nnx.data(None)

  def __call__(self, latent: jax.Array, ids_restore: jax.Array, grid: Sequence[int], *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Predicts every token.

    Args:
      latent: ``(batch, 1 + keep, encoder_dim)`` encoder output (cls first, kept tokens in shuffled order).
      ids_restore: ``(batch, N)`` int: ``concat(kept, mask_tokens)[ids_restore]`` is in token order.
      grid: ``(T, F)`` with ``T * F = N``.
      rngs: dropout RNGs (train mode; the Swin bias MLP has dropout 0.1).

    Returns:
      ``(batch, N, out_dim)`` predictions in token order.

    Raises:
      ValueError: ``grid`` does not match ``ids_restore``, or a Swin grid not divisible by the window.
    """
    t, f = (int(g) for g in grid)
    b, n = ids_restore.shape
    if n != t * f:
      raise ValueError(f"ids_restore has {n} tokens, grid {(t, f)} has {t * f}")
    x = self.decoder_embed(latent)
    keep = x.shape[1] - 1
    mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, n - keep, x.shape[2]))
    tokens = jnp.concatenate([x[:, 1:], mask_tokens], axis=1)
    tokens = jnp.take_along_axis(tokens, ids_restore[:, :, None].astype(jnp.int32), axis=1)
    pos = jnp.asarray(vit.sincos_pos_embed_2d(self.embed_dim, (t, f), layout=self.pos_embed_layout,
                                              cls_token=True)[None], x.dtype)
    x = partitioning.constrain(jnp.concatenate([x[:, :1], tokens], axis=1) + pos, ("batch", "length", "embed"))
    if self.kind == "global":
      x, _ = partitioning.run_blocks(self.blocks, x, rngs=rngs)
      x = x[:, 1:]  # the reference drops cls after the head; the head is per token, so the order is immaterial
    else:
      x = x[:, 1:]
      call = partitioning.remat(lambda block, h, r: block(h, (t, f), rngs=r))
      for block in self.blocks:
        x = call(block, x, rngs)
    x = self.decoder_pred(self.decoder_norm(x))
    if self.pred_norm is not None:
      x = self.pred_norm(x)
    return x


class SupervisedBranch(nnx.Module):
  """SupMAM classification branch: ``fc2(relu(bn(fc1(pooled))))`` (seed 004 Sec. 2.2; SupMAE ``cls_head``).

  Args:
    in_dim: encoder width; hidden: MLP width (3072, SupMAE default ``cls_hidden_mlp``); num_classes: outputs.
    bn_momentum: flax BatchNorm momentum (0.9 = PyTorch ``BatchNorm1d`` momentum 0.1); bn_epsilon: 1e-5.
    precision, dtype, param_dtype, rngs: as elsewhere.
  """

  def __init__(self, in_dim: int, num_classes: int, *, hidden: int = 3072, bn_momentum: float = 0.9,
               bn_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = _dense(in_dim, hidden, ("embed", "mlp"), **kw)
    self.bn = nnx.BatchNorm(hidden, momentum=bn_momentum, epsilon=bn_epsilon, use_fast_variance=False,
                            dtype=dtype, param_dtype=param_dtype, scale_metadata={"out_sharding": ("mlp",)},
                            bias_metadata={"out_sharding": ("mlp",)}, rngs=rngs)
    self.fc2 = _dense(hidden, num_classes, ("mlp", "classes"), **kw)

  def __call__(self, pooled: jax.Array) -> jax.Array:
    """``(batch, in_dim)`` -> logits ``(batch, num_classes)``; BatchNorm uses batch statistics in train mode."""
    return self.fc2(jax.nn.relu(self.bn(self.fc1(pooled))))


class MaskedAutoencoder(nnx.Module):
  """Encoder ViT (``uss_jax.models.vit.VisionTransformer``, ``global_pool=False``) + ``MAEDecoder`` (+ SupMAM branch).

  ``__call__(fbank)``: ``latent, mask, ids_restore = encoder.forward_encoder(fbank, mask_ratio | ids_keep)`` (a fixed
  number of kept tokens per example, so shapes are static under jit; RNG stream ``'masking'``, else ``'default'``),
  ``pred = decoder(latent, ids_restore, grid)``, ``target_patches = patchify(fbank)``; with a classifier,
  ``logits = classifier(mean of the visible encoder tokens latent[:, 1:])`` (cls excluded, after the encoder's final
  norm, as SupMAE ``forward_classification`` with global pool).

  Args:
    encoder: the MAE encoder (final ``norm``, no head); its patch stride must equal its patch size.
    decoder: a ``MAEDecoder`` with ``encoder_dim`` = the encoder width.
    mask_ratio: default fraction of tokens removed (AudioMAE 0.8, SupMAM 0.4, MAM-CLAP 0.2).
    classifier: optional ``SupervisedBranch`` (SupMAM).

  Raises:
    ValueError: an encoder with global pooling (no final norm), overlapping patches, or a width mismatch.
  """

  def __init__(self, encoder: vit.VisionTransformer, decoder: MAEDecoder, *, mask_ratio: float = 0.8,
               classifier: SupervisedBranch | None = None):
    if encoder.norm is None:
      raise ValueError("the MAE encoder needs global_pool=False (final LayerNorm on all tokens)")
    if encoder.patch_embed.stride != encoder.patch_embed.patch_size:
      raise ValueError("masked reconstruction needs non-overlapping patches (stride == patch_size)")
    vit.num_kept(2, mask_ratio)  # validates the ratio
    self.encoder = encoder
    self.decoder = decoder
    self.mask_ratio = float(mask_ratio)
    self.classifier = classifier if classifier is not None else nnx.data(None)

  @property
  def patch_size(self) -> tuple[int, int]:
    return self.encoder.patch_embed.patch_size

  def __call__(self, fbank: jax.Array, *, rngs: nnx.Rngs | None = None, mask_ratio: float | None = None,
               ids_keep: jax.Array | None = None) -> dict[str, jax.Array]:
    """Masked encoding and reconstruction of ``fbank`` ``(batch, frames, bins)``.

    Args:
      fbank: normalised features (AudioMAE: ``(x - mean) / (2 std)`` Kaldi fbank).
      rngs: RNG streams: ``'masking'`` (else ``'default'``) for random masking; ``'dropout'`` (else ``'default'``)
        in train mode.
      mask_ratio: overrides the model's ratio; ids_keep: ``(batch, keep)`` explicit kept token indices instead of
        random masking.

    Returns:
      dict with ``pred`` ``(batch, N, out_dim)``, ``mask`` ``(batch, N)`` float32 (1 = removed),
      ``target_patches`` ``(batch, N, patch_t * patch_f)``, ``latent`` ``(batch, 1 + keep, D)``, ``ids_restore``
      ``(batch, N)``, and with a classifier ``logits`` ``(batch, classes)``.

    Raises:
      ValueError: as ``VisionTransformer.forward_encoder`` / ``MAEDecoder``.
    """
    if ids_keep is None:
      latent, mask, ids_restore = self.encoder.forward_encoder(
          fbank, mask_ratio=self.mask_ratio if mask_ratio is None else mask_ratio, rngs=rngs)
    else:
      latent, mask, ids_restore = self.encoder.forward_encoder(fbank, ids_keep=ids_keep, rngs=rngs)
    grid = self.encoder.grid_size(fbank.shape[1], fbank.shape[2])
    out = {
        "pred": self.decoder(latent, ids_restore, grid, rngs=rngs),
        "mask": mask,
        "target_patches": patchify(fbank, self.patch_size),
        "latent": latent,
        "ids_restore": ids_restore,
    }
    if self.classifier is not None:
      out["logits"] = self.classifier(latent[:, 1:].mean(axis=1))
    return out

  def classify(self, fbank: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """SupMAM branch on the whole input (every token visible): logits ``(batch, classes)``.

    Raises:
      ValueError: the model has no classifier.
    """
    if self.classifier is None:
      raise ValueError("this MaskedAutoencoder has no classification branch")
    b = fbank.shape[0]
    t, f = self.encoder.grid_size(fbank.shape[1], fbank.shape[2])
    ids_keep = jnp.broadcast_to(jnp.arange(t * f, dtype=jnp.int32), (b, t * f))
    latent, _, _ = self.encoder.forward_encoder(fbank, ids_keep=ids_keep, rngs=rngs)
    return self.classifier(latent[:, 1:].mean(axis=1))


def build_decoder(encoder_dim: int, out_dim: int = 256, preset: str | None = None, **kwargs: Any) -> MAEDecoder:
  """A ``MAEDecoder`` from a preset of ``DECODER_PRESETS`` (``'audiomae_swin'``, ``'audiomae_global'``,
  ``'mam_clap_local'``) with any argument overridden by ``kwargs``.

  Raises:
    ValueError: an unknown preset.
  """
  base: dict[str, Any] = {}
  if preset is not None:
    if preset not in DECODER_PRESETS:
      raise ValueError(f"unknown decoder preset {preset!r}; expected one of {sorted(DECODER_PRESETS)}")
    base = dict(DECODER_PRESETS[preset])
  return MAEDecoder(encoder_dim, out_dim, **{**base, **kwargs})
