"""Mel filterbanks, log-mel spectrograms and Kaldi filterbank features, inside the jitted graph.

Two kinds of mel filterbank are used by the systems uss_jax reimplements:

* :func:`mel_filterbank` -- librosa's (``librosa.filters.mel``: triangles in Hz between mel-spaced corners,
  Slaney mel scale and area normalisation by default). PANNs (torchlibrosa ``LogmelFilterBank``), HTS-AT, CLAP
  and M2D (nnAudio ``MelSpectrogram``) all build exactly this matrix; it is taken from librosa at trace time, never
  re-derived.
* :func:`mel_triangle_filterbank` -- triangles that are linear in the HTK mel domain, ``1127 ln(1 + f / 700)``,
  evaluated at given bin frequencies, with no normalisation: the filterbank of Kaldi ``MelBanks`` /
  torchaudio ``compliance.kaldi.get_mel_banks`` (AudioMAE) and of the VGGish ``mel_features.py`` (SoundWords).

References: librosa 0.11 ``librosa/filters.py`` and ``librosa/core/spectrum.py`` (power_to_db); torchaudio
``src/torchaudio/compliance/kaldi.py`` (fbank, get_mel_banks, _get_window); Kaldi ``src/feat/feature-fbank.cc``,
``feature-window.cc``, ``mel-computations.cc``; tensorflow/models ``research/audioset/vggish/mel_features.py``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from uss_jax.audio import stft as stft_lib

# std::numeric_limits<float>::epsilon(), the log floor of Kaldi and torchaudio.compliance.kaldi (and torch.finfo().eps).
FLOAT32_EPS = float(np.finfo(np.float32).eps)

_HIGHEST = jax.lax.Precision.HIGHEST


@functools.lru_cache(maxsize=64)
def _librosa_mel(sample_rate: float, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool,
                 norm: str | float | None) -> np.ndarray:
  fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm)
  out = np.ascontiguousarray(fb.T, dtype=np.float32)
  out.flags.writeable = False
  return out


def mel_filterbank(sample_rate: float, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = False, norm: str | float | None = "slaney") -> np.ndarray:
  """librosa's mel filterbank, transposed to ``(bins, mels)`` (built at trace time, cached, read-only).

  Args:
    sample_rate: sampling rate in Hz.
    n_fft: FFT size in samples (``bins = n_fft // 2 + 1``).
    n_mels: number of mel bands.
    fmin: lowest band edge in Hz.
    fmax: highest band edge in Hz (default ``sample_rate / 2``).
    htk: HTK mel formula instead of Slaney's.
    norm: ``'slaney'`` (area normalisation), a p-norm order, or None.

  Returns:
    ``(n_fft // 2 + 1, n_mels)`` float32 numpy array equal to ``librosa.filters.mel(...).T``.
  """
  return _librosa_mel(float(sample_rate), int(n_fft), int(n_mels), float(fmin),
                      None if fmax is None else float(fmax), bool(htk), norm)


def htk_mel(freq_hz: np.ndarray | float) -> np.ndarray:
  """HTK / Kaldi mel scale ``1127 ln(1 + f / 700)`` (Hz -> mel)."""
  return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


def mel_triangle_filterbank(bin_freqs_hz: np.ndarray, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
  """Triangular filters linear in the HTK mel domain (Kaldi ``MelBanks`` / VGGish ``spectrogram_to_mel_matrix``).

  Band ``m`` has corners ``mel_lo + (m, m + 1, m + 2) * delta``, ``delta = (mel(fmax) - mel(fmin)) / (n_mels + 1)``;
  its weight at a bin of mel frequency ``b`` is ``max(0, min((b - left) / (centre - left),
  (right - b) / (right - centre)))``. No normalisation.

  Args:
    bin_freqs_hz: ``(bins,)`` frequencies of the spectrogram bins in Hz.
    n_mels: number of bands.
    fmin: lower edge of the first band in Hz.
    fmax: upper edge of the last band in Hz.

  Returns:
    ``(bins, n_mels)`` float64 numpy array.

  Raises:
    ValueError: if ``not 0 <= fmin < fmax``.
  """
  if not 0.0 <= fmin < fmax:
    raise ValueError(f"need 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
  mel_lo, mel_hi = htk_mel(fmin), htk_mel(fmax)
  delta = (mel_hi - mel_lo) / (n_mels + 1)
  m = np.arange(n_mels, dtype=np.float64)[None, :]
  left, centre, right = mel_lo + m * delta, mel_lo + (m + 1.0) * delta, mel_lo + (m + 2.0) * delta
  b = htk_mel(np.asarray(bin_freqs_hz, dtype=np.float64))[:, None]
  up = (b - left) / (centre - left)
  down = (right - b) / (right - centre)
  return np.maximum(0.0, np.minimum(up, down))


@functools.lru_cache(maxsize=32)
def kaldi_mel_banks(num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> np.ndarray:
  """Kaldi's mel banks (``get_mel_banks`` with no VTLN) with the zero Nyquist row appended.

  Args:
    num_bins: number of mel bins (> 3).
    padded_window_size: FFT size in samples.
    sample_rate: Hz.
    low_freq: lower edge in Hz.
    high_freq: upper edge in Hz; ``<= 0`` means an offset from Nyquist (Kaldi's convention).

  Returns:
    ``(padded_window_size // 2 + 1, num_bins)`` float32, read-only. The bin frequencies are
    ``k * sample_rate / padded_window_size`` for ``k < padded_window_size / 2``; the Nyquist bin gets weight 0.

  Raises:
    ValueError: on bad frequencies or fewer than 4 bins.
  """
  if num_bins <= 3:
    raise ValueError("Kaldi needs at least 4 mel bins")
  nyquist = 0.5 * sample_rate
  if high_freq <= 0.0:
    high_freq += nyquist
  if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
    raise ValueError(f"bad low_freq {low_freq} / high_freq {high_freq} for Nyquist {nyquist}")
  freqs = np.arange(padded_window_size // 2) * (sample_rate / padded_window_size)
  fb = mel_triangle_filterbank(freqs, num_bins, low_freq, high_freq)
  fb = np.concatenate([fb, np.zeros((1, num_bins))], axis=0).astype(np.float32)
  fb.flags.writeable = False
  return fb


def apply_filterbank(spec: jax.Array, filterbank: np.ndarray | jax.Array) -> jax.Array:
  """``(..., frames, bins) @ (bins, mels) -> (..., frames, mels)`` at full float32 precision."""
  return jnp.matmul(spec, jnp.asarray(filterbank, dtype=jnp.float32), precision=_HIGHEST)


def power_to_db(x: jax.Array, ref: float = 1.0, amin: float = 1e-10, top_db: float | None = None) -> jax.Array:
  """``10 log10(max(x, amin)) - 10 log10(max(amin, ref))`` (librosa.power_to_db / torchlibrosa LogmelFilterBank).

  Args:
    x: ``(..., frames, bins)`` power values.
    ref: reference power (a constant).
    amin: floor on ``x`` (digital silence gives ``10 log10(amin)``: -100 dB for 1e-10).
    top_db: if given, clip each example to ``max - top_db``, the max taken over its last two axes
      (librosa takes it over the whole array).

  Returns:
    same shape, dB.
  """
  db = 10.0 * jnp.log10(jnp.maximum(x, amin)) - 10.0 * math.log10(max(amin, ref))
  if top_db is not None:
    if top_db < 0:
      raise ValueError("top_db must be non-negative")
    db = jnp.maximum(db, jnp.max(db, axis=(-2, -1), keepdims=True) - top_db)
  return db


def mel_spectrogram(
    waveform: jax.Array,
    sample_rate: float,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    win_length: int | None = None,
    window: stft_lib.WindowSpec = "hann",
    center: bool = True,
    pad_mode: str = "reflect",
    power: float = 2.0,
    htk: bool = False,
    norm: str | float | None = "slaney",
) -> jax.Array:
  """Mel spectrogram ``|STFT|^power @ mel_filterbank`` (librosa.feature.melspectrogram, but time before frequency).

  Args:
    waveform: ``(..., samples)`` float32.
    sample_rate: Hz.
    n_fft, hop_length, win_length, window, center, pad_mode: as :func:`uss_jax.audio.stft.stft`.
    n_mels, fmin, fmax, htk, norm: as :func:`mel_filterbank`.
    power: 2 for power, 1 for magnitude (any positive exponent).

  Returns:
    ``(..., frames, n_mels)`` float32.
  """
  spec = stft_lib.stft(waveform, n_fft, hop_length, win_length, window, center, pad_mode)
  p = stft_lib.power(spec)
  if power == 2.0:
    s = p
  elif power == 1.0:
    s = stft_lib.safe_sqrt(p)
  else:
    s = jnp.where(p > 0, jnp.where(p > 0, p, 1.0) ** (power / 2.0), 0.0)
  return apply_filterbank(s, mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm))


def log_mel(
    waveform: jax.Array,
    sample_rate: float,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    win_length: int | None = None,
    window: stft_lib.WindowSpec = "hann",
    center: bool = True,
    pad_mode: str = "reflect",
    htk: bool = False,
    norm: str | float | None = "slaney",
    ref: float = 1.0,
    amin: float = 1e-10,
    top_db: float | None = None,
) -> jax.Array:
  """Log-mel power spectrogram in dB, ``power_to_db(mel_spectrogram(power=2))``.

  This is the PANNs / torchlibrosa ``Spectrogram`` + ``LogmelFilterBank`` front end
  (qiuqiangkong/audioset_tagging_cnn ``pytorch/models.py``) with ref 1, amin 1e-10 and no top_db by default.

  Args:
    waveform: ``(..., samples)`` float32.
    other arguments: as :func:`mel_spectrogram` and :func:`power_to_db`.

  Returns:
    ``(..., frames, n_mels)`` float32 dB.
  """
  mel = mel_spectrogram(waveform, sample_rate, n_fft, hop_length, n_mels, fmin, fmax, win_length, window, center,
                        pad_mode, 2.0, htk, norm)
  return power_to_db(mel, ref=ref, amin=amin, top_db=top_db)


def _kaldi_window(window_type: str, size: int, blackman_coeff: float) -> np.ndarray:
  n = np.arange(size, dtype=np.float64)
  a = 2.0 * np.pi / (size - 1)
  if window_type == "hanning":
    return 0.5 - 0.5 * np.cos(a * n)
  if window_type == "povey":
    return (0.5 - 0.5 * np.cos(a * n)) ** 0.85
  if window_type == "hamming":
    return 0.54 - 0.46 * np.cos(a * n)
  if window_type == "rectangular":
    return np.ones(size)
  if window_type == "blackman":
    return blackman_coeff - 0.5 * np.cos(a * n) + (0.5 - blackman_coeff) * np.cos(2.0 * a * n)
  raise ValueError(f"unknown Kaldi window type {window_type!r}")


def kaldi_num_frames(num_samples: int, sample_rate: float = 16000.0, frame_length_ms: float = 25.0,
                     frame_shift_ms: float = 10.0, snip_edges: bool = True) -> int:
  """Number of frames :func:`kaldi_fbank` returns for ``num_samples`` samples (0 if shorter than one window)."""
  shift = int(sample_rate * frame_shift_ms * 0.001)
  size = int(sample_rate * frame_length_ms * 0.001)
  if snip_edges:
    return 0 if num_samples < size else 1 + (num_samples - size) // shift
  return (num_samples + shift // 2) // shift


def kaldi_fbank(
    waveform: jax.Array,
    sample_rate: float = 16000.0,
    num_mel_bins: int = 23,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    window_type: str = "povey",
    blackman_coeff: float = 0.42,
    preemphasis_coefficient: float = 0.97,
    remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True,
    snip_edges: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    use_power: bool = True,
    use_log_fbank: bool = True,
    use_energy: bool = False,
    raw_energy: bool = True,
    energy_floor: float = 1.0,
    htk_compat: bool = False,
) -> jax.Array:
  """Kaldi ``compute-fbank-feats`` / ``torchaudio.compliance.kaldi.fbank`` (defaults are Kaldi's), batched and jit-able.

  Steps per frame (torchaudio ``_get_window`` + ``fbank``): frames of ``int(sr * frame_length_ms / 1000)`` samples
  every ``int(sr * frame_shift_ms / 1000)`` (``snip_edges``: only complete frames; else Kaldi's reflected edges),
  minus the frame mean (``remove_dc_offset``), pre-emphasis ``x[n] - c x[n-1]`` with ``x[-1] = x[0]``, the
  (symmetric) window, zero-padding to the next power of two, ``|rfft|^2``, Kaldi mel banks (HTK mel, triangles in
  the mel domain, ``low_freq``..``high_freq``, Nyquist bin unused), ``log(max(., float32 eps))``.

  AudioMAE (facebookresearch/AudioMAE ``dataset.py``) calls it with ``htk_compat=True, use_energy=False,
  window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10`` on a mean-subtracted waveform in [-1, 1].

  Dither is not supported (it is 0 in every use here; Kaldi's default is 1, torchaudio's 0).

  Args:
    waveform: ``(..., samples)`` float32, any scale (Kaldi tools feed int16-range values, torchaudio users
      [-1, 1]; the result differs by ``2 ln(scale)`` except near the log floor).
    sample_rate: Hz.
    num_mel_bins: mel bins (> 3).
    frame_length_ms, frame_shift_ms: window length and step in milliseconds.
    window_type: ``'povey'`` (Kaldi default), ``'hanning'``, ``'hamming'``, ``'rectangular'``, ``'blackman'``.
    blackman_coeff: the generalised Blackman constant.
    preemphasis_coefficient: in [0, 1].
    remove_dc_offset: subtract each frame's mean.
    round_to_power_of_two: zero-pad each frame to the next power of two for the FFT.
    snip_edges: see above.
    low_freq, high_freq: mel range in Hz (``high_freq <= 0``: offset from Nyquist).
    use_power: power (True) or magnitude spectrum.
    use_log_fbank: log filterbank energies (True) or linear.
    use_energy: append (``htk_compat``) or prepend the log frame energy.
    raw_energy: energy before pre-emphasis and window (True) or after.
    energy_floor: floor on the energy (absolute; 0 disables it).
    htk_compat: put the energy last instead of first (only matters with ``use_energy``).

  Returns:
    ``(..., frames, num_mel_bins + use_energy)`` float32.

  Raises:
    ValueError: on a signal shorter than one window (with ``snip_edges``) or bad options.
  """
  shift = int(sample_rate * frame_shift_ms * 0.001)
  size = int(sample_rate * frame_length_ms * 0.001)
  padded = (1 if size <= 1 else 2 ** math.ceil(math.log2(size))) if round_to_power_of_two else size
  if size < 2 or shift <= 0 or padded % 2:
    raise ValueError(f"bad Kaldi frame sizes: window {size}, shift {shift}, FFT {padded}")
  if not 0.0 <= preemphasis_coefficient <= 1.0:
    raise ValueError("preemphasis_coefficient must be in [0, 1]")
  x = jnp.asarray(waveform, dtype=jnp.float32)
  n = x.shape[-1]
  if not snip_edges:
    # Kaldi's edge rule: reflect around the ends, [2 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...].
    pad = size // 2 - shift // 2
    rev = jnp.flip(x, axis=-1)
    x = jnp.concatenate([rev[..., n - pad:], x, rev], axis=-1) if pad > 0 else jnp.concatenate(
        [x[..., -pad:], rev], axis=-1)
    frames_n = (n + shift // 2) // shift
  else:
    if n < size:
      raise ValueError(f"signal of {n} samples is shorter than one Kaldi window of {size}")
    frames_n = 1 + (n - size) // shift
  frames = stft_lib.frame(x, size, shift)[..., :frames_n, :]
  if remove_dc_offset:
    frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
  eps = jnp.float32(FLOAT32_EPS)

  def log_energy(f):
    e = jnp.log(jnp.maximum(jnp.sum(jnp.square(f), axis=-1), eps))
    return e if energy_floor == 0.0 else jnp.maximum(e, math.log(energy_floor))

  energy = log_energy(frames) if use_energy and raw_energy else None
  if preemphasis_coefficient != 0.0:
    previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - preemphasis_coefficient * previous
  frames = frames * jnp.asarray(_kaldi_window(window_type, size, blackman_coeff), dtype=jnp.float32)
  if padded != size:
    frames = jnp.pad(frames, [(0, 0)] * (frames.ndim - 1) + [(0, padded - size)])
  if use_energy and not raw_energy:
    energy = log_energy(frames)  # after pre-emphasis, window and zero padding
  p = stft_lib.power(jnp.fft.rfft(frames, n=padded, axis=-1))
  spectrum = p if use_power else stft_lib.safe_sqrt(p)
  mel = apply_filterbank(spectrum, kaldi_mel_banks(int(num_mel_bins), padded, float(sample_rate), float(low_freq),
                                                   float(high_freq)))
  if use_log_fbank:
    mel = jnp.log(jnp.maximum(mel, eps))
  if use_energy:
    e = energy[..., None]
    mel = jnp.concatenate([mel, e] if htk_compat else [e, mel], axis=-1)
  return mel
