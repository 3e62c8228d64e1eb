"""Streaming audio-file I/O for inference: blockwise reading with one-line errors, streaming soxr resampling,
constant-overlap-add chunking, output formats and spectrogram plots (used by ``uss_jax.inference``).

Every reader raises ``FileNotFoundError`` / ``ValueError`` naming the file and its role (mixture, query) instead of
a library traceback; NaN / inf samples are rejected. Sources: soundfile (libsndfile), python-soxr; the overlap-add is
the constant-overlap-add condition of STFT synthesis (Allen & Rabiner 1977) applied to model outputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

READ_BLOCK_SECONDS = 10.0  # files are read (and resampled) in blocks of this length

# --------------------------------------------------------------------------------------------------------------------
# Audio I/O with one-line errors.
# --------------------------------------------------------------------------------------------------------------------


def _sf():
  import soundfile  # pylint: disable=import-outside-toplevel
  return soundfile


def audio_info(path: str | os.PathLike, role: str = "audio") -> Any:
  """``soundfile.info`` of ``path`` (frames, samplerate, channels ...).

  Raises:
    FileNotFoundError: no such file.
    ValueError: not an audio file libsndfile can read, or no samples; the message names ``role`` and the file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{role} file not found: {path}")
  if os.path.isdir(path):
    raise ValueError(f"{role} {path} is a directory, not an audio file")
  sf = _sf()
  try:
    info = sf.info(path)
  except (RuntimeError, TypeError, ValueError) as e:  # soundfile.LibsndfileError is a RuntimeError
    raise ValueError(f"{role} {path} is not an audio file soundfile can read ({_short(e)})") from e
  if info.frames <= 0 or info.samplerate <= 0:
    raise ValueError(f"{role} {path} has no samples")
  return info


def _short(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text.replace(" Error opening ", " ").strip() or type(e).__name__


def read_blocks(path: str | os.PathLike, role: str = "audio",
                block_seconds: float = READ_BLOCK_SECONDS) -> tuple[Iterator[np.ndarray], int, int]:
  """Streams an audio file as mono float32 blocks.

  Args:
    path: any file libsndfile reads (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1 ...).
    role: how the file is named in error messages ("mixture", "query").
    block_seconds: block length in seconds at the file's rate.

  Returns:
    ``(blocks, sample_rate, frames)``: an iterator of ``(block_samples,)`` float32 arrays (the mean over channels;
    samples in [-1, 1] for PCM files), the file's rate in Hz and its length in samples.

  Raises:
    FileNotFoundError / ValueError: see ``audio_info``; while iterating, ValueError if a block holds NaN or inf.
  """
  info = audio_info(path, role)
  path = os.fspath(path)
  block = max(1, int(round(block_seconds * info.samplerate)))

  def gen() -> Iterator[np.ndarray]:
    start = 0
    for b in _sf().blocks(path, blocksize=block, dtype="float32", always_2d=True):
      mono = b.mean(axis=1, dtype=np.float32) if b.shape[1] > 1 else b[:, 0]
      if not np.all(np.isfinite(mono)):
        bad = start + int(np.argmin(np.isfinite(mono)))
        raise ValueError(f"{role} {path} contains NaN or infinite samples (first at sample {bad})")
      start += len(mono)
      yield np.ascontiguousarray(mono, dtype=np.float32)

  return gen(), int(info.samplerate), int(info.frames)


def read_mono(path: str | os.PathLike, role: str = "audio") -> tuple[np.ndarray, int]:
  """A whole audio file as ``((samples,) float32 mono, sample_rate Hz)``; errors as ``read_blocks``."""
  blocks, sr, _ = read_blocks(path, role)
  parts = list(blocks)
  x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
  if not len(x):
    raise ValueError(f"{role} {os.fspath(path)} has no samples")
  return x, sr


# --------------------------------------------------------------------------------------------------------------------
# Files, plots, timing.
# --------------------------------------------------------------------------------------------------------------------


def output_format(path: str | os.PathLike, subtype: str | None = None) -> tuple[str, str]:
  """``(format, subtype)`` soundfile will write ``path`` with: the format from the extension; ``subtype`` default
  ``FLOAT`` where the format has it, else the format's default.

  Raises:
    ValueError: unknown extension, or a subtype the format does not have.
  """
  path = os.fspath(path)
  sf = _sf()
  ext = os.path.splitext(path)[1].lstrip(".").upper()
  formats = sf.available_formats()
  fmt = {"OGA": "OGG", "AIF": "AIFF"}.get(ext, ext)
  if fmt not in formats:
    raise ValueError(f"output {path}: unknown audio format {ext or '(no extension)'!r} "
                     f"(use e.g. .wav, .flac, .ogg)")
  if subtype is None:
    subtype = "FLOAT" if sf.check_format(fmt, "FLOAT") else sf.default_subtype(fmt)
  subtype = subtype.upper()
  if not sf.check_format(fmt, subtype):
    raise ValueError(f"output {path}: subtype {subtype} is not available for {fmt} "
                     f"(available: {', '.join(sf.available_subtypes(fmt))})")
  return fmt, subtype


def _clips(subtype: str) -> bool:
  return subtype.startswith("PCM") or subtype in ("ULAW", "ALAW") or "DPCM" in subtype


def check_mixture(path: str | os.PathLike) -> tuple[int, int]:
  """Reads a mixture file once to check it: ``(sample_rate, frames)``.

  Raises:
    FileNotFoundError / ValueError: missing, not audio, empty, or NaN / inf samples (named).
  """
  blocks, sr, _ = read_blocks(path, "mixture")
  n = sum(len(b) for b in blocks)
  if n == 0:
    raise ValueError(f"mixture {os.fspath(path)} has no samples")
  return sr, n


def spectrogram_db(x: np.ndarray, sample_rate: int, max_frames: int = 4000) -> tuple[np.ndarray, float]:
  """Log-magnitude STFT ``(bins, frames)`` in dB (20 log10 |X|, floor 1e-8; periodic Hann, ~64 ms window, hop a
  quarter window or longer so that at most ``max_frames`` frames) and the hop in seconds."""
  n_fft = 1 << max(8, int(round(math.log2(0.064 * sample_rate))))
  hop = max(n_fft // 4, -(-len(x) // max_frames))
  x = np.pad(np.asarray(x, np.float64), (n_fft // 2, n_fft // 2))
  if len(x) < n_fft:
    x = np.pad(x, (0, n_fft - len(x)))
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
  w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  spec = np.abs(np.fft.rfft(frames * w, axis=-1)).T
  return 20.0 * np.log10(np.maximum(spec, 1e-8)), hop / sample_rate


def plot_spectrograms(mixture: np.ndarray, estimate: np.ndarray, sample_rate: int, path: str | os.PathLike,
                      query: str) -> None:
  """PNG with the log-magnitude spectrograms of the mixture (top) and the separated source (bottom), the query
  named in the title, the same 80 dB colour range (from the mixture's maximum) in both (matplotlib Agg)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  mix_db, hop_s = spectrogram_db(mixture, sample_rate)
  est_db, _ = spectrogram_db(estimate, sample_rate)
  vmax = float(mix_db.max())
  extent = (0.0, mix_db.shape[1] * hop_s, 0.0, sample_rate / 2000.0)
  fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, sharey=True)
  for ax, db, label in ((axes[0], mix_db, "mixture"), (axes[1], est_db, f"separated ({query})")):
    im = ax.imshow(db, origin="lower", aspect="auto", extent=extent, vmin=vmax - 80.0, vmax=vmax, cmap="magma")
    ax.set_ylabel("frequency (kHz)")
    ax.set_title(label, fontsize=9)
  axes[1].set_xlabel("time (s)")
  fig.colorbar(im, ax=axes, label="dB", shrink=0.8)
  fig.suptitle(f"query: {query}")
  os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
  fig.savefig(os.fspath(path), dpi=100)
  plt.close(fig)


# --------------------------------------------------------------------------------------------------------------------
# Streaming building blocks (pure numpy / soxr; the model enters as a function).
# --------------------------------------------------------------------------------------------------------------------


def hann_window(length: int) -> np.ndarray:
  """Periodic Hann window ``w[n] = 0.5 - 0.5 cos(2 pi n / length)``, ``(length,)`` float64.

  With ``hop = length / 2``: ``w[n] + w[n + hop] = 1`` for every n (constant overlap-add; ``scipy.signal.check_COLA
  ('hann', length, hop)``).

  Raises:
    ValueError: odd or non-positive length.
  """
  if length < 2 or length % 2:
    raise ValueError(f"the overlap-add window needs an even length >= 2, got {length}")
  n = np.arange(length, dtype=np.float64)
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)


def resample_stream(blocks: Iterable[np.ndarray], in_rate: int, out_rate: int) -> Iterator[np.ndarray]:
  """Resamples a stream of blocks with soxr (HQ); the concatenated output equals ``soxr.resample`` of the
  concatenated input exactly. Passes the blocks through (as float32) when the rates are equal.

  Args:
    blocks: ``(n,)`` (mono) or ``(n, channels)`` float32 arrays at ``in_rate`` Hz (the layout of the first block
      holds for all).
    in_rate, out_rate: Hz.
  """
  if int(in_rate) == int(out_rate):
    for b in blocks:
      yield np.asarray(b, np.float32)
    return
  import soxr  # pylint: disable=import-outside-toplevel
  stream, shape = None, ()
  for b in blocks:
    b = np.ascontiguousarray(b, np.float32)
    if stream is None:
      shape = b.shape[1:]
      stream = soxr.ResampleStream(float(in_rate), float(out_rate), int(np.prod(shape)) if shape else 1,
                                   dtype="float32", quality="HQ")
    out = stream.resample_chunk(b)
    if len(out):
      yield out
  if stream is not None:
    out = stream.resample_chunk(np.zeros((0,) + shape, np.float32), last=True)
    if len(out):
      yield out


def overlap_add(blocks: Iterable[np.ndarray], process: Callable[[np.ndarray], np.ndarray], chunk_samples: int,
                batch_size: int, stats: dict[str, int] | None = None) -> Iterator[np.ndarray]:
  """Chunk-wise processing of a stream with 50 % overlap-add (periodic Hann synthesis window).

  The signal ``x`` (total N samples) is preceded by ``hop = chunk_samples / 2`` zeros and followed by enough zeros
  that chunks starting at ``0, hop, 2 hop, ...`` cover every input sample exactly twice;
  ``y = sum_k shift_k(w * process(chunk_k))`` trimmed back to N samples. As ``w[n] + w[n + hop] = 1``, a memoryless
  ``process`` (``y[n] = f(x[n])``) gives ``f(x)`` exactly (up to float rounding).

  Args:
    blocks: the input stream, ``(n,)`` float32 arrays of any lengths.
    process: ``(batch_size, chunk_samples)`` float32 -> the same shape, or ``(batch_size, chunk_samples, outputs)``
      for several estimates per chunk (then the output blocks are ``(m, outputs)``); always called with exactly
      ``batch_size`` chunks (the last call padded with silent chunks whose outputs are dropped).
    chunk_samples: chunk length in samples (even).
    batch_size: chunks per ``process`` call.
    stats: if given, ``stats['chunks']`` (real chunks processed) and ``stats['calls']`` are counted into it.

  Yields:
    ``(m,)`` (or ``(m, outputs)``) float32 blocks of the output, N samples in total, as soon as they are final.

  Raises:
    ValueError: odd chunk length or batch_size < 1 (see ``hann_window``).
  """
  window = hann_window(chunk_samples)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  hop = chunk_samples // 2
  stats = {} if stats is None else stats
  stats.setdefault("chunks", 0)
  stats.setdefault("calls", 0)
  pending = np.zeros(hop, np.float32)  # padded signal from the start of the next chunk
  carry = None  # second-half contribution of the previous chunk at pending[:hop] ((hop,) + output shape)
  skip = hop  # leading padding still to drop from the output
  total = 0  # input samples seen
  emitted = 0

  def run(chunks: np.ndarray) -> np.ndarray:
    nonlocal carry
    k = len(chunks)
    batch = np.zeros((batch_size, chunk_samples), np.float32)
    batch[:k] = chunks
    y = np.asarray(process(batch), dtype=np.float64)
    if y.shape[:2] != batch.shape or y.ndim > 3:
      raise ValueError(f"process returned shape {y.shape}, expected {batch.shape} (+ an outputs axis)")
    extra = y.shape[2:]
    y = y[:k] * window.reshape((1, -1) + (1,) * len(extra))
    acc = np.zeros((k + 1, hop) + extra, np.float64)
    acc[:k] += y[:, :hop]
    acc[1:] += y[:, hop:]
    if carry is not None:
      acc[0] += carry
    carry = acc[k]
    stats["chunks"] += k
    stats["calls"] += 1
    return acc[:k].reshape((k * hop,) + extra)

  def frames(signal: np.ndarray, k: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(signal[:(k + 1) * hop], chunk_samples)[::hop][:k]

  def trim(out: np.ndarray, limit: int | None) -> np.ndarray:
    nonlocal skip, emitted
    if skip:
      drop = min(skip, len(out))
      out, skip = out[drop:], skip - drop
    if limit is not None:
      out = out[:max(0, limit - emitted)]
    emitted += len(out)
    return out.astype(np.float32)

  for block in blocks:
    block = np.asarray(block, np.float32).reshape(-1)
    total += len(block)
    pending = np.concatenate([pending, block])
    while len(pending) >= (batch_size + 1) * hop:
      out = trim(run(frames(pending, batch_size)), None)
      pending = pending[batch_size * hop:]
      if len(out):
        yield out
  # The end: chunks until the last input sample is covered twice (the last chunk starts at or before it).
  remaining = -(-len(pending) // hop)
  pending = np.concatenate([pending, np.zeros((remaining + 1) * hop - len(pending), np.float32)])
  while remaining > 0:
    k = min(batch_size, remaining)
    out = trim(run(frames(pending, k)), total)
    pending, remaining = pending[k * hop:], remaining - k
    if len(out):
      yield out


def online_chunks(blocks: Iterable[np.ndarray], process: Callable[[np.ndarray], np.ndarray], chunk_samples: int,
                  lag_chunks: int = 0, stats: dict[str, int] | None = None) -> Iterator[np.ndarray]:
  """Chunk-by-chunk processing of a stream by an online (stateful) model: consecutive chunks, no overlap.

  The input (N samples in total) is cut into consecutive chunks of ``chunk_samples``, the last one completed with
  zeros, and followed by ``lag_chunks`` chunks of zeros; ``process`` is called once per chunk, in order, and carries
  its own state between calls. Its output for chunk ``k`` is the model's output for the samples of chunk
  ``k - lag_chunks`` (an algorithmic latency of ``lag_chunks`` chunks), so the first ``lag_chunks * chunk_samples``
  output samples are dropped and the rest cut to N: for a causal model whose offline forward pads the end with zeros
  to whole chunks (Waveformer), the result equals that offline forward.

  Args:
    blocks: the input stream, ``(n,)`` float32 arrays of any lengths.
    process: ``(chunk_samples,)`` float32 -> ``(chunk_samples,)``.
    chunk_samples: the model's chunk in samples (>= 1).
    lag_chunks: the model's output delay in chunks (>= 0).
    stats: if given, ``stats['chunks']`` (process calls) is counted into it.

  Yields:
    ``(m,)`` float32 output blocks, N samples in total, one per call once the lag has passed.

  Raises:
    ValueError: ``chunk_samples < 1``, ``lag_chunks < 0``, or ``process`` returned a different length.
  """
  if chunk_samples < 1 or lag_chunks < 0:
    raise ValueError(f"online_chunks: chunk_samples must be >= 1 and lag_chunks >= 0, got {chunk_samples}, "
                     f"{lag_chunks}")
  stats = {} if stats is None else stats
  stats.setdefault("chunks", 0)
  skip = lag_chunks * chunk_samples  # output samples still to drop
  total, emitted = 0, 0
  pending = np.zeros(0, np.float32)

  def run(chunk: np.ndarray, limit: int | None) -> np.ndarray:
    nonlocal skip, emitted
    y = np.asarray(process(chunk), np.float32).reshape(-1)
    if len(y) != chunk_samples:
      raise ValueError(f"online_chunks: process returned {len(y)} samples for a chunk of {chunk_samples}")
    stats["chunks"] += 1
    drop = min(skip, len(y))
    y, skip = y[drop:], skip - drop
    if limit is not None:
      y = y[:max(0, limit - emitted)]
    emitted += len(y)
    return y

  for block in blocks:
    block = np.asarray(block, np.float32).reshape(-1)
    total += len(block)
    pending = np.concatenate([pending, block]) if len(pending) else block
    while len(pending) >= chunk_samples:
      y = run(pending[:chunk_samples], None)
      pending = pending[chunk_samples:]
      if len(y):
        yield y
  tail = (-(-len(pending) // chunk_samples) + lag_chunks) * chunk_samples
  pending = np.concatenate([pending, np.zeros(tail - len(pending), np.float32)])
  for k in range(tail // chunk_samples):
    if emitted >= total:
      break
    y = run(pending[k * chunk_samples:(k + 1) * chunk_samples], total)
    if len(y):
      yield y


def _match_length(stream: Iterable[np.ndarray], counter: dict[str, int]) -> Iterator[np.ndarray]:
  """Cuts / zero-pads a stream to ``counter['n']`` samples (final once ``stream`` is exhausted)."""
  emitted, held = 0, np.zeros(0, np.float32)
  for block in stream:
    held = np.concatenate([held, block]) if len(held) else block
    n = min(len(held), counter["n"] - emitted)
    if n > 0:
      yield held[:n]
      held, emitted = held[n:], emitted + n
  n = min(len(held), counter["n"] - emitted)
  if n > 0:
    yield held[:n]
    emitted += n
  if emitted < counter["n"]:
    yield np.zeros((counter["n"] - emitted,) + held.shape[1:], np.float32)


def _counted(blocks: Iterable[np.ndarray], counter: dict[str, int]) -> Iterator[np.ndarray]:
  for b in blocks:
    b = np.asarray(b, np.float32).reshape(-1)
    counter["n"] += len(b)
    yield b
