"""Each seed system's signal front end as a frozen, callable config, a name registry, and SpecAugment.

A front end maps a waveform ``(batch, samples)`` (float32, any leading axes, any length) to features
``(batch, frames, bins)`` inside the jitted graph; it is jit-able and differentiable (also on digital silence).
The configs are frozen (hashable) dataclasses, so a recipe can name one and override any field::

    fe = get_frontend("panns", sample_rate=16000, n_fft=512, hop_length=160, fmax=8000)  # the demo layout
    feats = jax.jit(fe)(waveform)                      # (batch, frames, 64)

| name               | class         | system (reference)                                                        |
|--------------------|---------------|---------------------------------------------------------------------------|
| ``panns``          | PannsLogMel   | PANNs Cnn14 / HTS-AT / CLAP log-mel (torchlibrosa; audioset_tagging_cnn)  |
| ``uss``            | UssMagnitude  | USS ResUNet30 STFT magnitude (bytedance/uss uss/models/base.py)           |
| ``audiomae``       | AudioMAEFbank | AudioMAE Kaldi fbank (facebookresearch/AudioMAE dataset.py)               |
| ``m2d``            | M2DLogMel     | M2D log-mel (nttcslab/m2d examples/portable_m2d.py, nnAudio)              |
| ``vggish``         | VGGishLogMel  | VGGish / SoundWords log-mel (tensorflow/models vggish/mel_features.py)    |
| ``care_bandsplit`` | CareBandSplit | CaRE-SEP mel band-split STFT (seed 001; uss_jax.audio.bandsplit)          |
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from uss_jax.audio import bandsplit as bandsplit_lib
from uss_jax.audio import mel as mel_lib
from uss_jax.audio import stft as stft_lib

# AudioMAE dataset statistics of the fbank, (mean, std), from the AudioMAE fine-tuning scripts / dataset.py callers.
AUDIOMAE_NORM_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "spc": (-6.845978, 5.5654526),
}


def _check_waveform(waveform: jax.Array) -> jax.Array:
  x = jnp.asarray(waveform)
  if x.ndim < 1:
    raise ValueError("waveform must have a samples axis, got a scalar")
  return x.astype(jnp.float32)


def _fields_as_tuples(obj) -> None:
  # ml_collections / YAML hand lists; keep the frozen config hashable (usable as a static jit argument).
  for f in dataclasses.fields(obj):
    v = getattr(obj, f.name)
    if isinstance(v, list):
      object.__setattr__(obj, f.name, tuple(v))


@dataclasses.dataclass(frozen=True)
class PannsLogMel:
  """PANNs log-mel: ``10 log10(max(|STFT|^2 @ melW, amin))``, no top_db (digital silence gives exactly -100 dB).

  Defaults are Cnn14's (qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py`` with torchlibrosa 0.1.0
  ``Spectrogram`` + ``LogmelFilterBank``): 32 kHz, periodic Hann 1024, hop 320, centre reflect padding, 64 Slaney mels
  50-14000 Hz (``librosa.filters.mel``), ref 1, amin 1e-10. 320000 samples -> 1001 frames. HTS-AT uses the same;
  LAION-CLAP is ``sample_rate=48000, hop_length=480``; the project demo is ``sample_rate=16000, n_fft=512,
  hop_length=160, fmax=8000``.

  Call: waveform ``(batch, samples)`` -> ``(batch, frames, n_mels)`` dB, ``frames = 1 + samples // hop_length``.
  """
  name: ClassVar[str] = "panns"
  sample_rate: int = 32000
  n_fft: int = 1024
  hop_length: int = 320
  win_length: int | None = None
  n_mels: int = 64
  fmin: float = 50.0
  fmax: float | None = 14000.0
  center: bool = True
  pad_mode: str = "reflect"
  ref: float = 1.0
  amin: float = 1e-10
  top_db: float | None = None

  def __post_init__(self):
    _fields_as_tuples(self)

  @property
  def num_bins(self) -> int:
    return self.n_mels

  def num_frames(self, num_samples: int) -> int:
    return stft_lib.num_frames(num_samples, self.n_fft, self.hop_length, self.center)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    return mel_lib.log_mel(_check_waveform(waveform), self.sample_rate, self.n_fft, self.hop_length, self.n_mels,
                           self.fmin, self.fmax, self.win_length, "hann", self.center, self.pad_mode,
                           ref=self.ref, amin=self.amin, top_db=self.top_db)


@dataclasses.dataclass(frozen=True)
class UssMagnitude:
  """USS ResUNet30 input: STFT magnitude ``sqrt(max(re^2 + im^2, eps))`` (bytedance/uss ``uss/models/base.py``).

  Defaults: 32 kHz, periodic Hann 2048, hop 320, centre reflect padding, eps 1e-10; 64000 samples -> 201 frames.
  (The model also needs the phase, :func:`uss_jax.audio.stft.magphase`, and :func:`uss_jax.audio.stft.istft`.)

  Call: waveform ``(batch, samples)`` -> ``(batch, frames, n_fft // 2 + 1)``.
  """
  name: ClassVar[str] = "uss"
  sample_rate: int = 32000
  n_fft: int = 2048
  hop_length: int = 320
  win_length: int | None = None
  center: bool = True
  pad_mode: str = "reflect"
  eps: float = 1e-10

  @property
  def num_bins(self) -> int:
    return self.n_fft // 2 + 1

  def num_frames(self, num_samples: int) -> int:
    return stft_lib.num_frames(num_samples, self.n_fft, self.hop_length, self.center)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    spec = stft_lib.stft(_check_waveform(waveform), self.n_fft, self.hop_length, self.win_length, "hann",
                         self.center, self.pad_mode)
    return stft_lib.magnitude(spec, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class AudioMAEFbank:
  """AudioMAE input (facebookresearch/AudioMAE ``dataset.py`` ``_wav2fbank`` + ``__getitem__``).

  ``x - mean(x)`` over each waveform, ``torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
  window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`` (Kaldi defaults otherwise: 25 ms window,
  snip_edges, pre-emphasis 0.97, DC removal, 512-point FFT, mel 20 Hz-Nyquist, log floor float32 eps), zero-padded /
  cut to ``target_frames`` frames, then ``(fbank - mean) / (2 std)``.

  ``norm_stats``: a key of :data:`AUDIOMAE_NORM_STATS` (``'audioset'`` (-4.2677393, 4.5689974), ``'esc50'``,
  ``'spc'``), an explicit ``(mean, std)``, or None for no normalisation. ``target_frames=None`` keeps the natural
  length ``1 + (samples - 400) // 160``. The padding frames are 0 before normalisation, as in the reference.

  Call: waveform ``(batch, samples)`` at 16 kHz in [-1, 1] -> ``(batch, target_frames, num_mel_bins)``.
  """
  name: ClassVar[str] = "audiomae"
  sample_rate: int = 16000
  num_mel_bins: int = 128
  frame_length_ms: float = 25.0
  frame_shift_ms: float = 10.0
  window_type: str = "hanning"
  target_frames: int | None = 1024
  norm_stats: str | tuple[float, float] | None = "audioset"
  subtract_waveform_mean: bool = True

  def __post_init__(self):
    _fields_as_tuples(self)
    if isinstance(self.norm_stats, str) and self.norm_stats not in AUDIOMAE_NORM_STATS:
      raise ValueError(f"unknown AudioMAE norm_stats {self.norm_stats!r}; known: {sorted(AUDIOMAE_NORM_STATS)}")

  @property
  def stats(self) -> tuple[float, float] | None:
    if isinstance(self.norm_stats, str):
      return AUDIOMAE_NORM_STATS[self.norm_stats]
    return self.norm_stats

  @property
  def num_bins(self) -> int:
    return self.num_mel_bins

  def num_frames(self, num_samples: int) -> int:
    if self.target_frames is not None:
      return self.target_frames
    return mel_lib.kaldi_num_frames(num_samples, self.sample_rate, self.frame_length_ms, self.frame_shift_ms)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    x = _check_waveform(waveform)
    if self.subtract_waveform_mean:
      x = x - jnp.mean(x, axis=-1, keepdims=True)
    fbank = mel_lib.kaldi_fbank(x, sample_rate=self.sample_rate, num_mel_bins=self.num_mel_bins,
                                frame_length_ms=self.frame_length_ms, frame_shift_ms=self.frame_shift_ms,
                                window_type=self.window_type, htk_compat=True, use_energy=False)
    if self.target_frames is not None:
      n = fbank.shape[-2]
      if n < self.target_frames:
        fbank = jnp.pad(fbank, [(0, 0)] * (fbank.ndim - 2) + [(0, self.target_frames - n), (0, 0)])
      else:
        fbank = fbank[..., :self.target_frames, :]
    stats = self.stats
    if stats is not None:
      fbank = (fbank - stats[0]) / (2.0 * stats[1])
    return fbank


@dataclasses.dataclass(frozen=True)
class M2DLogMel:
  """M2D input (nttcslab/m2d ``examples/portable_m2d.py``: nnAudio ``MelSpectrogram`` then ``log(x + eps)``).

  16 kHz, n_fft = win 400 (periodic Hann), hop 160, centre reflect padding, power 2, 80 Slaney mels 50-8000 Hz,
  ``log(mel + eps)`` with ``eps = torch.finfo(torch.float32).eps``, then ``(x - mean) / std``. ``norm_stats`` is the
  checkpoint's ``norm_stats``; the default (-7.1, 4.2) is portable_m2d's fallback when a checkpoint has none; None
  disables it. The 32 kHz M2D variant is ``sample_rate=32000, n_fft=800, win_length=800, hop_length=320,
  fmax=16000``. The model wants ``(B, 1, F, T)``: transpose the ``(B, T, F)`` output there.

  Call: waveform ``(batch, samples)`` -> ``(batch, 1 + samples // hop_length, n_mels)``.
  """
  name: ClassVar[str] = "m2d"
  sample_rate: int = 16000
  n_fft: int = 400
  win_length: int | None = 400
  hop_length: int = 160
  n_mels: int = 80
  fmin: float = 50.0
  fmax: float | None = 8000.0
  log_eps: float = mel_lib.FLOAT32_EPS
  norm_stats: tuple[float, float] | None = (-7.1, 4.2)

  def __post_init__(self):
    _fields_as_tuples(self)

  @property
  def num_bins(self) -> int:
    return self.n_mels

  def num_frames(self, num_samples: int) -> int:
    return stft_lib.num_frames(num_samples, self.n_fft, self.hop_length, True)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    mel = mel_lib.mel_spectrogram(_check_waveform(waveform), self.sample_rate, self.n_fft, self.hop_length,
                                  self.n_mels, self.fmin, self.fmax, self.win_length, "hann", True, "reflect", 2.0)
    x = jnp.log(mel + self.log_eps)
    if self.norm_stats is not None:
      x = (x - self.norm_stats[0]) / self.norm_stats[1]
    return x


@dataclasses.dataclass(frozen=True)
class VGGishLogMel:
  """VGGish log-mel (tensorflow/models ``research/audioset/vggish/mel_features.py`` ``log_mel_spectrogram``).

  Frames of ``round(sr * 0.025) = 400`` samples every ``round(sr * 0.010) = 160`` with no padding (only complete
  frames), periodic Hann of 400, zero-padded to the next power of two (512) for ``|rfft|`` (magnitude), 64 HTK-mel
  triangles (linear in mel) 125-7500 Hz over ``linspace(0, sr / 2, 257)`` with the DC bin zeroed, no area
  normalisation, ``log(mel + 0.01)``. (VGGish then cuts 96-frame examples; that is the model's business.)

  Call: waveform ``(batch, samples)`` at 16 kHz -> ``(batch, 1 + (samples - 400) // 160, n_mels)``.
  """
  name: ClassVar[str] = "vggish"
  sample_rate: int = 16000
  window_length_s: float = 0.025
  hop_length_s: float = 0.010
  n_mels: int = 64
  fmin: float = 125.0
  fmax: float = 7500.0
  log_offset: float = 0.01

  @property
  def win_length(self) -> int:
    return int(round(self.sample_rate * self.window_length_s))

  @property
  def hop_length(self) -> int:
    return int(round(self.sample_rate * self.hop_length_s))

  @property
  def n_fft(self) -> int:
    return 2 ** int(math.ceil(math.log2(self.win_length)))

  @property
  def num_bins(self) -> int:
    return self.n_mels

  def num_frames(self, num_samples: int) -> int:
    return stft_lib.num_frames(num_samples, self.win_length, self.hop_length, center=False)

  def filterbank(self) -> np.ndarray:
    """``(n_fft // 2 + 1, n_mels)`` VGGish mel matrix (``spectrogram_to_mel_matrix``)."""
    if self.fmax > self.sample_rate / 2:
      raise ValueError(f"fmax {self.fmax} is above Nyquist {self.sample_rate / 2}")
    freqs = np.linspace(0.0, self.sample_rate / 2.0, self.n_fft // 2 + 1)
    fb = mel_lib.mel_triangle_filterbank(freqs, self.n_mels, self.fmin, self.fmax)
    fb[0, :] = 0.0  # HTK leaves out the DC bin
    return fb.astype(np.float32)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    frames = stft_lib.frame(_check_waveform(waveform), self.win_length, self.hop_length)
    window = jnp.asarray(stft_lib.get_window("hann", self.win_length), dtype=jnp.float32)
    spec = jnp.fft.rfft(frames * window, n=self.n_fft, axis=-1)
    mag = stft_lib.safe_sqrt(stft_lib.power(spec))
    return jnp.log(mel_lib.apply_filterbank(mag, self.filterbank()) + self.log_offset)


@dataclasses.dataclass(frozen=True)
class CareBandSplit:
  """CaRE-SEP input: STFT (periodic Hann 1024, hop 320, centre reflect) split into 64 overlapping mel bands.

  Band rule and inverse: :mod:`uss_jax.audio.bandsplit` (``band_merge`` of the output gives back the spectrogram
  exactly). ``feature``: ``'magnitude'`` (exact ``|X|``, zero gradient at 0) or ``'complex'`` (complex64 bands).

  Call: waveform ``(batch, samples)`` -> ``(batch, frames, n_bands, max_width)`` (64 x 50 at the defaults): the band
  axis takes the place of the bins axis, and the last axis holds each band's bins, zero-padded
  (``layout().mask``).
  """
  name: ClassVar[str] = "care_bandsplit"
  sample_rate: int = 32000
  n_fft: int = 1024
  hop_length: int = 320
  n_bands: int = 64
  center: bool = True
  pad_mode: str = "reflect"
  feature: str = "magnitude"

  def __post_init__(self):
    if self.feature not in ("magnitude", "complex"):
      raise ValueError(f"feature must be 'magnitude' or 'complex', got {self.feature!r}")

  def layout(self) -> bandsplit_lib.BandLayout:
    return bandsplit_lib.band_layout(float(self.sample_rate), self.n_fft, self.n_bands)

  @property
  def num_bins(self) -> int:
    return self.n_bands

  def num_frames(self, num_samples: int) -> int:
    return stft_lib.num_frames(num_samples, self.n_fft, self.hop_length, self.center)

  def __call__(self, waveform: jax.Array) -> jax.Array:
    spec = stft_lib.stft(_check_waveform(waveform), self.n_fft, self.hop_length, None, "hann", self.center,
                         self.pad_mode)
    if self.feature == "magnitude":
      spec = stft_lib.magnitude(spec)
    return bandsplit_lib.band_split(spec, self.layout())


FRONTENDS: dict[str, type] = {
    cls.name: cls for cls in (PannsLogMel, UssMagnitude, AudioMAEFbank, M2DLogMel, VGGishLogMel, CareBandSplit)
}


def get_frontend(name: str, **overrides) -> Callable[[jax.Array], jax.Array]:
  """The named front end, with any config field overridden.

  Args:
    name: one of ``FRONTENDS`` (``'panns'``, ``'uss'``, ``'audiomae'``, ``'m2d'``, ``'vggish'``,
      ``'care_bandsplit'``).
    **overrides: dataclass fields of that front end (e.g. ``sample_rate=16000``).

  Returns:
    the frozen config instance; calling it maps waveform ``(batch, samples)`` to features ``(batch, frames, bins)``
    (``care_bandsplit``: ``(batch, frames, bands, band_width)``). It is hashable, so it can be a static jit argument.

  Raises:
    KeyError: for an unknown name.
    TypeError: for an unknown field.
  """
  try:
    cls = FRONTENDS[name]
  except KeyError:
    raise KeyError(f"unknown front end {name!r}; known: {sorted(FRONTENDS)}") from None
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = set(overrides) - known
  if unknown:
    raise TypeError(f"front end {name!r} has no field(s) {sorted(unknown)}; fields: {sorted(known)}")
  return cls(**overrides)


def _stripe_mask(key: jax.Array, lead: tuple[int, ...], size: int, max_width: int, num: int) -> jax.Array:
  """``lead + (size,)`` bool: the union of ``num`` stripes, each of width ~ U{0..max_width} at start ~
  U{0..size - width}."""
  if num == 0 or max_width == 0:
    return jnp.zeros(lead + (size,), dtype=bool)
  kw, ks = jax.random.split(key)
  width = jax.random.randint(kw, lead + (num,), 0, max_width + 1)
  start = jax.random.randint(ks, lead + (num,), 0, size - width + 1)
  pos = jnp.arange(size)
  inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # lead + (num, size)
  return jnp.any(inside, axis=-2)


def _max_width(size: int, width: int | None, ratio: float | None, what: str) -> int:
  if width is not None and ratio is not None:
    raise ValueError(f"give {what}_mask_width or {what}_mask_ratio, not both")
  if ratio is not None:
    if not 0.0 <= ratio <= 1.0:
      raise ValueError(f"{what}_mask_ratio must be in [0, 1]")
    width = int(ratio * size)
  width = 0 if width is None else int(width)
  if not 0 <= width <= size:
    raise ValueError(f"{what}_mask_width {width} must be in [0, {size}]")
  return width


def spec_augment(
    features: jax.Array,
    rng: jax.Array,
    *,
    time_mask_width: int | None = None,
    time_mask_ratio: float | None = None,
    num_time_masks: int = 2,
    freq_mask_width: int | None = None,
    freq_mask_ratio: float | None = None,
    num_freq_masks: int = 2,
    mask_value: float = 0.0,
) -> jax.Array:
  """SpecAugment stripe masking (Park et al. 2019; PANNs ``SpecAugmentation`` / torchaudio Time/FrequencyMasking).

  For every example independently, ``num_time_masks`` time stripes and ``num_freq_masks`` frequency stripes are
  set to ``mask_value``. A stripe's width is uniform on ``{0, ..., W}`` and its start uniform on
  ``{0, ..., size - width}``, where ``W`` is ``*_mask_width`` frames / bins or ``int(*_mask_ratio * size)``
  (PANNs Cnn14: time width 64, 2 stripes; freq width 8, 2 stripes). Shapes are static, so it jits; gradients
  flow through the unmasked entries.

  Args:
    features: ``(..., frames, bins)``; every leading index gets its own masks.
    rng: a ``jax.random`` key.
    time_mask_width, time_mask_ratio: largest time stripe (frames, or a fraction of the frames); give at most one.
    num_time_masks: time stripes per example.
    freq_mask_width, freq_mask_ratio: largest frequency stripe (bins, or a fraction of the bins).
    num_freq_masks: frequency stripes per example.
    mask_value: value written into the stripes.

  Returns:
    same shape and dtype as ``features``.

  Raises:
    ValueError: on both a width and a ratio for one axis, or a width outside ``[0, size]``.
  """
  if features.ndim < 2:
    raise ValueError("features must be (..., frames, bins)")
  lead = features.shape[:-2]
  frames, bins = features.shape[-2:]
  wt = _max_width(frames, time_mask_width, time_mask_ratio, "time")
  wf = _max_width(bins, freq_mask_width, freq_mask_ratio, "freq")
  kt, kf = jax.random.split(rng)
  mt = _stripe_mask(kt, lead, frames, wt, num_time_masks)
  mf = _stripe_mask(kf, lead, bins, wf, num_freq_masks)
  mask = mt[..., :, None] | mf[..., None, :]
  return jnp.where(mask, jnp.asarray(mask_value, features.dtype), features)
