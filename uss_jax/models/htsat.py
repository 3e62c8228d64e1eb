"""HTS-AT (hierarchical token-semantic audio transformer) and the LAION-CLAP audio encoder in Flax NNX.

Sources:
  * Chen et al., "HTS-AT: A Hierarchical Token-Semantic Audio Transformer for Sound Classification and Detection"
    (ICASSP 2022), Sec. 2 and Fig. 1; reference implementation RetroCirce/HTS-Audio-Transformer ``model/htsat.py``
    (``HTSAT_Swin_Transformer``, ``reshape_wav2img``, ``forward_features`` with ``enable_tscam``) and ``config.py``.
  * LAION-AI/CLAP ``src/laion_clap/clap_module/htsat.py`` (the same network as CLAP's audio branch,
    ``create_htsat_model``: tiny = embed 96, depths (2, 2, 6, 2), heads (4, 8, 16, 32), window 8, spec_size 256,
    patch 4, stride 4) and ``model.py`` (``CLAP.audio_projection`` = Linear(768, 512) -> ReLU -> Linear(512, 512)
    on the branch's ``embedding``; ``get_audio_embedding`` L2-normalises it). The released HTSAT-tiny audio config:
    48 kHz, window 1024, hop 480, 64 mels 50-14000 Hz, 480,000-sample (10 s) clips, 527 classes.
  * Liu et al., "Swin Transformer" (ICCV 2021), Sec. 3.2 (shifted windows, relative position bias, patch merging):
    the generic Swin layers (``WindowAttention``, ``SwinBlock``, ``PatchMerging``, ``SwinStage``, ``PatchEmbed``,
    window helpers) live in ``uss_jax.nn.swin`` and are re-exported here; this module keeps what is HTS-AT specific
    (the spectrogram folding, the token-semantic head, the CLAP projection, the builders).

Forward (``__call__``; eval mode = ``model.eval()``):
  1. ``logmel = frontend(waveform)`` ``(batch, frames, mel_bins)`` (PANNs log-mel, ``uss_jax.audio.frontends``);
     ``bn0`` = BatchNorm over the mel bins; in train mode PANNs SpecAugment (2 x 64-frame, 2 x 8-bin stripes).
  2. ``to_image``: the spectrogram is folded into an image of ``H = mel_bins * freq_ratio`` rows by
     ``W = frames / freq_ratio`` columns (``reshape_wav2img``): the frames are cut into ``freq_ratio`` consecutive
     chunks and chunk ``g`` is stacked at rows ``[g * mel_bins, (g + 1) * mel_bins)``; row ``g * mel_bins + m`` column
     ``w`` holds mel bin ``m`` of frame ``g * W + w``. HTS-AT-tiny: 1024 frames x 64 mels -> 256 x 256.
     Inputs shorter than ``target_frames`` are first stretched to it along time by PyTorch's bicubic interpolation
     with ``align_corners=True`` (``bicubic_resize_matrix``; 10 s at 48 kHz / hop 480 = 1001 frames -> 1024), as the
     reference does.
  3. ``patch_embed``: conv ``patch_size`` / ``patch_stride`` (4 / 4) + LayerNorm -> ``(batch, H/4, W/4, D)``.
  4. ``len(depths)`` Swin stages; stage ``i`` has width ``D * 2^i``, ``depths[i]`` blocks alternating plain and
     shifted (by ``window // 2``) windows, then patch merging (all but the last). As in the reference a stage whose
     nominal grid has a side ``<= window_size`` uses a square window of that side and no shift.
  5. ``norm`` (LayerNorm) on the final map ``(batch, Hf, Wf, C)`` (8 x 8 x 768 for tiny), then the token-semantic
     regrouping: row ``h = g * c + r`` (``c = Hf / freq_ratio`` frequency bins per chunk) and column ``w`` become
     time token ``g * Wf + w`` and frequency token ``r`` -> ``tokens`` ``(batch, time_tokens, freq_tokens, C)``
     (tiny: ``(batch, 32, 2, 768)``), time-major like every time-frequency map of this project.
  6. ``embedding`` = mean of ``tokens`` over time and frequency (the reference's ``latent_output`` / CLAP's
     ``embedding``); ``tscam_conv`` (Conv kernel ``(3 time, c freq)``, padding 1 in time, the reference's
     ``Conv2d(C, classes, (c, 3), padding=(0, 1))``) gives segment logits ``(batch, time_tokens, classes)``;
     ``logits`` = their mean over time (``avgpool``), ``clipwise_output = sigmoid(logits)``;
     ``framewise_output`` = ``sigmoid`` of the segment logits, each repeated ``frames_per_token`` (32) times
     (PANNs ``interpolate``), i.e. at the resolution of the (interpolated) image: 1024 frames for tiny, not the
     input's 1001.

Input length. A clip of ``frames`` log-mel frames is accepted when ``frames <= target_frames`` (stretched, as the
reference) or when ``frames`` is a multiple of ``frame_multiple`` (then used as is, giving proportionally more time
tokens: an extension; the reference only takes ``<= target_frames``). ``frame_multiple`` makes every stage's grid
divisible by its window and every merged grid even: 1024 frames for HTS-AT-tiny (so 10.24 s multiples at 100
frames/s); small test models have small multiples. The number of mel bins must equal ``mel_bins``.

Layout. Internally the Swin stages work on the reference's image orientation, channels-last ``(batch, rows, cols,
C)`` with rows = folded frequency and cols = time (shift direction, window order, patch-merging order and the
relative-position index depend on it, and checkpoints are converted one to one). Outputs are time-major.

Parameters carry logical axis names: patch conv ``(None, None, 'conv_in', 'embed')``, LayerNorms ``('embed',)``,
qkv ``('embed', 'heads')``, attention output ``('heads', 'embed')``, MLP ``('embed', 'mlp')`` / ``('mlp', 'embed')``,
patch-merging reduction ``('embed', 'embed')`` (the second use of a mesh axis is dropped by the sharding rules),
relative-position tables ``(None, 'heads')``, ``bn0`` ``(None,)``, ``tscam_conv`` ``(None, None, 'conv_in',
'conv_out')`` / ``('conv_out',)``, CLAP projection ``('embed', 'mlp')`` / ``('mlp', 'embed')``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uss_jax.audio import frontends
from uss_jax.models import cnn14
from uss_jax.nn import swin
# Re-exported: the generic Swin pieces lived here before ``uss_jax.nn.swin`` (tests and the converter use them).
from uss_jax.nn.swin import (  # noqa: F401  pylint: disable=unused-import
    Mlp,
    PatchEmbed,
    PatchMerging,
    SwinBlock,
    SwinStage,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    stage_windows,
    window_partition,
    window_reverse,
)

Frontend = Callable[[jax.Array], jax.Array]

# embed_dim, depths, num_heads of LAION-CLAP create_htsat_model (RetroCirce config.py: htsat_dim 96 / 256).
HTSAT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(4, 8, 16, 32)),
    "base": dict(embed_dim=128, depths=(2, 2, 12, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dim=256, depths=(2, 2, 12, 2), num_heads=(4, 8, 16, 32)),
}

# LAION-CLAP HTSAT audio_cfg (laion_clap model_configs/HTSAT-tiny.json, released 48 kHz checkpoints).
CLAP_FRONTEND = dict(sample_rate=48000, n_fft=1024, hop_length=480, n_mels=64, fmin=50.0, fmax=14000.0)
CLAP_JOINT_DIM = 512
BICUBIC_A = -0.75  # PyTorch upsample_bicubic2d cubic-convolution coefficient


# --------------------------------------------------------------------------------------------------------------------
# Static helpers (numpy, evaluated at trace time).
# --------------------------------------------------------------------------------------------------------------------


def _cubic_weights(t: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
  """Keys cubic-convolution weights of the taps at offsets -1, 0, 1, 2 for fractional positions ``t`` in [0, 1)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """1-D bicubic interpolation ``n_in -> n_out`` samples as a matrix, PyTorch ``align_corners=True``.

  ``src = i * (n_in - 1) / (n_out - 1)``, ``i0 = floor(src)``, ``t = src - i0``; output ``i`` is
  ``sum_k w_k(t) x[clip(i0 - 1 + k, 0, n_in - 1)]`` for ``k = 0..3`` with the cubic-convolution weights of
  ``A = -0.75`` (PyTorch ``upsample_bicubic2d``: ``area_pixel_compute_source_index`` with ``align_corners``,
  ``upsample_get_value_bounded`` clamps the taps). Used by the reference's ``reshape_wav2img``.

  Returns:
    ``(n_out, n_in)`` float64; ``y = M @ x``.

  Raises:
    ValueError: a size below 1.
  """
  if n_in < 1 or n_out < 1:
    raise ValueError(f"sizes must be >= 1, got {n_in} -> {n_out}")
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  src = np.arange(n_out, dtype=np.float64) * scale
  i0 = np.floor(src).astype(np.int64)
  weights = _cubic_weights(src - i0)
  m = np.zeros((n_out, n_in))
  for k in range(4):
    np.add.at(m, (np.arange(n_out), np.clip(i0 - 1 + k, 0, n_in - 1)), weights[:, k])
  return m


def _batch_norm(num_features: int, *, momentum: float, epsilon: float, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # PyTorch momentum m -> flax momentum 1 - m; float32 two-pass variance (log-mel around -50 dB).
  return nnx.BatchNorm(num_features, momentum=1.0 - momentum, epsilon=epsilon, use_fast_variance=False, dtype=dtype,
                       scale_metadata={"out_sharding": (None,)}, bias_metadata={"out_sharding": (None,)}, rngs=rngs)


# --------------------------------------------------------------------------------------------------------------------
# HTS-AT.
# --------------------------------------------------------------------------------------------------------------------


class HTSAT(nnx.Module):
  """HTS-AT with its log-mel front end inside (see the module docstring for the forward pass and the layout).

  Output dict (float32 unless ``dtype`` says otherwise for ``tokens`` / ``embedding``):
    ``clipwise_output`` ``(batch, classes)`` = ``sigmoid(logits)``; ``logits`` ``(batch, classes)`` (mean over time
    of the token-semantic logits; what BCE is computed on); ``segmentwise_logits`` / ``segmentwise_output``
    ``(batch, time_tokens, classes)``; ``framewise_output`` ``(batch, image_frames, classes)`` (each time token
    repeated ``frames_per_token`` times; ``image_frames = max(frames, target_frames)``); ``embedding``
    ``(batch, num_features)`` (768 for tiny); ``tokens`` ``(batch, time_tokens, freq_tokens, num_features)``: the
    final normalised token map (the CLAP teacher target of MAM-CLAP); ``logmel`` ``(batch, frames, mel_bins)`` dB
    (``__call__`` only).

  Args:
    num_classes: classes of the token-semantic head (527 for AudioSet / LAION-CLAP), >= 1.
    mel_bins: log-mel bins (64).
    freq_ratio: frequency folding factor (4 = spec_size 256 / 64 mels).
    target_frames: nominal frames ``T0`` (1024 = spec_size * freq_ratio); shorter inputs are stretched to it.
    patch_size, patch_stride: patch conv kernel / stride (4 / 4; stride None = patch).
    embed_dim, depths, num_heads: 96, (2, 2, 6, 2), (4, 8, 16, 32) for tiny (``HTSAT_PRESETS``).
    window_size: Swin window (8).
    mlp_ratio: 4.
    drop_path: stochastic depth of the last block (``linspace(0, drop_path, sum(depths))``; 0.1).
    dropout, attn_dropout: HTS-AT ``drop_rate`` / ``attn_drop_rate`` (0).
    frontend: callable waveform ``(batch, samples)`` -> log-mel ``(batch, frames, mel_bins)`` (e.g.
      ``frontends.get_frontend('panns', sample_rate=48000, hop_length=480)``); None = ``from_logmel`` only.
    spec_augment: in train mode after bn0: True = PANNs' SpecAugment (``cnn14.panns_spec_augment``), a callable
      ``(logmel, *, rngs) -> logmel``, or False / None.
    bn_momentum, bn_epsilon: PyTorch-convention BatchNorm momentum (0.1) and epsilon (1e-5) of ``bn0``.
    norm_epsilon: LayerNorm epsilon (1e-5).
    precision, dtype, param_dtype: matmul / conv precision, compute dtype, parameter dtype.
    rngs: initialisation RNGs.

  Raises:
    ValueError: a layout that does not divide (``target_frames`` not a multiple of ``freq_ratio``, a stage grid not
      divisible by its window, an odd grid before merging, final rows not divisible by ``freq_ratio``), mismatched
      ``depths`` / ``num_heads``, or ``num_classes < 1``.
  """

  def __init__(self, num_classes: int = 527, *, mel_bins: int = 64, freq_ratio: int = 4, target_frames: int = 1024,
               patch_size: int | Sequence[int] = 4, patch_stride: int | Sequence[int] | None = None,
               embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (4, 8, 16, 32),
               window_size: int = 8, mlp_ratio: float = 4.0, drop_path: float = 0.1, dropout: float = 0.0,
               attn_dropout: float = 0.0, frontend: Frontend | None = None,
               spec_augment: Callable[..., jax.Array] | bool | None = True, bn_momentum: float = 0.1,
               bn_epsilon: float = 1e-5, norm_epsilon: float = 1e-5, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
    if len(depths) != len(num_heads) or not depths:
      raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty and of equal length")
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if target_frames % freq_ratio:
      raise ValueError(f"target_frames {target_frames} is not a multiple of freq_ratio {freq_ratio}")
    self.num_classes = int(num_classes)
    self.mel_bins = int(mel_bins)
    self.freq_ratio = int(freq_ratio)
    self.target_frames = int(target_frames)
    self.embed_dim = int(embed_dim)
    self.depths, self.num_heads = depths, num_heads
    self.window_size = int(window_size)
    self.num_features = self.embed_dim * 2 ** (len(depths) - 1)
    self.precision = precision
    self.deterministic = False  # flipped by model.train() / model.eval()
    self.frontend = frontend
    self.spec_augment = cnn14.panns_spec_augment if spec_augment is True else (spec_augment or None)
    kw = dict(precision=precision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    self.bn0 = _batch_norm(self.mel_bins, momentum=bn_momentum, epsilon=bn_epsilon, dtype=dtype, rngs=rngs)
    stride = patch_size if patch_stride is None else patch_stride
    self.patch_embed = PatchEmbed(patch_size, stride, self.embed_dim, norm_epsilon=norm_epsilon, **kw)
    self.image_size = (self.mel_bins * self.freq_ratio, self.target_frames // self.freq_ratio)
    self.grid = self.patch_embed.grid_size(*self.image_size)
    self.stage_windows = tuple(stage_windows(self.grid, self.window_size, depths))
    self._check_layout(self.grid)
    self.pos_drop = nnx.Dropout(dropout)
    rates = np.linspace(0.0, drop_path, sum(depths))
    stages, start = [], 0
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
      window, shift = self.stage_windows[i]
      stages.append(SwinStage(self.embed_dim * 2 ** i, depth, heads, window, shift,
                              drop_path=[float(r) for r in rates[start:start + depth]],
                              downsample=i < len(depths) - 1, mlp_ratio=mlp_ratio, dropout=dropout,
                              attn_dropout=attn_dropout, norm_epsilon=norm_epsilon, **kw))
      start += depth
    self.layers = nnx.List(stages)
    self.norm = swin.layer_norm(self.num_features, epsilon=norm_epsilon, dtype=dtype, param_dtype=param_dtype,
                                rngs=rngs)
    self.freq_tokens = (self.grid[0] // 2 ** (len(depths) - 1)) // self.freq_ratio
    self.tscam_conv = nnx.Conv(
        self.num_features, self.num_classes, (3, self.freq_tokens), padding=((1, 1), (0, 0)), precision=precision,
        dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.with_partitioning(swin.torch_default_init(), (None, None, "conv_in", "conv_out")),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("conv_out",)), rngs=rngs)

  # ---- layout ----

  def _stage_grids(self, grid: Sequence[int]) -> list[tuple[int, int]]:
    return [(int(grid[0]) // 2 ** i, int(grid[1]) // 2 ** i) for i in range(len(self.depths))]

  def _check_layout(self, grid: Sequence[int]) -> None:
    grids = self._stage_grids(grid)
    for i, ((h, w), (win, _)) in enumerate(zip(grids, self.stage_windows)):
      if h < 1 or w < 1 or h % win or w % win:
        raise ValueError(f"HTS-AT stage {i}: grid {(h, w)} is not divisible by its window {win} (patch grid "
                         f"{tuple(grid)}, image {self.image_size})")
      if i < len(grids) - 1 and (h % 2 or w % 2):
        raise ValueError(f"HTS-AT stage {i}: grid {(h, w)} must be even for patch merging")
    if grids[-1][0] % self.freq_ratio:
      raise ValueError(f"HTS-AT: final rows {grids[-1][0]} are not divisible by freq_ratio {self.freq_ratio}")

  @property
  def frame_multiple(self) -> int:
    """Longer inputs (``frames > target_frames``) must be a multiple of this many frames (1024 for tiny)."""
    sy, sx = self.patch_embed.patch_stride
    del sy
    n = len(self.depths)
    cols = [sx * 2 ** i * win for i, (win, _) in enumerate(self.stage_windows)] + [sx * 2 ** (n - 1)]
    return self.freq_ratio * math.lcm(*cols)

  @property
  def frames_per_token(self) -> int:
    """Image frames per time token: ``patch_stride * 2^(stages - 1)`` (32 for tiny)."""
    return self.patch_embed.patch_stride[1] * 2 ** (len(self.depths) - 1)

  def image_frames(self, frames: int) -> int:
    """Frames after ``to_image``'s stretch: ``max(frames, target_frames)``."""
    return max(int(frames), self.target_frames)

  def token_grid(self, frames: int) -> tuple[int, int]:
    """``(time_tokens, freq_tokens)`` of ``tokens`` for an input of ``frames`` log-mel frames (32 x 2 for tiny)."""
    return self.image_frames(frames) // self.frames_per_token, self.freq_tokens

  def to_image(self, x: jax.Array) -> jax.Array:
    """``(batch, frames, mel_bins)`` -> the folded image ``(batch, rows, cols, 1)`` (``reshape_wav2img``).

    Raises:
      ValueError: wrong mel count, or a length above ``target_frames`` that is not a multiple of ``frame_multiple``.
    """
    b, t, m = x.shape
    if m != self.mel_bins:
      raise ValueError(f"expected {self.mel_bins} mel bins, got input {x.shape}")
    if t < self.target_frames:
      mat = jnp.asarray(bicubic_resize_matrix(t, self.target_frames), x.dtype)
      x = jnp.einsum("ot,btm->bom", mat, x, precision=jax.lax.Precision.HIGHEST)
      t = self.target_frames
    elif t > self.target_frames and t % self.frame_multiple:
      raise ValueError(f"HTS-AT takes up to {self.target_frames} frames (stretched) or a multiple of "
                       f"{self.frame_multiple}; got {t}")
    cols = t // self.freq_ratio
    # frames (g * cols + w) -> rows g * mel_bins + m, column w.
    x = x.reshape(b, self.freq_ratio, cols, m).transpose(0, 1, 3, 2).reshape(b, self.freq_ratio * m, cols)
    return x[..., None]

  # ---- forward ----

  def __call__(self, waveform: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Waveform ``(batch, samples)`` float32 at the front end's rate -> outputs (class docstring) with ``logmel``.

    Raises:
      ValueError: no front end, or an input length the layout does not take (``to_image``).
    """
    if self.frontend is None:
      raise ValueError("HTSAT was built without a front end: pass frontend=... or call from_logmel(logmel)")
    logmel = self.frontend(waveform)
    out = self.from_logmel(logmel, rngs=rngs)
    out["logmel"] = logmel
    return out

  def from_logmel(self, logmel: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Log-mel ``(batch, frames, mel_bins)`` dB -> outputs (class docstring, no ``logmel``).

    Args:
      logmel: PANNs log-mel.
      rngs: RNG streams for SpecAugment (``'augment'`` / ``'default'`` / ``'dropout'``) and dropout / drop path in
        train mode.

    Raises:
      ValueError: as ``to_image``.
    """
    if logmel.ndim != 3 or logmel.shape[-1] != self.mel_bins:
      raise ValueError(f"expected log-mel (batch, frames, {self.mel_bins}), got {logmel.shape}")
    x = self.bn0(logmel)
    if not self.deterministic and self.spec_augment is not None:
      x = self.spec_augment(x, rngs=rngs)
    image = self.to_image(x)
    grid = self.patch_embed.grid_size(image.shape[1], image.shape[2])
    if grid != self.grid:
      self._check_layout(grid)
    x = self.pos_drop(self.patch_embed(image), rngs=rngs)
    for stage in self.layers:
      x = stage(x, rngs=rngs)
    x = self.norm(x)  # (batch, rows Hf = freq_ratio * c, cols Wf, C)
    b, hf, wf, ch = x.shape
    c = hf // self.freq_ratio
    tokens = x.reshape(b, self.freq_ratio, c, wf, ch).transpose(0, 1, 3, 2, 4).reshape(b, self.freq_ratio * wf, c, ch)
    seg_logits = self.tscam_conv(tokens)[:, :, 0, :].astype(jnp.float32)  # (batch, time_tokens, classes)
    seg_out = jax.nn.sigmoid(seg_logits)
    logits = jnp.mean(seg_logits, axis=1)
    return {
        "clipwise_output": jax.nn.sigmoid(logits),
        "logits": logits,
        "segmentwise_logits": seg_logits,
        "segmentwise_output": seg_out,
        "framewise_output": jnp.repeat(seg_out, self.frames_per_token, axis=1),
        "embedding": jnp.mean(tokens, axis=(1, 2)),
        "tokens": tokens,
    }


# --------------------------------------------------------------------------------------------------------------------
# LAION-CLAP audio encoder.
# --------------------------------------------------------------------------------------------------------------------


class AudioProjection(nnx.Module):
  """LAION-CLAP ``audio_projection``: ``linear2(relu(linear1(x)))`` (``nn.Sequential(Linear, ReLU, Linear)``)."""

  def __init__(self, in_dim: int, joint_dim: int = CLAP_JOINT_DIM, *, precision: Any = None, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(kernel_init=swin.torch_default_init(), precision=precision, dtype=dtype, param_dtype=param_dtype,
              rngs=rngs)
    self.linear1 = swin.dense(in_dim, joint_dim, ("embed", "mlp"), **kw)
    self.linear2 = swin.dense(joint_dim, joint_dim, ("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``(..., in_dim)`` -> ``(..., joint_dim)``."""
    return self.linear2(jax.nn.relu(self.linear1(x)))


class CLAPAudioEncoder(nnx.Module):
  """LAION-CLAP audio side: ``audio_branch`` (HTS-AT) + ``audio_projection`` (LAION-AI/CLAP ``model.py``).

  ``__call__(waveform)`` returns the branch's outputs plus ``projection`` ``(batch, joint_dim)`` =
  ``audio_projection(embedding)`` (``CLAP.forward(audio, None)``) and ``clap_embedding`` = its L2-normalised form
  (``get_audio_embedding``). ``project_tokens`` applies the projection to every token of a token map.

  Args:
    audio_branch: the HTS-AT (HTSAT-tiny: ``clap_htsat_tiny``).
    joint_dim: projection width (512).
    precision, dtype, param_dtype, rngs: as elsewhere.
  """

  def __init__(self, audio_branch: HTSAT, joint_dim: int = CLAP_JOINT_DIM, *, precision: Any = None,
               dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.audio_branch = audio_branch
    self.joint_dim = int(joint_dim)
    self.audio_projection = AudioProjection(audio_branch.num_features, joint_dim, precision=precision, dtype=dtype,
                                            param_dtype=param_dtype, rngs=rngs)

  @property
  def frontend(self) -> Frontend | None:
    return self.audio_branch.frontend

  def project_tokens(self, tokens: jax.Array) -> jax.Array:
    """``(..., num_features)`` -> ``(..., joint_dim)`` through ``audio_projection``."""
    return self.audio_projection(tokens)

  def __call__(self, waveform: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Waveform ``(batch, samples)`` at the branch's rate (48 kHz) -> HTS-AT outputs + ``projection``,
    ``clap_embedding``."""
    out = self.audio_branch(waveform, rngs=rngs)
    proj = self.audio_projection(out["embedding"]).astype(jnp.float32)
    out["projection"] = proj
    out["clap_embedding"] = proj / jnp.maximum(jnp.linalg.norm(proj, axis=-1, keepdims=True), 1e-12)
    return out


def clap_frontend(**overrides: Any) -> frontends.PannsLogMel:
  """LAION-CLAP's log-mel: PANNs log-mel at 48 kHz, n_fft 1024, hop 480, 64 mels 50-14000 Hz (any field
  overridable)."""
  return frontends.get_frontend("panns", **{**CLAP_FRONTEND, **overrides})


def clap_htsat_tiny(num_classes: int = 527, *, rngs: nnx.Rngs, **kwargs: Any) -> CLAPAudioEncoder:
  """The LAION-CLAP HTSAT-tiny audio encoder (``create_htsat_model('tiny')`` + projection 768 -> 512), 48 kHz
  front end; ``kwargs`` override ``HTSAT`` arguments."""
  args = dict(HTSAT_PRESETS["tiny"], mel_bins=64, freq_ratio=4, target_frames=1024, patch_size=4, window_size=8,
              frontend=clap_frontend())
  args.update(kwargs)
  return CLAPAudioEncoder(HTSAT(num_classes, rngs=rngs, **args), rngs=rngs)


def build_htsat(config, num_classes: int, rngs: nnx.Rngs) -> HTSAT:
  """The HTS-AT of ``config.model`` with the front end of ``config.frontend`` (compute dtype ``config.compute_dtype``).

  ``config.model``: ``size`` (an ``HTSAT_PRESETS`` key, default ``'tiny'``) and any of ``embed_dim``, ``depths``,
  ``num_heads``, ``window_size``, ``patch_size``, ``patch_stride``, ``freq_ratio``, ``target_frames``,
  ``mlp_ratio``, ``drop_path``, ``dropout``, ``spec_augment``; ``mel_bins`` is the front end's ``num_bins``.
  ``config.frontend``: a ``uss_jax.audio.frontends`` name (``'panns'``) and its fields; its ``sample_rate`` must equal
  ``config.data.sample_rate`` when the config has one.

  Raises:
    ValueError: unknown preset, sample-rate mismatch, or a layout ``HTSAT`` rejects.
  """
  fe = dict(config.frontend)
  frontend = frontends.get_frontend(fe.pop("name"), **fe)
  data = config.get("data")
  rate = getattr(frontend, "sample_rate", None)
  if data is not None and data.get("sample_rate") is not None and rate is not None and rate != data.sample_rate:
    raise ValueError(f"config.frontend.sample_rate={rate} differs from config.data.sample_rate={data.sample_rate}")
  m = dict(config.model)
  m.pop("name", None)
  size = m.pop("size", "tiny")
  if size not in HTSAT_PRESETS:
    raise ValueError(f"config.model.size: unknown HTS-AT size {size!r}; expected one of {sorted(HTSAT_PRESETS)}")
  args = {**HTSAT_PRESETS[size], **m}
  for key in ("depths", "num_heads", "patch_size", "patch_stride"):
    if isinstance(args.get(key), list):
      args[key] = tuple(args[key])
  return HTSAT(num_classes, mel_bins=frontend.num_bins, frontend=frontend,
               dtype=jnp.dtype(config.get("compute_dtype", "float32")), rngs=rngs, **args)


def count_params(model: nnx.Module) -> int:
  """Number of ``nnx.Param`` scalars (BatchNorm statistics excluded)."""
  return sum(int(v.size) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
