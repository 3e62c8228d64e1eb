"""CaRE-SEP: a Swin-UNet whose one encoder serves both the query and the separation (seed 001) in Flax NNX.

Source: Wang et al., "Consistent and Relevant: Rethink the Query Embedding in General Sound Separation" (seed 001):
Sec. 2.1 (Fig. 1: a mixture ``a = a_1 + a_2``, the STFT split into mel-scale sub-bands, query embeddings ``e_j`` of
anchor audio, Eq. (1) ``S(a, e_j) -> a_j``, "the linear layer (embedding layer) is applied on the query embedding
... and then the queries are added into the audio feature maps of each layer block"), Sec. 2.2 (shared encoder:
Patch-Embed CNN, three groups of Swin blocks + patch merging), Sec. 2.3 (connector: a Swin stage, the
token-semantic CNN for tagging, average pooling -> query embedding), Sec. 2.4 (decoder: three Swin groups and
three patch-expand layers, a final x4 patch-up, skip connections), Sec. 3.2 (STFT 1024 / 320, 64 mel bands, the
Swin configuration of HTS-AT: D = 96 -> 8D = 768-d query, D = 256 -> 2048-d). The decoder follows Swin-UNet
(Cao et al., ECCV-W 2022, ref. [14]: ``PatchExpand`` = Linear(C -> 2C) + 2x2 pixel shuffle to C/2 + LayerNorm,
``FinalPatchExpand_X4`` = Linear(C -> 16C) + 4x4 pixel shuffle + LayerNorm, skips = each encoder stage's input,
``concat_back_dim`` Linear(2C -> C) after each concatenation). The encoder is HTS-AT's (``uss_jax.models.htsat``:
same module names ``patch_embed`` / ``layers`` / ``norm`` / ``tscam_conv``, so an HTS-AT tagging run initialises
it by path, the paper's "Init").

What the paper leaves open, chosen here (each a constructor argument):
  * Band features: the complex STFT ``S`` (``(batch, frames, bins)``) is split by ``uss_jax.audio.bandsplit``
    (UDPC rule, 64 overlapping mel bands zero-padded to ``max_width`` bins); each band's dB magnitude
    ``10 log10(max(|S|^2, 1e-10))`` goes through a learnable per-band linear map to ``in_channels`` features
    (initialised to the mean over the band's bins, so the untrained input is a log band-energy "mel" image), then
    ``bn0`` (BatchNorm over the bands, as HTS-AT's over mel bins).
  * Image: frames are zero-padded to a multiple of ``frame_multiple`` and folded ``freq_ratio`` times as HTS-AT
    (``fold`` / ``unfold``; rows = folded band, cols = time).
  * Decoder head: the x4 patch-up's ``D`` channels per (frame, band) -> a per-band Linear to ``max_width`` mask
    logits per band slot -> ``band_merge`` (mean of each bin's one or two band copies) -> a mask per STFT bin;
    ``mask='magnitude'``: ``sigmoid`` magnitude mask on the mixture STFT (mixture phase, as ZS-ASP; the untrained
    model outputs 0.5 x mixture), ``'complex'``: a complex ratio mask ``(m_re + i m_im)``.
  * Conditioning: one ``FiLM(condition -> C)`` (additive) per Swin block, added to the block's input, in the
    separation pass's encoder, connector and decoder; the query pass runs the encoder unconditioned.
  * The decoder receives the connector's output after ``norm`` (the tokens the query embedding pools).

Layout: channels-last maps ``(batch, rows, cols, C)`` with rows = folded band and cols = time inside the Swin stages;
waveforms ``(batch, samples)``; the query embedding ``(batch, 8D)``; tagging logits ``(batch, classes)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from uss_jax.audio import bandsplit
from uss_jax.audio import stft as stft_lib
from uss_jax.models.interface import SystemInterface
from uss_jax.nn import partitioning, swin
from uss_jax.nn.film import FiLM

MASKS = ("magnitude", "complex")
DB_FLOOR = 1e-10  # power floor of the band features' 10 log10(|S|^2)


# --------------------------------------------------------------------------------------------------------------------
# Pure helpers (tested against numpy transcriptions).
# --------------------------------------------------------------------------------------------------------------------


def fold(x: jax.Array, freq_ratio: int) -> jax.Array:
  """HTS-AT's ``reshape_wav2img`` with channels: ``(batch, frames, bands, C)`` -> ``(batch, ratio * bands, frames /
  ratio, C)``; frame ``g * cols + w`` of band ``m`` goes to row ``g * bands + m``, column ``w``.

  Raises:
    ValueError: frames not divisible by ``freq_ratio``.
  """
  b, t, m, c = x.shape
  if t % freq_ratio:
    raise ValueError(f"{t} frames are not divisible by freq_ratio {freq_ratio}")
  cols = t // freq_ratio
  return x.reshape(b, freq_ratio, cols, m, c).transpose(0, 1, 3, 2, 4).reshape(b, freq_ratio * m, cols, c)


def unfold(x: jax.Array, freq_ratio: int) -> jax.Array:
  """Inverse of ``fold``: ``(batch, ratio * bands, cols, C)`` -> ``(batch, ratio * cols, bands, C)``."""
  b, rows, cols, c = x.shape
  m = rows // freq_ratio
  return x.reshape(b, freq_ratio, m, cols, c).transpose(0, 1, 3, 2, 4).reshape(b, freq_ratio * cols, m, c)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """Swin-UNet's ``rearrange('b h w (p1 p2 c) -> b (h p1) (w p2) c')``: ``(batch, h, w, f^2 C)`` ->
  ``(batch, f h, f w, C)``; channel ``(p1 * f + p2) * C + c`` of pixel ``(i, j)`` goes to ``(f i + p1, f j + p2)``."""
  b, h, w, ch = x.shape
  c = ch // (factor * factor)
  x = x.reshape(b, h, w, factor, factor, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * factor, w * factor, c)


def band_linear(x: jax.Array, kernel: jax.Array, bias: jax.Array, precision: Any = None) -> jax.Array:
  """A separate linear map per band: ``y[..., n, :] = x[..., n, :] @ kernel[n] + bias[n]``.

  Args:
    x: ``(..., bands, in)``; kernel: ``(bands, in, out)``; bias: ``(bands, out)``.

  Returns:
    ``(..., bands, out)``.
  """
  return jnp.einsum("...ni,nio->...no", x, kernel.astype(x.dtype), precision=precision) + bias.astype(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------------------------------------------------


class PatchExpand(nnx.Module):
  """Swin-UNet ``PatchExpand`` (``factor=2``: ``Linear(C -> 2C)``, shuffle to ``C / 2``) or, with
  ``keep_width=True``, ``FinalPatchExpand_X4`` (``factor`` = the patch size, 4: ``Linear(C -> f^2 C)``, shuffle to
  ``C``), both bias-free, then LayerNorm of the output width.

  Map ``(batch, h, w, C)`` -> ``(batch, f h, f w, C_out)`` with ``C_out = C`` (keep_width) or ``2 C / f^2``.

  Args:
    dim: input width C; factor: upsampling per axis; keep_width: the final patch-up.
    norm_epsilon, precision, dtype, param_dtype, rngs: as ``uss_jax.nn.swin``.

  Raises:
    ValueError: a factor below 2, or ``2 C`` not divisible by ``f^2`` without keep_width.
  """

  def __init__(self, dim: int, factor: int = 2, *, keep_width: bool = False, norm_epsilon: float = 1e-5,
               precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if factor < 2 or (not keep_width and (2 * dim) % (factor * factor)):
      raise ValueError(f"PatchExpand: bad factor {factor} for dim {dim}")
    self.factor = int(factor)
    self.out_dim = dim if keep_width else 2 * dim // (factor * factor)
    self.expand = swin.dense(dim, self.out_dim * factor * factor, ("embed", "mlp"), use_bias=False,
                             precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = swin.layer_norm(self.out_dim, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(batch, h, w, C)`` -> ``(batch, f h, f w, C_out)``."""
    return self.norm(pixel_shuffle(self.expand(x), self.factor))


class BandFeatures(nnx.Module):
  """STFT -> band split -> per-band dB features -> ``bn0``: waveform ``(batch, samples)`` -> ``(spec (batch, frames,
  bins) complex64, features (batch, frames, bands, in_channels))`` (module docstring, "Band features").

  Args:
    sample_rate, n_fft, hop_length, n_bands: the STFT (Hann, centred, reflect) and band-split (CaRE-SEP: 32 kHz,
      1024, 320, 64).
    in_channels: features per band (1 = the HTS-AT patch embedding's input).
    bn_momentum, bn_epsilon: PyTorch-convention BatchNorm of ``bn0``.
    precision, dtype, param_dtype, rngs: as elsewhere.
  """

  def __init__(self, sample_rate: int, n_fft: int = 1024, hop_length: int = 320, n_bands: int = 64, *,
               in_channels: int = 1, bn_momentum: float = 0.1, bn_epsilon: float = 1e-5, precision: Any = None,
               dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.sample_rate, self.n_fft, self.hop_length = int(sample_rate), int(n_fft), int(hop_length)
    self.layout = bandsplit.band_layout(float(sample_rate), int(n_fft), int(n_bands))
    self.n_bands, self.in_channels, self.precision = int(n_bands), int(in_channels), precision
    mean = self.layout.mask / self.layout.widths[:, None]  # (bands, width): the mean over each band's real slots
    self.kernel = nnx.Param(jnp.asarray(np.repeat(mean[:, :, None], in_channels, axis=2), param_dtype))
    self.bias = nnx.Param(jnp.zeros((self.n_bands, in_channels), param_dtype))
    self.bn0 = nnx.BatchNorm(self.n_bands, axis=-2, momentum=1.0 - bn_momentum, epsilon=bn_epsilon,
                             use_fast_variance=False, dtype=dtype, scale_metadata={"out_sharding": (None,)},
                             bias_metadata={"out_sharding": (None,)}, rngs=rngs)

  def spectrogram(self, waveform: jax.Array) -> jax.Array:
    """``(batch, samples)`` -> complex STFT ``(batch, 1 + samples // hop, n_fft / 2 + 1)``."""
    return stft_lib.stft(waveform, self.n_fft, self.hop_length)

  def __call__(self, waveform: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(batch, samples)`` -> ``(spec (batch, frames, bins) complex64, features (batch, frames, bands, in_channels))``
    (dB band features after ``bn0``)."""
    spec = self.spectrogram(waveform)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    db = 10.0 * jnp.log10(jnp.maximum(bandsplit.band_split(power, self.layout), DB_FLOOR))
    db = jnp.where(jnp.asarray(self.layout.mask), db, 0.0)
    feats = band_linear(db, self.kernel[...], self.bias[...], self.precision)  # (b, t, bands, in)
    return spec, self.bn0(feats)


class SwinEncoder(nnx.Module):
  """The shared encoder + connector: band features, HTS-AT patch embedding, ``len(depths)`` Swin stages (all but the
  last end with patch merging: the encoder; the last is the connector's Swin stage), ``norm``, the token-semantic
  head ``tscam_conv``, and average pooling (the query embedding). Module names as ``uss_jax.models.htsat.HTSAT``.

  ``__call__(waveform, conditions=None)`` -> dict: ``spec`` (complex STFT), ``frames`` (STFT frames before
  padding), ``skips`` (each stage's input map, finest first), ``tokens_map`` (the normalised connector output
  ``(batch, rows_f, cols_f, 8D)``), ``embedding`` ``(batch, 8D)`` (mean of the tokens), ``logits`` ``(batch,
  classes)`` (token-semantic head, mean over time), ``clipwise_output`` = ``sigmoid(logits)``. ``conditions``: per
  stage a list of per-block ``(batch, C_stage)`` additions (the separation pass), or None (the query pass).

  Args:
    num_classes: tagging classes of the token-semantic head.
    sample_rate, n_fft, hop_length, n_bands, in_channels: ``BandFeatures``.
    freq_ratio: HTS-AT folding factor (4 for 1024-frame clips; 1 for short segments).
    patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path: HTS-AT's Swin configuration
      (96 / (2, 2, 6, 2) / (4, 8, 16, 32) / 8 / 4 / 0.1; D = 256 for the 2048-d query).
    min_frames: frames are padded to at least this many (HTS-AT's 1024 for the folded 256 x 256 image).
    norm_epsilon, precision, dtype, param_dtype, rngs: as ``uss_jax.nn.swin``.

  Raises:
    ValueError: a layout that does not divide (see ``frame_multiple``).
  """

  def __init__(self, num_classes: int, *, sample_rate: int, n_fft: int = 1024, hop_length: int = 320,
               n_bands: int = 64, in_channels: int = 1, freq_ratio: int = 4, patch_size: int = 4,
               embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (4, 8, 16, 32),
               window_size: int = 8, mlp_ratio: float = 4.0, drop_path: float = 0.1, min_frames: int = 0,
               norm_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
    if len(depths) != len(num_heads) or len(depths) < 2:
      raise ValueError(f"depths {depths} / num_heads {num_heads}: need >= 2 stages of equal length")
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_classes, self.freq_ratio, self.patch = int(num_classes), int(freq_ratio), int(patch_size)
    self.embed_dim, self.depths, self.num_heads = int(embed_dim), depths, num_heads
    self.window_size, self.mlp_ratio, self.min_frames = int(window_size), float(mlp_ratio), int(min_frames)
    self.num_features = self.embed_dim * 2 ** (len(depths) - 1)
    self.bands = BandFeatures(sample_rate, n_fft, hop_length, n_bands, in_channels=in_channels, **kw)
    self.patch_embed = swin.PatchEmbed(patch_size, patch_size, self.embed_dim, in_channels=in_channels,
                                       norm_epsilon=norm_epsilon, **kw)
    rows = n_bands * freq_ratio
    if rows % (patch_size * 2 ** (len(depths) - 1)):
      raise ValueError(f"{rows} image rows (bands x freq_ratio) are not divisible by patch x 2^(stages - 1)")
    # Windows from the frequency side (the time side is padded to fit): stage i's rows = rows / patch / 2^i.
    grid_rows = rows // patch_size
    self.stage_windows = tuple(swin.stage_windows((grid_rows, 1 << 30), self.window_size, depths))
    rates = np.linspace(0.0, drop_path, sum(depths))
    stages, start = [], 0
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
      window, shift = self.stage_windows[i]
      stages.append(swin.SwinStage(self.embed_dim * 2 ** i, depth, heads, window, shift,
                                   drop_path=[float(r) for r in rates[start:start + depth]],
                                   downsample=i < len(depths) - 1, mlp_ratio=mlp_ratio, norm_epsilon=norm_epsilon,
                                   **kw))
      start += depth
    self.layers = nnx.List(stages)
    self.norm = swin.layer_norm(self.num_features, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype,
                                rngs=rngs)
    final_rows = grid_rows // 2 ** (len(depths) - 1)
    if final_rows % freq_ratio:
      raise ValueError(f"final rows {final_rows} are not divisible by freq_ratio {freq_ratio}")
    self.freq_tokens = final_rows // freq_ratio
    self.tscam_conv = nnx.Conv(
        self.num_features, self.num_classes, (3, self.freq_tokens), padding=((1, 1), (0, 0)), precision=precision,
        dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(swin.torch_default_init(), (None, None, "conv_in", "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)

  @property
  def frame_multiple(self) -> int:
    """STFT frames are zero-padded to a multiple of this: every stage's columns divisible by its window and even
    before merging (``freq_ratio * patch * lcm_i(2^i * window_i, 2^(stages - 1))``)."""
    n = len(self.depths)
    cols = [self.patch * 2 ** i * win for i, (win, _) in enumerate(self.stage_windows)] + [self.patch * 2 ** (n - 1)]
    return self.freq_ratio * math.lcm(*cols)

  def padded_frames(self, frames: int) -> int:
    """``max(frames, min_frames)`` rounded up to ``frame_multiple``."""
    m = self.frame_multiple
    return -(-max(int(frames), self.min_frames) // m) * m

  def block_widths(self) -> list[list[int]]:
    """Per stage, per block: the width the block's condition addition must have."""
    return [[self.embed_dim * 2 ** i] * d for i, d in enumerate(self.depths)]

  def head(self, tokens_map: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token-semantic head on the normalised final map ``(batch, rows_f, cols_f, C)`` -> ``(embedding (batch, C),
    logits (batch, classes))`` (HTS-AT's regrouping to ``(time tokens, freq tokens)``, ``tscam_conv``, mean)."""
    b, hf, wf, ch = tokens_map.shape
    c = hf // self.freq_ratio
    tokens = tokens_map.reshape(b, self.freq_ratio, c, wf, ch).transpose(0, 1, 3, 2, 4)
    tokens = tokens.reshape(b, self.freq_ratio * wf, c, ch)
    seg_logits = self.tscam_conv(tokens)[:, :, 0, :].astype(jnp.float32)
    return jnp.mean(tokens, axis=(1, 2)), jnp.mean(seg_logits, axis=1)

  def __call__(self, waveform: jax.Array, conditions: Sequence[Sequence[jax.Array]] | None = None, *,
               rngs: nnx.Rngs | None = None) -> dict[str, Any]:
    """Waveform ``(batch, samples)`` -> the dict of the class docstring."""
    spec, feats = self.bands(waveform)
    frames = feats.shape[1]
    pad = self.padded_frames(frames) - frames
    feats = jnp.pad(feats, ((0, 0), (0, pad), (0, 0), (0, 0)))
    x = self.patch_embed(fold(feats, self.freq_ratio))
    skips = []
    for i, stage in enumerate(self.layers):
      skips.append(x)
      for j, block in enumerate(stage.blocks):
        if conditions is not None:
          x = x + conditions[i][j][:, None, None, :].astype(x.dtype)
        x = partitioning.remat(lambda blk, h, r: blk(h, rngs=r))(block, x, rngs)
      if stage.downsample is not None:
        x = stage.downsample(x)
    tokens_map = self.norm(x)
    embedding, logits = self.head(tokens_map)
    return {"spec": spec, "frames": frames, "skips": skips, "tokens_map": tokens_map, "embedding": embedding,
            "logits": logits, "clipwise_output": jax.nn.sigmoid(logits)}


class SwinDecoder(nnx.Module):
  """The Swin-UNet decoder mirroring ``SwinEncoder`` (module docstring): ``up0`` = ``PatchExpand(8D)``, then for
  the finer stages ``i = n-2 .. 0``: concatenate the skip, ``concat_back[k]`` Linear(2C -> C), the Swin stage
  ``layers_up[k]`` (``depths[i]`` blocks, conditioned), ``PatchExpand`` except at the finest; ``norm_up``; the
  ``x4`` patch-up (x patch size); the per-band mask head.

  Args:
    encoder: the encoder it mirrors (widths, windows, depths, heads, bands).
    mask: ``'magnitude'`` or ``'complex'`` (module docstring).
    norm_epsilon, precision, dtype, param_dtype, rngs: as elsewhere.
  """

  def __init__(self, encoder: SwinEncoder, *, mask: str = "magnitude", norm_epsilon: float = 1e-5,
               precision: Any = None, dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if mask not in MASKS:
      raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    n, d = len(encoder.depths), encoder.embed_dim
    self.mask, self.freq_ratio, self.precision = mask, encoder.freq_ratio, precision
    self.up0 = PatchExpand(d * 2 ** (n - 1), 2, norm_epsilon=norm_epsilon, **kw)
    concat, stages, ups = [], [], []
    for i in range(n - 2, -1, -1):
      dim = d * 2 ** i
      window, shift = encoder.stage_windows[i]
      concat.append(swin.dense(2 * dim, dim, ("embed", "embed"), **kw))
      stages.append(swin.SwinStage(dim, encoder.depths[i], encoder.num_heads[i], window, shift,
                                   drop_path=[0.0] * encoder.depths[i], downsample=False, mlp_ratio=encoder.mlp_ratio,
                                   norm_epsilon=norm_epsilon, **kw))
      ups.append(PatchExpand(dim, 2, norm_epsilon=norm_epsilon, **kw) if i > 0 else nnx.data(None))
    self.concat_back, self.layers_up, self.upsample = nnx.List(concat), nnx.List(stages), nnx.List(ups)
    self.norm_up = swin.layer_norm(d, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.up_x4 = PatchExpand(d, encoder.patch, keep_width=True, norm_epsilon=norm_epsilon, **kw)
    layout = encoder.bands.layout
    self.layout = layout
    self.components = 1 if mask == "magnitude" else 2
    out = layout.max_width * self.components
    init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=-2, out_axis=-1, batch_axis=(0,))
    self.head_kernel = nnx.Param(init(rngs.params(), (layout.n_bands, d, out), param_dtype))
    bias = np.zeros((layout.n_bands, layout.max_width, self.components), np.float32)
    if mask == "complex":
      bias[..., 0] = 1.0  # the untrained model's ratio mask is ~1 + 0j
    self.head_bias = nnx.Param(jnp.asarray(bias.reshape(layout.n_bands, out), param_dtype))

  def block_widths(self) -> list[list[int]]:
    """Per decoder stage (coarse to fine), per block: the condition addition's width."""
    return [[stage.blocks[0].norm1.num_features] * len(stage.blocks) for stage in self.layers_up]

  def __call__(self, tokens_map: jax.Array, skips: Sequence[jax.Array],
               conditions: Sequence[Sequence[jax.Array]] | None = None, *,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Connector output ``(batch, rows_f, cols_f, 8D)`` + encoder skips -> mask logits ``(batch, padded frames,
    bins, components)``."""
    x = self.up0(tokens_map)
    for k, (lin, stage, up) in enumerate(zip(self.concat_back, self.layers_up, self.upsample)):
      x = lin(jnp.concatenate([x, skips[len(skips) - 2 - k]], axis=-1))
      for j, block in enumerate(stage.blocks):
        if conditions is not None:
          x = x + conditions[k][j][:, None, None, :].astype(x.dtype)
        x = partitioning.remat(lambda blk, h, r: blk(h, rngs=r))(block, x, rngs)
      if up is not None:
        x = up(x)
    x = self.up_x4(self.norm_up(x))  # (b, rows, cols, D) at the image resolution
    x = unfold(x, self.freq_ratio)  # (b, frames, bands, D)
    logits = band_linear(x, self.head_kernel[...], self.head_bias[...], self.precision)
    b, t = logits.shape[:2]
    logits = logits.reshape(b, t, self.layout.n_bands, self.layout.max_width, self.components)
    logits = jnp.moveaxis(logits, -1, 2)  # (b, t, components, bands, width)
    return jnp.moveaxis(bandsplit.band_merge(logits.astype(jnp.float32), self.layout), 2, -1)


def apply_mask(spec: jax.Array, logits: jax.Array, mask: str) -> jax.Array:
  """The estimate's STFT: ``sigmoid(l) * S`` (``'magnitude'``, mixture phase) or ``(l_re + i l_im) * S``
  (``'complex'``); ``spec`` ``(batch, frames, bins)`` complex, ``logits`` ``(batch, frames, bins, components)``."""
  if mask == "magnitude":
    return jax.nn.sigmoid(logits[..., 0]) * spec
  return jax.lax.complex(logits[..., 0], logits[..., 1]) * spec


class CareSep(nnx.Module):
  """The CaRE-SEP system: shared ``encoder`` (query and separation), ``decoder``, one additive FiLM per Swin block
  (``films_encoder[i][j]``, ``films_decoder[k][j]``), and, with ``shared_encoder=False``, a separate
  ``query_encoder`` of the same architecture (Table 2, models B / G).

  * ``query(audio)`` -> ``{'embedding' (batch, 8D), 'logits' (batch, classes)}`` of the query encoder (the shared
    one by default), unconditioned; gradients flow into it unless ``query_grad=False`` (Table 2 "Grad").
  * ``__call__(mixture, condition)`` -> the separated waveform ``(batch, samples)``: the encoder and decoder with the
    condition added before every block, mask on the mixture STFT, iSTFT to the mixture's length.

  Args:
    encoder, decoder: ``SwinEncoder`` / ``SwinDecoder``; query_encoder: a second ``SwinEncoder`` or None (shared).
    query_grad: let the separation loss reach the query embedding.
    info: the ``SystemInterface``; None for a bare model.
    rngs: initialisation RNGs of the FiLM layers.
  """

  def __init__(self, encoder: SwinEncoder, decoder: SwinDecoder, *, query_encoder: SwinEncoder | None = None,
               query_grad: bool = True, info: SystemInterface | None = None, precision: Any = None,
               dtype: Any = None, rngs: nnx.Rngs):
    self.encoder, self.decoder = encoder, decoder
    self.query_encoder = query_encoder if query_encoder is not None else nnx.data(None)
    self.query_grad, self.info = bool(query_grad), info
    self.condition_size = encoder.num_features

    def films(widths):
      return nnx.List([nnx.List([FiLM(self.condition_size, w, kernel_init=swin.torch_default_init(),
                                      axis_names=(None, "embed"), precision=precision, dtype=dtype, rngs=rngs)
                                 for w in stage]) for stage in widths])

    self.films_encoder = films(encoder.block_widths())
    self.films_decoder = films(decoder.block_widths())

  def query(self, audio: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Query audio ``(batch, samples)`` -> ``embedding`` ``(batch, 8D)`` (stop-gradient unless ``query_grad``) and
    the tagging ``logits`` ``(batch, classes)`` (always with gradient: the CLS+SEP BCE trains through them)."""
    enc = self.query_encoder if self.query_encoder is not None else self.encoder
    out = enc(audio, rngs=rngs)
    emb = out["embedding"].astype(jnp.float32)
    return {"embedding": emb if self.query_grad else jax.lax.stop_gradient(emb), "logits": out["logits"]}

  def embed(self, audio: jax.Array) -> jax.Array:
    """``query(audio)['embedding']``."""
    return self.query(audio)["embedding"]

  def __call__(self, mixture: jax.Array, condition: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Mixture ``(batch, samples)`` + condition ``(batch, 8D)`` -> the estimate ``(batch, samples)`` (Eq. (1))."""
    enc_c = [[f.modulation(condition)[1] for f in stage] for stage in self.films_encoder]
    dec_c = [[f.modulation(condition)[1] for f in stage] for stage in self.films_decoder]
    out = self.encoder(mixture, enc_c, rngs=rngs)
    logits = self.decoder(out["tokens_map"], out["skips"], dec_c, rngs=rngs)[:, :out["frames"]]
    est = apply_mask(out["spec"], logits, self.decoder.mask)
    bands = self.encoder.bands
    return stft_lib.istft(est, bands.n_fft, bands.hop_length, length=mixture.shape[-1])

  # ---- the system interface ----

  def interface(self) -> SystemInterface:
    if self.info is None:
      raise ValueError("this CareSep was built without a SystemInterface (use build_care_sep_system)")
    return self.info

  def separate(self, mixture: jax.Array, condition: jax.Array) -> dict[str, jax.Array]:
    """``{'waveform': (batch, samples)}``."""
    return {"waveform": self(mixture, condition)}

  def embed_audio(self, audio: jax.Array) -> jax.Array:
    """Query embedding ``(batch, 8D)`` of query segments ``(batch, query_samples)``."""
    return self.embed(audio)


# --------------------------------------------------------------------------------------------------------------------
# Registry builder.
# --------------------------------------------------------------------------------------------------------------------


def encoder_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``SwinEncoder`` arguments (less ``num_classes``) of ``config.model`` (``bands``: ``n_fft``, ``hop_length``,
  ``n_bands``, ``in_channels``; ``swin``: ``freq_ratio``, ``patch_size``, ``embed_dim``, ``depths``, ``num_heads``,
  ``window_size``, ``mlp_ratio``, ``drop_path``, ``min_frames``) at ``config.data.sample_rate``."""
  m = config.model
  kw = dict(m.bands)
  kw.update({k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(m.swin).items()})
  return dict(sample_rate=int(config.data.sample_rate), **kw)


def build_care_sep_system(config: ml_collections.ConfigDict, context: Mapping[str, Any], rngs: nnx.Rngs) -> CareSep:
  """Registry builder of ``'care_sep'``: ``config.model`` (``encoder_kwargs``, ``mask``, ``shared_encoder``,
  ``query_grad``), ``context['num_classes']`` (tagging classes), ``context['condition_space']``.

  Raises:
    KeyError: no ``num_classes`` in the context.
  """
  m = config.model
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  kw = dict(encoder_kwargs(config), dtype=dtype)
  num_classes = int(context["num_classes"])
  encoder = SwinEncoder(num_classes, rngs=rngs, **kw)
  decoder = SwinDecoder(encoder, mask=m.get("mask", "magnitude"), dtype=dtype, rngs=rngs)
  query_encoder = None if m.get("shared_encoder", True) else SwinEncoder(num_classes, rngs=rngs, **kw)
  sr = int(config.data.sample_rate)
  segment = int(round(config.data.segment_seconds * sr))
  info = SystemInterface(name="care_sep", sample_rate=sr, segment_samples=segment,
                         condition_size=encoder.num_features, query_kinds=("audio",), outputs=("waveform",),
                         condition_space=str(context.get("condition_space", "")), query_samples=segment)
  return CareSep(encoder, decoder, query_encoder=query_encoder, query_grad=bool(m.get("query_grad", True)),
                 info=info, dtype=dtype, rngs=rngs)
