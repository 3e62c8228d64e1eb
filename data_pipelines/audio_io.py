"""Audio file I/O on the host: decode with soundfile (libsndfile), resample with soxr, write with soundfile.

No TensorFlow and no JAX here: these helpers run inside dataset builders and grain workers.

Conventions: a waveform is a float32 array of shape (samples,) (mono) or (samples, channels) with values in [-1, 1]
(full scale); sample rates are in Hz.
"""

from __future__ import annotations

import os
import re

import numpy as np
import soundfile as sf
import soxr

__all__ = ["AudioLoadError", "load_audio", "save_audio", "resample", "to_int16"]

# libsndfile's parse log of a WAV / AIFF whose data chunk is cut short reads e.g. "data : 32000 (should be 15978)".
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streamed WAVs declare an unknown data size as 0 or 0xFFFFFFFF; that is not a truncation.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


class AudioLoadError(Exception):
  """An audio file could not be decoded: missing, empty, truncated or not audio.

  Attributes:
    path: the file that failed (str).
    reason: a short human-readable cause, e.g. "file not found", "empty file (0 bytes)",
      "truncated: data chunk declares 32000 bytes, 15978 present", "not a readable audio file (Format not recognised)".
  """

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")

  def __reduce__(self):  # picklable across worker processes
    return (type(self), (self.path, self.reason))


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int, quality: str = "HQ") -> np.ndarray:
  """Band-limited resampling with soxr (libsoxr, the SoX resampler).

  Args:
    waveform: float array (samples,) or (samples, channels).
    orig_sr: sample rate of `waveform` in Hz.
    target_sr: wanted sample rate in Hz.
    quality: soxr quality recipe ("HQ" default; "VHQ", "MQ", "LQ", "QQ").

  Returns:
    float32 array (ceil(samples * target_sr / orig_sr),) or (..., channels); the input itself (as float32) when the
    rates are equal.

  Source: soxr.resample (python-soxr), default "HQ" recipe as in librosa's `res_type="soxr_hq"`.
  """
  waveform = np.asarray(waveform, dtype=np.float32)
  if int(orig_sr) == int(target_sr):
    return waveform
  if waveform.shape[0] == 0:
    return waveform
  return np.asarray(soxr.resample(waveform, int(orig_sr), int(target_sr), quality=quality), dtype=np.float32)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None,
    mono: bool = True,
    *,
    allow_truncated: bool = False,
) -> np.ndarray:
  """Reads an audio file (WAV, FLAC, OGG, MP3, AIFF, ... whatever libsndfile decodes) as float32.

  Channels are mixed to mono by the mean over channels (before resampling); the result is resampled to
  `sample_rate` with soxr (HQ) when the file's rate differs.

  Args:
    path: the audio file.
    sample_rate: target rate in Hz, or None to keep the file's rate.
    mono: mix channels down to one (default True).
    allow_truncated: accept a WAV/AIFF whose data chunk is shorter than its header declares (default False: raise).

  Returns:
    float32 array (samples,) when `mono`, else (samples, channels); values in [-1, 1] full scale
    (an int16 file's sample k reads as k / 32768 exactly).

  Raises:
    AudioLoadError: file not found, not a regular file, empty (0 bytes), no audio frames, not decodable as audio,
      truncated (a WAV/AIFF data chunk shorter than its header declares, or a decoder error part-way, as libsndfile
      reports for a cut FLAC), or non-finite samples.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise AudioLoadError(path, "file not found")
  if not os.path.isfile(path):
    raise AudioLoadError(path, "not a regular file")
  if os.path.getsize(path) == 0:
    raise AudioLoadError(path, "empty file (0 bytes)")
  try:
    with sf.SoundFile(path) as f:
      file_sr = f.samplerate
      log = f.extra_info
      data = f.read(dtype="float32", always_2d=True)
  except (sf.LibsndfileError, sf.SoundFileError, RuntimeError, TypeError, ValueError) as e:
    message = str(e)
    if "Error opening" in message:
      raise AudioLoadError(path, f"not a readable audio file ({message.split(': ', 1)[-1]})") from e
    raise AudioLoadError(path, f"decoding failed, file truncated or corrupt ({message})") from e
  if not allow_truncated:
    for chunk, declared, present in _SHORT_CHUNK.findall(log):
      declared, present = int(declared), int(present)
      if declared not in _UNKNOWN_SIZES and present < declared:
        raise AudioLoadError(path, f"truncated: {chunk} chunk declares {declared} bytes, {present} present")
  if data.shape[0] == 0:
    raise AudioLoadError(path, "no audio frames (header only)")
  if not np.all(np.isfinite(data)):
    raise AudioLoadError(path, "non-finite samples (NaN or Inf)")
  if mono:
    data = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
  if sample_rate is not None:
    data = resample(data, file_sr, sample_rate)
  return np.ascontiguousarray(data, dtype=np.float32)


def to_int16(waveform: np.ndarray) -> np.ndarray:
  """Float waveform in [-1, 1] -> int16 PCM: round(x * 32768), clipped to [-32768, 32767].

  Exact inverse of soundfile's int16 -> float32 decoding (k / 32768), so an int16 file round-trips bit-exactly.

  Args:
    waveform: float array of any shape.

  Returns:
    int16 array of the same shape.
  """
  scaled = np.round(np.asarray(waveform, dtype=np.float64) * 32768.0)
  return np.clip(scaled, -32768, 32767).astype(np.int16)


def save_audio(
    path: str | os.PathLike, waveform: np.ndarray, sample_rate: int, subtype: str | None = None
) -> None:
  """Writes a waveform with soundfile; the container follows the file extension (.wav, .flac, .ogg, ...).

  Args:
    path: destination; parent folders are created.
    waveform: (samples,) or (samples, channels); float in [-1, 1] or int16 PCM.
    sample_rate: in Hz.
    subtype: libsndfile subtype (e.g. "PCM_16", "PCM_24", "FLOAT"); default: soundfile's default for the format
      (PCM_16 for WAV and FLAC).

  Raises:
    ValueError: waveform with more than 2 dimensions, or non-finite float samples.
  """
  waveform = np.asarray(waveform)
  if waveform.ndim not in (1, 2):
    raise ValueError(f"save_audio expects (samples,) or (samples, channels), got shape {waveform.shape}")
  if waveform.dtype.kind == "f" and not np.all(np.isfinite(waveform)):
    raise ValueError(f"save_audio: non-finite samples in waveform for {os.fspath(path)}")
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  sf.write(os.fspath(path), waveform, int(sample_rate), subtype=subtype)
