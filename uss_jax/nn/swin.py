"""Swin Transformer (V1) building blocks in Flax NNX: windows, relative position bias, blocks, patch merging, stages.

Sources:
  * Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows" (ICCV 2021): Sec. 3.1
    (patch partition / linear embedding, patch merging), Sec. 3.2 (window attention, shifted windows with the
    cyclic-shift mask, Eq. (3)-(4): pre-LN blocks), Sec. 3.2 "Relative position bias" (Eq. (4), a
    ``(2M - 1) x (2M - 1)`` bias table per head).
  * The Swin V1 code as used by HTS-AT: RetroCirce/HTS-Audio-Transformer ``model/htsat.py`` and LAION-AI/CLAP
    ``src/laion_clap/clap_module/htsat.py`` (``window_partition``, ``window_reverse``, ``WindowAttention``,
    ``SwinTransformerBlock`` with ``norm_before_mlp='ln'``, ``PatchMerging``, ``BasicLayer``, ``PatchEmbed`` with
    ``patch_stride`` and ``patch_norm``). ``uss_jax.models.htsat`` (HTS-AT, the LAION-CLAP audio encoder) builds on
    this module; the CaRE-SEP Swin-UNet and ST-SED-SEP reuse it.

Layouts. Everything is channels-last. Blocks, patch merging and stages take either a map ``(batch, rows, cols,
channels)`` or a token sequence ``(batch, tokens, channels)`` plus its ``grid = (rows, cols)`` (tokens in row-major
order: token ``r * cols + c``), and return the same form. Windows are ``window = (window_rows, window_cols)``
(an ``int`` means a square window) tiled row-major; a window's ``L = window_rows * window_cols`` tokens are row-major
too. The orientation matters (shift direction, window order, merging order and the bias index follow the rows /
cols axes): HTS-AT runs on its folded image (rows = frequency, cols = time), as its checkpoints expect.

Parameters carry logical axis names (house rules): qkv kernel ``(C, 3, heads, head_dim)`` ``('embed', 'qkv', 'heads',
'kv')`` (``uss_jax.nn.attention.FusedQKV``: tensor parallelism splits whole heads), attention output ``('heads',
'embed')``, MLP ``('embed', 'mlp')`` / ``('mlp', 'embed')``, patch-merging reduction ``('embed', 'embed')``,
relative-position tables ``(None, 'heads')``, LayerNorms ``('embed',)``, patch conv ``(None, None, 'conv_in',
'embed')`` / ``('embed',)``. Dropout / stochastic depth follow the house convention (``nnx.Dropout`` without rngs,
``rngs`` passed to ``__call__``, train / eval by ``model.train()`` / ``model.eval()``). Activations pass
``uss_jax.nn.partitioning.constrain`` at the block boundaries (maps ``('batch', None, None, 'embed')``, per-head
q / k / v ``('batch', None, 'length', 'heads', 'kv')``), and stage blocks are rematerialised under the trainer's
``config.remat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.nn import partitioning
from uss_jax.nn.attention import FusedQKV

SWIN_MASK_VALUE = -100.0  # attention logit added between tokens of different shifted regions (Swin attn_mask)

IntOrPair = int | Sequence[int]


_MAP = ("batch", None, None, "embed")  # logical names of a (batch, rows, cols, C) map


def to_pair(x: IntOrPair) -> tuple[int, int]:
  """``n`` -> ``(n, n)``; a pair -> a tuple of two ints."""
  if isinstance(x, (int, np.integer)):
    return (int(x), int(x))
  a, b = x
  return (int(a), int(b))


# --------------------------------------------------------------------------------------------------------------------
# Initialisers and the two parameterised primitives (with logical axis names).
# --------------------------------------------------------------------------------------------------------------------


def trunc_normal_init(std: float = 0.02) -> nnx.initializers.Initializer:
  """timm ``trunc_normal_(std=0.02)`` (the Swin init of Linear kernels and bias tables).

  The reference truncates at +-2 in absolute value, i.e. 100 std: a plain normal for all practical purposes.
  """
  return nnx.initializers.normal(std)


def torch_default_init() -> nnx.initializers.Initializer:
  """PyTorch's default Conv / Linear kernel init (kaiming_uniform with ``a = sqrt(5)``) = ``U(+-1/sqrt(fan_in))``."""
  return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense(din: int, dout: int, names: tuple[str | None, str | None], *, use_bias: bool = True,
          kernel_init: Any = None, precision: Any, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  """``nnx.Linear`` ``(..., din)`` -> ``(..., dout)``, kernel ``names`` / bias ``(names[1],)``.

  Kernel init ``kernel_init`` (default ``trunc_normal_init()``), zero bias.
  """
  return nnx.Linear(din, dout, use_bias=use_bias, precision=precision, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nnx.with_partitioning(kernel_init or trunc_normal_init(), names),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)), rngs=rngs)


def layer_norm(dim: int, *, epsilon: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the last axis of width ``dim``, two-pass variance ``E[(x - mean)^2]`` as PyTorch; scale / bias
  named ``('embed',)``."""
  return nnx.LayerNorm(dim, epsilon=epsilon, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                       scale_metadata={"out_sharding": ("embed",)}, bias_metadata={"out_sharding": ("embed",)},
                       rngs=rngs)


# --------------------------------------------------------------------------------------------------------------------
# Windows (static numpy helpers evaluated at trace time, and the partition / reverse reshapes).
# --------------------------------------------------------------------------------------------------------------------


def window_partition(x: jax.Array, window: IntOrPair) -> jax.Array:
  """Cuts a map into windows (reference ``window_partition``, batch kept as its own axis).

  Args:
    x: ``(batch, rows, cols, channels)``.
    window: ``(window_rows, window_cols)`` or a square side.

  Returns:
    ``(batch, num_windows, L, channels)``, ``num_windows = (rows / window_rows) * (cols / window_cols)`` windows in
    row-major order, ``L = window_rows * window_cols`` tokens per window in row-major order.

  Raises:
    ValueError: a side not divisible by the window.
  """
  b, h, w, c = x.shape
  wh, ww = to_pair(window)
  if h % wh or w % ww:
    raise ValueError(f"grid {(h, w)} is not divisible by the window {(wh, ww)}")
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: jax.Array, window: IntOrPair, grid: Sequence[int]) -> jax.Array:
  """Inverse of ``window_partition``: ``(batch, num_windows, L, channels)`` -> ``(batch, rows, cols, channels)``
  for ``grid = (rows, cols)`` (reference ``window_reverse``)."""
  b, _, _, c = windows.shape
  wh, ww = to_pair(window)
  h, w = (int(g) for g in grid)
  x = windows.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def _shift_regions(size: int, window: int, shift: int) -> np.ndarray:
  # Labels of the reference's slices (0, -window), (-window, -shift), (-shift, None) along one axis.
  labels = np.zeros(size, np.int64)
  if shift:
    labels[size - window:size - shift] = 1
    labels[size - shift:] = 2
  return labels


def shifted_window_mask(grid: Sequence[int], window: IntOrPair, shift: IntOrPair) -> np.ndarray | None:
  """Additive attention mask of the cyclically shifted windows (reference ``attn_mask``; Swin Sec. 3.2).

  After rolling the grid by ``-shift``, each axis splits into the regions ``[0, n - w)``, ``[n - w, n - s)``,
  ``[n - s, n)`` (one region where the shift is 0); tokens of one window in different 2-D regions get
  ``SWIN_MASK_VALUE`` (-100), others 0.

  Args:
    grid: ``(rows, cols)``, divisible by the window.
    window, shift: ``(rows, cols)`` pairs or squares.

  Returns:
    ``(num_windows, L, L)`` float32 in ``window_partition`` order, or None when nothing is shifted.
  """
  sh, sw = to_pair(shift)
  if not (sh or sw):
    return None
  h, w = (int(g) for g in grid)
  wh, ww = to_pair(window)
  labels = _shift_regions(h, wh, sh)[:, None] * 3 + _shift_regions(w, ww, sw)[None, :]
  per_window = labels.reshape(h // wh, wh, w // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
  return np.where(per_window[:, :, None] != per_window[:, None, :], SWIN_MASK_VALUE, 0.0).astype(np.float32)


def relative_position_index(window: IntOrPair) -> np.ndarray:
  """Swin ``relative_position_index``: ``(L, L)`` int indices into the ``((2 wr - 1) (2 wc - 1), heads)`` bias table.

  For window positions ``p = (row, col)`` in row-major order (``L = wr * wc``), pair ``(i, j)`` has
  ``(dr + wr - 1) * (2 wc - 1) + (dc + wc - 1)`` with ``(dr, dc) = p_i - p_j`` (``WindowAttention.__init__``).
  """
  wh, ww = to_pair(window)
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + np.array([wh - 1, ww - 1])
  return rel[..., 0] * (2 * ww - 1) + rel[..., 1]


def stage_windows(grid: Sequence[int], window: int, depths: Sequence[int]) -> list[tuple[int, int]]:
  """``(window, shift)`` of each stage for the stage-0 grid ``grid`` (``SwinTransformerBlock.__init__``).

  Stage ``i`` has the grid ``grid // 2^i``; if its smaller side is ``<= window`` the stage uses a square window of
  that side and no shift, else ``window`` and the shift ``window // 2`` on its odd blocks.
  """
  out = []
  for i in range(len(depths)):
    side = min(int(grid[0]) // 2 ** i, int(grid[1]) // 2 ** i)
    out.append((side, 0) if side <= window else (window, window // 2))
  return out


def _as_map(x: jax.Array, grid: Sequence[int] | None) -> tuple[jax.Array, bool]:
  """Map ``(batch, rows, cols, C)`` as is, or tokens ``(batch, rows * cols, C)`` + ``grid`` reshaped to a map."""
  if x.ndim == 4:
    if grid is not None and tuple(int(g) for g in grid) != tuple(x.shape[1:3]):
      raise ValueError(f"grid {tuple(grid)} does not match the map {x.shape}")
    return x, False
  if x.ndim != 3 or grid is None:
    raise ValueError(f"expected a map (batch, rows, cols, C) or tokens (batch, tokens, C) with a grid, got "
                     f"{x.shape} and grid {grid}")
  h, w = (int(g) for g in grid)
  if x.shape[1] != h * w:
    raise ValueError(f"{x.shape[1]} tokens do not fill the grid {(h, w)}")
  return x.reshape(x.shape[0], h, w, x.shape[-1]), True


def _as_tokens(x: jax.Array, tokens: bool) -> jax.Array:
  return x.reshape(x.shape[0], -1, x.shape[-1]) if tokens else x


# --------------------------------------------------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------------------------------------------------


class WindowAttention(nnx.Module):
  """Swin (V1) window attention: ``softmax(q k^T / sqrt(head_dim) + B + M) v``, then ``proj`` (Swin Eq. (4)).

  ``B[h, i, j] = relative_position_bias_table[relative_position_index(window)[i, j], h]`` (learned, trunc-normal
  0.02), ``M`` an additive mask (``shifted_window_mask``). Source: HTS-AT / LAION-CLAP ``htsat.py``
  ``WindowAttention`` (qkv with bias, no qk scale override).

  Args:
    dim: width ``C``; num_heads: heads (``C % heads == 0``).
    window: ``(window_rows, window_cols)`` or a square side; the bias table has ``(2 wr - 1) (2 wc - 1)`` rows.
    attn_dropout, proj_dropout: dropout on the attention weights / after ``proj`` (0 in HTS-AT).
    precision, dtype, param_dtype: matmul precision, compute and parameter dtypes.
    rngs: initialisation RNGs.

  Raises:
    ValueError: ``dim`` not divisible by ``num_heads``.
  """

  def __init__(self, dim: int, num_heads: int, window: IntOrPair, *, attn_dropout: float = 0.0,
               proj_dropout: float = 0.0, precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.window_size = to_pair(window)
    self.precision = precision
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = FusedQKV(dim, num_heads, self.head_dim, kernel_init=trunc_normal_init(), **kw)
    self.proj = dense(dim, dim, ("heads", "embed"), **kw)
    wh, ww = self.window_size
    self.relative_position_bias_table = nnx.Param(nnx.with_partitioning(trunc_normal_init(), (None, "heads"))(
        rngs.params(), ((2 * wh - 1) * (2 * ww - 1), num_heads), param_dtype))
    self.attn_drop = nnx.Dropout(attn_dropout)
    self.proj_drop = nnx.Dropout(proj_dropout)

  @property
  def window(self) -> int | tuple[int, int]:
    """The window side for a square window, else ``(window_rows, window_cols)``."""
    wh, ww = self.window_size
    return wh if wh == ww else (wh, ww)

  def position_bias(self) -> jax.Array:
    """``(heads, L, L)`` float32 relative position bias ``B`` of the window."""
    n = self.window_size[0] * self.window_size[1]
    idx = relative_position_index(self.window_size).reshape(-1)
    table = self.relative_position_bias_table[...].astype(jnp.float32)
    return table[idx].reshape(n, n, self.num_heads).transpose(2, 0, 1)

  def __call__(self, x: jax.Array, mask: np.ndarray | jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Windows ``(batch, windows, L, C)`` -> same shape; ``mask`` ``(windows, L, L)`` additive, or None.

    Logits and softmax in float32; ``rngs`` feeds the dropouts in train mode.
    """
    b, nw, n, c = x.shape
    heads = ("batch", None, "length", "heads", "kv")
    qkv = self.qkv(x)  # (b, nw, n, 3, heads, hd)
    q, k, v = (partitioning.constrain(qkv[..., i, :, :], heads) for i in range(3))  # (b, nw, n, heads, hd)
    q = q * jnp.asarray(self.head_dim ** -0.5, q.dtype)
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k, precision=self.precision).astype(jnp.float32)
    logits = logits + self.position_bias()[None, None]
    if mask is not None:
      logits = logits + jnp.asarray(mask, jnp.float32)[None, :, None]
    weights = self.attn_drop(jax.nn.softmax(logits, axis=-1).astype(v.dtype), rngs=rngs)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", weights, v, precision=self.precision)
    out = partitioning.constrain(out, heads).reshape(b, nw, n, c)
    return self.proj_drop(self.proj(out), rngs=rngs)


class Mlp(nnx.Module):
  """``drop(fc2(drop(gelu(fc1(x)))))`` with exact (erf) GELU (timm / HTS-AT ``Mlp``): ``(..., dim)`` -> same.

  Args:
    dim: width; hidden: hidden width; dropout: rate (0 in HTS-AT).
    precision, dtype, param_dtype, rngs: as ``WindowAttention``.
  """

  def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = dense(dim, hidden, ("embed", "mlp"), **kw)
    self.fc2 = dense(hidden, dim, ("mlp", "embed"), **kw)
    self.drop = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    x = self.drop(jax.nn.gelu(self.fc1(x), approximate=False), rngs=rngs)
    return self.drop(self.fc2(x), rngs=rngs)


class SwinBlock(nnx.Module):
  """Pre-LN Swin block (HTS-AT ``SwinTransformerBlock``, ``norm_before_mlp='ln'``; Swin Eq. (3)).

  ``y = roll(norm1(x), -shift)``; ``WindowAttention`` per window (with ``shifted_window_mask`` when shifted);
  ``roll(+shift)``; ``x = x + dp(y)``; ``x = x + dp(mlp(norm2(x)))`` with ``dp`` stochastic depth (per example).

  Args:
    dim, num_heads: width and heads.
    window: ``(window_rows, window_cols)`` or a square side.
    shift: cyclic shift per axis (``(rows, cols)`` or one value for both), ``0 <= shift < window``; 0 = plain
      windows (Swin: ``window // 2`` on odd blocks).
    mlp_ratio: MLP hidden = ``int(dim * mlp_ratio)``.
    drop_path, dropout, attn_dropout: stochastic depth / dropout rates.
    norm_epsilon: LayerNorm epsilon (1e-5, PyTorch default).
    precision, dtype, param_dtype, rngs: as ``WindowAttention``.

  Raises:
    ValueError: a shift outside ``[0, window)``.
  """

  def __init__(self, dim: int, num_heads: int, window: IntOrPair, shift: IntOrPair = 0, *, mlp_ratio: float = 4.0,
               drop_path: float = 0.0, dropout: float = 0.0, attn_dropout: float = 0.0, norm_epsilon: float = 1e-5,
               precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.window_size = to_pair(window)
    self.shift_size = to_pair(shift)
    if not all(0 <= s < w for s, w in zip(self.shift_size, self.window_size)):
      raise ValueError(f"shift must be in [0, window={window}), got {shift}")
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    ln = dict(epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = layer_norm(dim, **ln)
    self.attn = WindowAttention(dim, num_heads, self.window_size, attn_dropout=attn_dropout, proj_dropout=dropout,
                                **kw)
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3))
    self.norm2 = layer_norm(dim, **ln)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout, **kw)

  @property
  def window(self) -> int | tuple[int, int]:
    """The window side for a square window, else ``(window_rows, window_cols)``."""
    wh, ww = self.window_size
    return wh if wh == ww else (wh, ww)

  @property
  def shift(self) -> int | tuple[int, int]:
    """The shift when equal on both axes (0 = unshifted), else ``(shift_rows, shift_cols)``."""
    sh, sw = self.shift_size
    return sh if sh == sw else (sh, sw)

  def __call__(self, x: jax.Array, grid: Sequence[int] | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Map ``(batch, rows, cols, C)`` or tokens ``(batch, rows * cols, C)`` with ``grid = (rows, cols)`` -> same.

    Raises:
      ValueError: a grid side not divisible by the window, or tokens without a matching grid.
    """
    x, tokens = _as_map(x, grid)
    _, h, w, _ = x.shape
    win, (sh, sw) = self.window_size, self.shift_size
    shifted = bool(sh or sw)
    y = self.norm1(x)
    if shifted:
      y = jnp.roll(y, (-sh, -sw), axis=(1, 2))
    mask = shifted_window_mask((h, w), win, (sh, sw)) if shifted else None
    y = self.attn(window_partition(y, win), mask, rngs=rngs)
    y = window_reverse(y, win, (h, w))
    if shifted:
      y = jnp.roll(y, (sh, sw), axis=(1, 2))
    # drop path draws one keep / drop per example (broadcast over the map axes), so on the map, not the tokens.
    x = partitioning.constrain(x + self.drop_path(y, rngs=rngs), _MAP)
    x = x + self.drop_path(self.mlp(self.norm2(x), rngs=rngs), rngs=rngs)
    return _as_tokens(partitioning.constrain(x, _MAP), tokens)


class PatchMerging(nnx.Module):
  """2x2 patch merging (Swin Sec. 3.1, ``PatchMerging``): ``reduction(norm(concat(x[0::2, 0::2], x[1::2, 0::2],
  x[0::2, 1::2], x[1::2, 1::2])))`` (rows, cols), ``reduction`` without bias.

  Map ``(batch, rows, cols, C)`` -> ``(batch, rows / 2, cols / 2, 2C)``, or tokens ``(batch, rows * cols, C)`` with
  ``grid`` -> ``(batch, rows * cols / 4, 2C)`` (grid ``output_grid(grid)``).

  Args:
    dim: input width ``C``; norm_epsilon: LayerNorm epsilon.
    precision, dtype, param_dtype, rngs: as ``WindowAttention``.
  """

  def __init__(self, dim: int, *, norm_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.norm = layer_norm(4 * dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.reduction = dense(4 * dim, 2 * dim, ("embed", "embed"), use_bias=False, precision=precision, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)

  @staticmethod
  def output_grid(grid: Sequence[int]) -> tuple[int, int]:
    """``(rows / 2, cols / 2)``."""
    return int(grid[0]) // 2, int(grid[1]) // 2

  def __call__(self, x: jax.Array, grid: Sequence[int] | None = None) -> jax.Array:
    """See the class docstring.

    Raises:
      ValueError: an odd grid side, or tokens without a matching grid.
    """
    x, tokens = _as_map(x, grid)
    _, h, w, _ = x.shape
    if h % 2 or w % 2:
      raise ValueError(f"patch merging needs an even grid, got {(h, w)}")
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    return _as_tokens(self.reduction(self.norm(x)), tokens)


class SwinStage(nnx.Module):
  """``depth`` Swin blocks (even ones plain, odd ones shifted by ``shift``), then optional ``PatchMerging`` (HTS-AT
  ``BasicLayer``).

  Map ``(batch, rows, cols, dim)`` -> ``(batch, rows', cols', dim')`` or tokens with ``grid`` -> tokens of
  ``output_grid(grid)``; ``(rows', cols', dim') = (rows / 2, cols / 2, 2 dim)`` with ``downsample`` else unchanged.

  Args:
    dim, depth, num_heads: width, number of blocks, heads.
    window, shift: as ``SwinBlock`` (``stage_windows`` gives Swin's per-stage values).
    drop_path: per-block stochastic-depth rates (``depth`` values).
    downsample: end with patch merging.
    mlp_ratio, dropout, attn_dropout, norm_epsilon, precision, dtype, param_dtype, rngs: as ``SwinBlock``.
  """

  def __init__(self, dim: int, depth: int, num_heads: int, window: IntOrPair, shift: IntOrPair, *,
               drop_path: Sequence[float], downsample: bool, mlp_ratio: float = 4.0, dropout: float = 0.0,
               attn_dropout: float = 0.0, norm_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.blocks = nnx.List([
        SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else shift, mlp_ratio=mlp_ratio,
                  drop_path=float(drop_path[i]), dropout=dropout, attn_dropout=attn_dropout,
                  norm_epsilon=norm_epsilon, **kw) for i in range(depth)])
    self.downsample = PatchMerging(dim, norm_epsilon=norm_epsilon, **kw) if downsample else nnx.data(None)

  def output_grid(self, grid: Sequence[int]) -> tuple[int, int]:
    """Grid after the stage: halved with ``downsample``, else unchanged."""
    return PatchMerging.output_grid(grid) if self.downsample is not None else (int(grid[0]), int(grid[1]))

  def __call__(self, x: jax.Array, grid: Sequence[int] | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """See the class docstring.

    Raises:
      ValueError: as ``SwinBlock`` / ``PatchMerging``.
    """
    x, tokens = _as_map(x, grid)
    call = partitioning.remat(lambda block, h, r: block(h, rngs=r))
    for block in self.blocks:
      x = call(block, x, rngs)
    if self.downsample is not None:
      x = self.downsample(x)
    return _as_tokens(x, tokens)


class PatchEmbed(nnx.Module):
  """Patch embedding (Swin Sec. 3.1 / HTS-AT ``PatchEmbed`` with ``patch_stride`` and ``patch_norm``).

  Conv ``patch_size`` with stride ``patch_stride`` and zero padding ``(patch - stride) // 2`` per axis (0 when
  stride = patch, as Swin), then LayerNorm: image ``(batch, rows, cols, in_channels)`` -> map ``(batch, rows',
  cols', embed_dim)`` with ``(rows', cols') = grid_size(rows, cols)``.

  Args:
    patch_size, patch_stride: kernel and stride, pairs or squares.
    embed_dim: output width ``D``.
    in_channels: image channels (1 for a spectrogram).
    norm_epsilon, precision, dtype, param_dtype, rngs: as ``SwinBlock``.
  """

  def __init__(self, patch_size: IntOrPair, patch_stride: IntOrPair, embed_dim: int, *, in_channels: int = 1,
               norm_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    self.patch_size = to_pair(patch_size)
    self.patch_stride = to_pair(patch_stride)
    self.padding = tuple((p - s) // 2 for p, s in zip(self.patch_size, self.patch_stride))
    self.proj = nnx.Conv(
        in_channels, embed_dim, self.patch_size, strides=self.patch_stride,
        padding=tuple((p, p) for p in self.padding), precision=precision, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(torch_default_init(), (None, None, "conv_in", "embed")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)
    self.norm = layer_norm(embed_dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def grid_size(self, rows: int, cols: int) -> tuple[int, int]:
    """Output grid of a ``rows x cols`` image: ``(n + 2 pad - patch) // stride + 1`` per axis."""
    return tuple((n + 2 * p - k) // s + 1 for n, p, k, s in  # type: ignore[return-value]
                 zip((rows, cols), self.padding, self.patch_size, self.patch_stride))

  def __call__(self, image: jax.Array) -> jax.Array:
    """``(batch, rows, cols, in_channels)`` -> ``(batch, rows', cols', embed_dim)``."""
    return self.norm(self.proj(image))
