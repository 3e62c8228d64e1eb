"""Audio Vision Transformer (AudioMAE encoder) in Flax NNX: patch embedding, pre-LN blocks, global pool, masking.

Sources:
  * Huang et al., "Masked Autoencoders that Listen" (NeurIPS 2022), Sec. 3.1-3.2 (AudioMAE); reference
    implementation facebookresearch/AudioMAE ``models_vit.py`` (fine-tuning ``VisionTransformer`` with
    ``global_pool``), ``models_mae.py`` (``MaskedAutoencoderViT.forward_encoder``, ``random_masking``),
    ``util/patch_embed.py`` (``PatchEmbed_new`` / ``PatchEmbed_org``), ``util/pos_embed.py``
    (``get_2d_sincos_pos_embed_flexible``, ``interpolate_pos_embed_audio``).
  * timm 0.4.5 ``vision_transformer.py`` (``Attention``, ``Mlp``, ``Block``): pre-LayerNorm blocks, fused qkv with
    bias, ``softmax(q k^T * head_dim^-0.5)``, exact (erf) GELU, stochastic depth (``DropPath``) on both residual
    branches with rates ``linspace(0, drop_path, depth)``.
  * He et al., "Masked Autoencoders Are Scalable Vision Learners" (CVPR 2022), Sec. 3 (per-example random masking by
    argsort of uniform noise; 2-D sin-cos position embedding).

Layout and token order. The input is a time-frequency feature ``fbank`` of shape ``(batch, frames, bins)`` (AudioMAE:
Kaldi fbank, 1024 frames x 128 mel bins). It is viewed as a one-channel image ``(batch, frames, bins, 1)``
(channels-last; PyTorch's ``(B, 1, T, F)`` with T as image height) and cut by a ``patch x patch`` convolution with
stride ``stride`` into a grid of ``time_patches x freq_patches`` (64 x 8 for 1024 x 128 and 16 x 16 patches). Tokens
are flattened time-major: token ``t * freq_patches + f`` (PyTorch's ``proj(x).flatten(2).transpose(1, 2)``).

Any input length works: ``time_patches = (frames - patch) // stride + 1`` (frames beyond the last whole patch are
dropped, as PyTorch's convolution does); the number of frequency bins must give the model's ``freq_patches`` when the
position embedding is a stored table.

Position embedding (``pos_embed``), three kinds (the sin-cos / resizing / masking functions are in
``uss_jax.models.vit_utils`` and re-exported here):
  * ``'sincos'``: fixed 2-D sin-cos (``sincos_pos_embed_2d``) generated for the actual grid at every call (no
    variable). The default layout ``'time_freq'`` is MAE's ``get_2d_sincos_pos_embed_flexible`` on the (time, freq)
    grid: the first ``embed_dim / 2`` channels encode the frequency index, the rest the time index, so the embedding
    of a shorter input is exactly the prefix of a longer one. ``pos_embed_layout='audiomae'`` reproduces the released
    AudioMAE pretraining table (built with ``PatchEmbed_org``, whose ``patch_hw`` has the two sides swapped: on a
    ``T x F`` grid token ``n`` gets the "column" position ``n % T`` and the "row" position ``n // T``); it only
    means something at the pretraining grid (64 x 8).
  * ``'learned'``: a trainable ``nnx.Param`` table ``(1, 1 + N0, embed_dim)`` for the nominal grid of ``img_size``
    (``N0 = T0 * F0``), trunc-normal(0.02) init (timm).
  * ``'table'``: a fixed (non-trainable, ``PosEmbedTable`` variable) table of the same shape, initialised with the
    ``'sincos'`` values at the nominal grid; this is what checkpoints fill (``uss_jax.convert.audiomae`` copies the
    checkpoint's ``pos_embed`` verbatim, which for AudioMAE is the swapped pretraining table).
  Row 0 of a table is the cls position (zero for sin-cos). Resizing rule for a stored table when the input grid
  ``T x F0`` differs from the nominal ``T0 x F0`` (``resize_pos_table``): ``T < T0``: keep the first ``T`` time rows
  (AudioMAE ``interpolate_pos_embed_audio``, used for 5 s ESC-50 clips); ``T > T0``: linear interpolation along time
  of the ``T0`` rows to ``T`` rows, half-pixel centres with the edges clamped (PyTorch ``F.interpolate(mode='linear',
  align_corners=False)``); the frequency side is never resized (a different ``F`` raises) and the cls row is kept.

Parameters carry logical axis names: patch projection ``(None, None, 'conv_in', 'embed')`` (its output is the
residual width), cls / position tables ``(None, None, 'embed')``, qkv kernel ``(D, 3, heads, head_dim)`` named
``('embed', 'qkv', 'heads', 'kv')`` (``uss_jax.nn.attention.FusedQKV``: tensor parallelism splits whole heads; the
values are PyTorch's ``qkv.weight.T`` reshaped), attention output ``('heads', 'embed')``, MLP ``('embed', 'mlp')`` /
``('mlp', 'embed')``, LayerNorms ``('embed',)``, classifier ``('embed', 'classes')``.

Activations pass ``uss_jax.nn.partitioning.constrain`` at the block boundaries (residual stream ``('batch', 'length',
'embed')``, q / k / v and the attention output ``('batch', 'length', 'heads', 'kv')``, MLP hidden ``('batch',
'length', 'mlp')``); outside the trainer's context these are no-ops (no mesh assumptions). Under the trainer's
``config.remat`` each block is rematerialised, and with ``config.scan_layers`` identical blocks (no per-block drop
path rates) run as one ``jax.lax.scan`` over their stacked weights: the
parameters stay a list of blocks (checkpoints, converters and layer-wise LR decay see the same tree); see
``uss_jax.nn.partitioning.run_blocks``.
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

# Position-embedding and masking helpers live in vit_utils; re-exported so ``vit.<name>`` keeps working.
from uss_jax.models.vit_utils import (  # noqa: F401  pylint: disable=unused-import
    POS_EMBED_LAYOUTS,
    linear_resize_indices,
    masking_from_ids_keep,
    masking_from_noise,
    num_kept,
    random_masking,
    random_masking_2d,
    resize_pos_table,
    sincos_1d,
    sincos_pos_embed_2d,
)

POS_EMBED_KINDS = ("sincos", "learned", "table")

# embed_dim, depth, num_heads (AudioMAE models_vit.py vit_{small,base,large,huge}_patch16/14).
VIT_PRESETS: dict[str, dict[str, int]] = {
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


class PosEmbedTable(nnx.Variable):
  """A fixed (not trained) position-embedding table; the optimizer only updates ``nnx.Param``."""


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(x, int):
    return (x, x)
  a, b = x
  return (int(a), int(b))


def _rng_key(rngs: nnx.Rngs | None, streams: Sequence[str], what: str) -> jax.Array:
  if rngs is not None:
    for stream in streams:
      if stream in rngs:
        return rngs[stream]()
  raise ValueError(f"{what} needs rngs with one of the streams {list(streams)}")


# --------------------------------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------------------------------


def _dense(din: int, dout: int, names: tuple[str, str], *, precision: Any, dtype: Any, param_dtype: Any,
           rngs: nnx.Rngs, kernel_init: Any = None) -> nnx.Linear:
  # MAE initialises every Linear with xavier_uniform and zero bias (models_mae.py _init_weights).
  return nnx.Linear(
      din, dout, precision=precision, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nnx.with_partitioning(kernel_init or nnx.initializers.xavier_uniform(), names),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)), rngs=rngs)


def _layer_norm(dim: int, *, epsilon: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # use_fast_variance=False: E[(x - mean)^2] as PyTorch, not E[x^2] - mean^2 (block outputs reach |x| ~ 16).
  return nnx.LayerNorm(dim, epsilon=epsilon, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
                       scale_metadata={"out_sharding": ("embed",)}, bias_metadata={"out_sharding": ("embed",)},
                       rngs=rngs)


class PatchEmbed(nnx.Module):
  """Patch embedding: a ``patch`` convolution with stride ``stride`` (no padding), tokens flattened time-major.

  Source: AudioMAE ``util/patch_embed.py`` ``PatchEmbed_new`` (``Conv2d(in, D, kernel=patch, stride=stride)``, then
  ``flatten(2).transpose(1, 2)``); ``stride == patch`` (default) is ``PatchEmbed_org``.

  Args:
    patch_size: ``(time, freq)`` kernel (an int means square); 16.
    stride: ``(time, freq)`` stride; None = ``patch_size`` (non-overlapping). AST-style overlap: 10.
    in_channels: input channels (1 for an fbank).
    embed_dim: output width ``D``.
    precision, dtype, param_dtype: passed to ``nnx.Conv``.
    rngs: initialisation RNGs.
  """

  def __init__(self, patch_size: int | Sequence[int] = 16, stride: int | Sequence[int] | None = None, *,
               in_channels: int = 1, embed_dim: int = 768, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.patch_size = _pair(patch_size)
    self.stride = _pair(stride if stride is not None else patch_size)
    self.in_channels = in_channels
    # xavier_uniform of the kernel viewed as a (patch*patch*in, D) Linear (MAE initialize_weights).
    init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3)
    self.proj = nnx.Conv(
        in_channels, embed_dim, self.patch_size, strides=self.stride, padding="VALID", precision=precision,
        dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(init, (None, None, "conv_in", "embed")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)), rngs=rngs)

  def grid_size(self, frames: int, bins: int) -> tuple[int, int]:
    """Token grid ``(T, F)`` for an input of ``frames x bins``: ``(n - patch) // stride + 1`` per axis.

    Raises:
      ValueError: an input smaller than one patch.
    """
    out = []
    for n, p, s in zip((frames, bins), self.patch_size, self.stride):
      if n < p:
        raise ValueError(f"input of {frames} frames x {bins} bins is smaller than one {self.patch_size} patch")
      out.append((n - p) // s + 1)
    return out[0], out[1]

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(batch, frames, bins)`` or ``(batch, frames, bins, in_channels)`` -> ``(batch, T * F, D)`` (time-major)."""
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"PatchEmbed expects (batch, frames, bins[, {self.in_channels}]), got {x.shape}")
    y = self.proj(x)
    return y.reshape(y.shape[0], y.shape[1] * y.shape[2], y.shape[3])


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (timm 0.4.5 ``Attention``, ``qkv_bias=True``).

  ``qkv = x W_qkv + b`` split as ``(3, heads, head_dim)`` along the output; ``A = softmax(q k^T * head_dim^-0.5)``
  (softmax in float32); ``out = proj(A v)``. ``attention='einsum'`` (default; supports attention dropout) or
  ``'dot_product_attention'`` (``jax.nn.dot_product_attention``, fused kernels on GPU; no attention dropout).

  Args:
    dim: width ``D``; num_heads: heads (``D % num_heads == 0``).
    attn_dropout: dropout on the attention weights; proj_dropout: dropout after ``proj``.
    attention: implementation, see above.
    precision, dtype, param_dtype: matmul precision / compute dtype / parameter dtype.
    rngs: initialisation RNGs.

  Raises:
    ValueError: ``dim`` not divisible by ``num_heads``, unknown ``attention``, or attention dropout with the fused
      implementation.
  """

  def __init__(self, dim: int, num_heads: int, *, attn_dropout: float = 0.0, proj_dropout: float = 0.0,
               attention: str = "einsum", precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
    if attention not in ("einsum", "dot_product_attention"):
      raise ValueError(f"unknown attention implementation {attention!r}")
    if attention == "dot_product_attention" and attn_dropout > 0:
      raise ValueError("attention dropout needs attention='einsum'")
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.attention = attention
    self.precision = precision
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = FusedQKV(dim, num_heads, self.head_dim, **kw)
    self.proj = _dense(dim, dim, ("heads", "embed"), **kw)
    self.attn_drop = nnx.Dropout(attn_dropout)
    self.proj_drop = nnx.Dropout(proj_dropout)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """``(batch, tokens, D)`` -> ``(batch, tokens, D)``; ``rngs`` for dropout in train mode."""
    b, n, d = x.shape
    heads = ("batch", "length", "heads", "kv")
    qkv = self.qkv(x)  # (batch, tokens, 3, heads, head_dim)
    q, k, v = (partitioning.constrain(qkv[:, :, i], heads) for i in range(3))
    scale = self.head_dim ** -0.5
    if self.attention == "einsum":
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision) * scale
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
      weights = self.attn_drop(weights, rngs=rngs)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision)
    else:
      out = jax.nn.dot_product_attention(q, k, v, scale=scale)
    out = partitioning.constrain(out, heads)
    return self.proj_drop(self.proj(out.reshape(b, n, d)), rngs=rngs)


class Mlp(nnx.Module):
  """``fc2(drop(gelu(fc1(x))))`` then dropout, exact erf GELU (timm 0.4.5 ``Mlp`` with ``nn.GELU``)."""

  def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = _dense(dim, hidden, ("embed", "mlp"), **kw)
    self.fc2 = _dense(hidden, dim, ("mlp", "embed"), **kw)
    self.drop = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """``(..., D)`` -> ``(..., D)``."""
    h = jax.nn.gelu(self.fc1(x), approximate=False)
    if h.ndim == 3:
      h = partitioning.constrain(h, ("batch", "length", "mlp"))
    return self.drop(self.fc2(self.drop(h, rngs=rngs)), rngs=rngs)


class Block(nnx.Module):
  """Pre-LN transformer block: ``x + dp(attn(norm1(x)))``, then ``x + dp(mlp(norm2(x)))``.

  Source: timm 0.4.5 ``Block``. ``dp`` is stochastic depth (``DropPath``): in train mode each example's branch is
  zeroed with probability ``drop_path`` and otherwise scaled by ``1 / (1 - drop_path)``; implemented as
  ``nnx.Dropout`` broadcast over (tokens, channels). RNG stream ``'dropout'``.

  Args:
    dim, num_heads, mlp_ratio: width, heads, MLP hidden = ``int(dim * mlp_ratio)``.
    drop_path: stochastic-depth rate of this block.
    dropout, attn_dropout: timm ``drop`` / ``attn_drop`` (0 in AudioMAE).
    norm_epsilon: LayerNorm epsilon (1e-6).
    attention, precision, dtype, param_dtype, rngs: see ``Attention``.
  """

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, drop_path: float = 0.0,
               dropout: float = 0.0, attn_dropout: float = 0.0, norm_epsilon: float = 1e-6,
               attention: str = "einsum", precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = _layer_norm(dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, attn_dropout=attn_dropout, proj_dropout=dropout, attention=attention, **kw)
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2))
    self.norm2 = _layer_norm(dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout, **kw)

  def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """``(batch, tokens, D)`` -> ``(batch, tokens, D)``."""
    x = x + self.drop_path(self.attn(self.norm1(x), rngs=rngs), rngs=rngs)
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    x = x + self.drop_path(self.mlp(self.norm2(x), rngs=rngs), rngs=rngs)
    return partitioning.constrain(x, ("batch", "length", "embed"))


class VisionTransformer(nnx.Module):
  """AudioMAE ViT encoder over ``(batch, frames, mel_bins)`` features, with cls token, optional classifier head.

  Forward (``__call__``; eval mode = ``model.eval()``):
    1. ``patch_embed_out = patch_embed(fbank)`` ``(B, N, D)``, ``N = T * F`` tokens, time-major.
    2. ``x = patch_embed_out + pos[1:]`` (position embedding for the actual grid, see the module docstring).
    3. train mode with ``mask_t_prob`` / ``mask_f_prob`` > 0 only: AudioMAE fine-tuning 2-D masking
       (``random_masking_2d``; whole time rows / frequency columns removed, RNG stream ``'masking'``, else
       ``'default'``, else ``'dropout'``).
    4. prepend ``cls_token + pos[0]``; dropout ``dropout``; ``depth`` ``Block`` s.
    5. ``global_pool=True`` (fine-tuning): ``pooled = fc_norm(mean of the patch tokens)`` (cls excluded), no final
       token norm (the reference deletes it). ``global_pool=False`` (pretraining encoder): ``normed_tokens =
       norm(tokens)``, ``pooled = normed_tokens[:, 0]`` (cls).
    6. ``logits = head(pooled)`` when ``num_classes > 0``.

  Output dict (float32 unless ``dtype`` says otherwise):
    ``logits`` ``(B, classes)`` (only with a head), ``pooled`` ``(B, D)``, ``tokens`` ``(B, 1 + N', D)``: the last
    block's output including cls at index 0 (``N' = N`` unless 2-D masking dropped tokens), ``patch_embed_out``
    ``(B, N, D)``: the patch projection before position embeddings; ``normed_tokens`` (only without global pool);
    ``layers`` ``(depth, B, 1 + N', D)``: every block's output, with ``return_layers=True``.

  ``forward_encoder`` is the masked-pretraining entry point (MAE ``forward_encoder``).

  Args:
    img_size: nominal ``(frames, bins)`` (1024, 128); sets the stored position table's grid (``'learned'`` /
      ``'table'``); inputs of other lengths are accepted.
    patch_size: patch ``(time, freq)`` (16); stride: None = patch (AudioMAE), 10 = AST-style overlap.
    in_channels: 1.
    embed_dim, depth, num_heads, mlp_ratio: ViT-B 768 / 12 / 12 / 4 (presets in ``VIT_PRESETS``, ``build_vit``).
    global_pool: mean-pool + ``fc_norm`` (True, fine-tuning) or cls + final ``norm`` (False, MAE encoder).
    num_classes: classifier outputs (527 for AudioSet); 0 = no head.
    drop_path: stochastic-depth rate of the last block (``linspace(0, drop_path, depth)``); 0.1 for fine-tuning.
    dropout, attn_dropout: timm ``drop_rate`` (position dropout, projections, MLP) / ``attn_drop_rate``; 0.
    pos_embed: ``'sincos'`` | ``'learned'`` | ``'table'`` (module docstring); pos_embed_layout: ``'time_freq'`` |
      ``'audiomae'`` for the sin-cos values.
    mask_t_prob, mask_f_prob: fine-tuning 2-D masking rates (AudioMAE AudioSet: 0.2 / 0.2), train mode only.
    norm_epsilon: LayerNorm epsilon (1e-6).
    attention: ``'einsum'`` | ``'dot_product_attention'`` (see ``Attention``).
    precision: ``jax.lax`` precision of every matmul / conv (None = default; ``'highest'`` for fp32 on GPU/TPU).
    dtype, param_dtype: compute / parameter dtypes.
    rngs: initialisation RNGs (``params``).

  Raises:
    ValueError: unknown ``pos_embed`` / layout, ``embed_dim`` not a multiple of 4 with sin-cos, or bad head count.
  """

  def __init__(self, img_size: Sequence[int] = (1024, 128), patch_size: int | Sequence[int] = 16,
               stride: int | Sequence[int] | None = None, *, in_channels: int = 1, embed_dim: int = 768,
               depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, global_pool: bool = True,
               num_classes: int = 527, drop_path: float = 0.1, dropout: float = 0.0, attn_dropout: float = 0.0,
               pos_embed: str = "sincos", pos_embed_layout: str = "time_freq", mask_t_prob: float = 0.0,
               mask_f_prob: float = 0.0, norm_epsilon: float = 1e-6, attention: str = "einsum",
               precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if pos_embed not in POS_EMBED_KINDS:
      raise ValueError(f"unknown pos_embed {pos_embed!r}; expected one of {POS_EMBED_KINDS}")
    if pos_embed_layout not in POS_EMBED_LAYOUTS:
      raise ValueError(f"unknown pos_embed_layout {pos_embed_layout!r}; expected one of {POS_EMBED_LAYOUTS}")
    if pos_embed != "learned" and embed_dim % 4:
      raise ValueError(f"sin-cos position embedding needs embed_dim % 4 == 0, got {embed_dim}")
    self.img_size = _pair(img_size)
    self.embed_dim = embed_dim
    self.depth = depth
    self.num_heads = num_heads
    self.num_classes = num_classes
    self.global_pool = global_pool
    self.pos_embed_kind = pos_embed
    self.pos_embed_layout = pos_embed_layout
    self.mask_t_prob = mask_t_prob
    self.mask_f_prob = mask_f_prob
    self.deterministic = False  # flipped by model.train() / model.eval(), like nnx.Dropout
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    self.patch_embed = PatchEmbed(patch_size, stride, in_channels=in_channels, embed_dim=embed_dim, **kw)
    self.grid = self.patch_embed.grid_size(*self.img_size)
    num_patches = self.grid[0] * self.grid[1]
    self.cls_token = nnx.Param(
        nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, "embed"))(
            rngs.params(), (1, 1, embed_dim), param_dtype))
    if pos_embed == "learned":
      self.pos_embed = nnx.Param(
          nnx.with_partitioning(nnx.initializers.truncated_normal(0.02), (None, None, "embed"))(
              rngs.params(), (1, 1 + num_patches, embed_dim), param_dtype))
    elif pos_embed == "table":
      table = sincos_pos_embed_2d(embed_dim, self.grid, layout=pos_embed_layout, cls_token=True)
      self.pos_embed = PosEmbedTable(jnp.asarray(table[None], param_dtype), out_sharding=(None, None, "embed"))
    else:
      self.pos_embed = nnx.data(None)
    self.pos_drop = nnx.Dropout(dropout)
    rates = np.linspace(0.0, drop_path, depth) if depth else []
    self.blocks = nnx.List([
        Block(embed_dim, num_heads, mlp_ratio, drop_path=float(r), dropout=dropout, attn_dropout=attn_dropout,
              norm_epsilon=norm_epsilon, attention=attention, **kw) for r in rates])
    ln = dict(epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if global_pool:
      self.fc_norm = _layer_norm(embed_dim, **ln)
      self.norm = nnx.data(None)
    else:
      self.norm = _layer_norm(embed_dim, **ln)
      self.fc_norm = nnx.data(None)
    if num_classes > 0:
      # MAE / AudioMAE fine-tuning: trunc_normal_(head.weight, std=2e-5), zero bias.
      self.head = _dense(embed_dim, num_classes, ("embed", "classes"),
                         kernel_init=nnx.initializers.truncated_normal(2e-5), **kw)
    else:
      self.head = nnx.data(None)

  # ------------------------------------------------------------------------------------------------------------------

  def grid_size(self, frames: int, bins: int) -> tuple[int, int]:
    """Token grid ``(T, F)`` for an input of ``frames x bins`` (``PatchEmbed.grid_size``)."""
    return self.patch_embed.grid_size(frames, bins)

  def position_embedding(self, grid: Sequence[int]) -> jax.Array:
    """The position embedding ``(1, 1 + T * F, D)`` for a token grid ``(T, F)`` (row 0 = cls).

    ``'sincos'``: generated for ``grid``; ``'learned'`` / ``'table'``: the stored table through
    ``resize_pos_table`` (crop / linear interpolation along time).

    Raises:
      ValueError: a stored table and a different number of frequency patches.
    """
    if self.pos_embed is None:
      table = sincos_pos_embed_2d(self.embed_dim, grid, layout=self.pos_embed_layout, cls_token=True)
      return jnp.asarray(table[None])
    return resize_pos_table(self.pos_embed[...], self.grid, grid)

  def _embed(self, fbank: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, tuple[int, int]]:
    if fbank.ndim != 3:
      raise ValueError(f"expected fbank (batch, frames, bins), got shape {fbank.shape}")
    grid = self.grid_size(fbank.shape[1], fbank.shape[2])
    patches = self.patch_embed(fbank)
    pos = self.position_embedding(grid).astype(patches.dtype)
    return patches, patches + pos[:, 1:], pos[:, :1], grid

  def _encode(self, x: jax.Array, cls_pos: jax.Array, *, rngs: nnx.Rngs | None,
              return_layers: bool = False) -> tuple[jax.Array, list[jax.Array]]:
    cls = jnp.broadcast_to((self.cls_token[...] + cls_pos).astype(x.dtype), (x.shape[0], 1, x.shape[2]))
    x = self.pos_drop(jnp.concatenate([cls, x], axis=1), rngs=rngs)
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    return partitioning.run_blocks(self.blocks, x, rngs=rngs, return_layers=return_layers)

  def __call__(self, fbank: jax.Array, *, rngs: nnx.Rngs | None = None,
               return_layers: bool = False) -> dict[str, jax.Array]:
    """Encodes ``fbank`` ``(batch, frames, bins)`` (see the class docstring for the outputs).

    Args:
      fbank: normalised features, time before frequency (AudioMAE: ``(x - mean) / (2 std)`` Kaldi fbank).
      rngs: RNG streams for dropout / drop path (``'dropout'``) and 2-D masking (``'masking'``); needed in train mode
        when any of them is active.
      return_layers: also return every block's output as ``layers``.

    Raises:
      ValueError: a non-3-D input, an input shorter than one patch, a frequency size that does not match a stored
        position table, or train-mode masking without rngs.
    """
    patches, x, cls_pos, grid = self._embed(fbank)
    if not self.deterministic and (self.mask_t_prob > 0 or self.mask_f_prob > 0):
      key = _rng_key(rngs, ("masking", "default", "dropout"), "2-D masking in train mode")
      ids_keep = random_masking_2d(key, x.shape[0], grid, self.mask_t_prob, self.mask_f_prob)
      x = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
    tokens, layers = self._encode(x, cls_pos, rngs=rngs, return_layers=return_layers)
    out = {"tokens": tokens, "patch_embed_out": patches}
    if self.global_pool:
      out["pooled"] = self.fc_norm(tokens[:, 1:].mean(axis=1))
    else:
      out["normed_tokens"] = self.norm(tokens)
      out["pooled"] = out["normed_tokens"][:, 0]
    if self.head is not None:
      out["logits"] = self.head(out["pooled"])
    if return_layers:
      out["layers"] = jnp.stack(layers) if layers else jnp.zeros((0,) + tokens.shape, tokens.dtype)
    return out

  def forward_encoder(self, fbank: jax.Array, *, ids_keep: jax.Array | None = None, mask_ratio: float | None = None,
                      rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked encoder (MAE ``forward_encoder``): embed, keep a fixed number of tokens per example, encode.

    Exactly one of ``ids_keep`` (a caller-given per-example index set) and ``mask_ratio`` (unstructured random
    masking, ``random_masking`` with the RNG stream ``'masking'``, else ``'default'``) must be given. Position
    embeddings are added before the gather, so kept tokens keep their positions. The final ``norm`` is applied when
    the model has one (``global_pool=False``, the MAE encoder); a global-pool model returns the last block's output.

    Args:
      fbank: ``(batch, frames, bins)``.
      ids_keep: ``(batch, keep)`` int, distinct token indices ``t * F + f`` per example.
      mask_ratio: fraction removed; keeps ``num_kept(N, mask_ratio)`` tokens (AudioMAE 0.8: 102 of 512).
      rngs: RNG streams (masking; dropout / drop path in train mode).

    Returns:
      ``latent`` ``(batch, 1 + keep, D)`` (cls first, kept tokens in ``ids_keep`` order), ``mask`` ``(batch, N)``
      float32 (1 = removed), ``ids_restore`` ``(batch, N)`` int32 (``concat(kept, mask_tokens)[ids_restore]`` is in
      token order).

    Raises:
      ValueError: both or neither of ``ids_keep`` / ``mask_ratio``, ``ids_keep`` of the wrong batch size, or no
        RNG for random masking.
    """
    if (ids_keep is None) == (mask_ratio is None):
      raise ValueError("forward_encoder needs exactly one of ids_keep and mask_ratio")
    _, x, cls_pos, _ = self._embed(fbank)
    b, n, _ = x.shape
    if ids_keep is None:
      key = _rng_key(rngs, ("masking", "default"), "random masking")
      ids_keep, mask, ids_restore = random_masking(key, b, n, mask_ratio)
    else:
      ids_keep = jnp.asarray(ids_keep, jnp.int32)
      if ids_keep.ndim != 2 or ids_keep.shape[0] != b:
        raise ValueError(f"ids_keep must be (batch={b}, keep), got {ids_keep.shape}")
      mask, ids_restore = masking_from_ids_keep(ids_keep, n)
    x = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
    latent, _ = self._encode(x, cls_pos, rngs=rngs)
    if self.norm is not None:
      latent = self.norm(latent)
    return latent, mask, ids_restore


def build_vit(size: str = "base", **kwargs: Any) -> VisionTransformer:
  """A ``VisionTransformer`` with the width / depth / heads of a preset (``VIT_PRESETS``), other arguments passed on.

  ``build_vit('base', rngs=nnx.Rngs(0))`` is AudioMAE's fine-tuning ViT-B/16 (global pool, 527 classes, drop path
  0.1); ``build_vit('base', global_pool=False, num_classes=0, drop_path=0.0, rngs=...)`` its pretraining encoder.

  Raises:
    ValueError: an unknown preset.
  """
  if size not in VIT_PRESETS:
    raise ValueError(f"unknown ViT size {size!r}; expected one of {sorted(VIT_PRESETS)}")
  return VisionTransformer(**{**VIT_PRESETS[size], **kwargs})
