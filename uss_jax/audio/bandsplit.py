"""Mel-scale band-split of a linear-frequency spectrogram and its exact inverse (CaRE-SEP input).

CaRE-SEP (seed 001, Sec. "Implementation details") computes an STFT with window 1024 / hop 320 and "uses Mel
scale-based band-split [16] to compress the spectrogram into 64 bands". [16] is Chen et al., "Ultra Dual-Path
Compression" (Interspeech 2023); its public code (tencent-ailab/UltraDualPathCompression,
``ultra_dual_path_compression.py``, class ``FreqCompression``) defines the bands. We follow that rule exactly:

Band-edge rule (``n_bands`` bands over ``n_bins = n_fft // 2 + 1`` bins at ``f_k = k * sample_rate / n_fft``):

1. ``n_bands + 2`` points equally spaced on the HTK mel scale ``2595 log10(1 + f / 700)`` from 0 Hz to
   ``sample_rate / 2``, mapped back to Hz: ``p_0 = 0 < p_1 < ... < p_{n_bands+1} = sample_rate / 2``;
2. boundaries ``e_0 = 0``, ``e_j = min{k : f_k > p_j}`` for ``j = 1..n_bands``, ``e_{n_bands+1} = n_bins``;
3. band ``i`` (``i = 0..n_bands-1``) is the bin range ``[e_i, e_{i+2})``: like the support of a triangular mel
   filter, every band overlaps half of each neighbour, so every bin in ``[e_1, e_{n_bands})`` lies in exactly two
   bands and the bins below ``e_1`` / from ``e_{n_bands}`` on lie in one.

For 32 kHz, n_fft 1024, 64 bands this gives band widths from 2 bins (band 1: bins 2-3, 62.5-94 Hz) to 50 bins
(band 63: bins 463-512, 14.5-16 kHz); the padded block is 64 x 50.

The reference then applies a learnable per-band linear map (band bins x channels -> hidden) and, on the way back,
a per-band map to band bins whose overlapping outputs are summed and halved where two bands overlap. Here the
fixed part is split from the learnable part: :func:`band_split` gathers each band's bins into a zero-padded
``(n_bands, max_width)`` block (a model applies its per-band projection on that, ``mask`` says which slots are
real), and :func:`band_merge` maps band blocks back to bins by averaging the (one or two) copies of each bin, the
reference's "sum then halve the overlap". Hence ``band_merge(band_split(S)) == S`` exactly, for any real or
complex spectrogram.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


def mel_band_edges(sample_rate: float, n_fft: int, n_bands: int) -> np.ndarray:
  """Bin boundaries ``e_0 .. e_{n_bands+1}`` of the UDPC / CaRE-SEP mel band-split (rule in the module docstring).

  Args:
    sample_rate: Hz.
    n_fft: FFT size in samples (``n_bins = n_fft // 2 + 1``).
    n_bands: number of bands.

  Returns:
    ``(n_bands + 2,)`` int64, non-decreasing, ``e_0 = 0``, ``e_{-1} = n_bins``.
  """
  n_bins = n_fft // 2 + 1
  bin_hz = np.linspace(0.0, sample_rate / 2.0, n_bins)
  mel_max = 2595.0 * np.log10(1.0 + (sample_rate / 2.0) / 700.0)
  points_hz = 700.0 * (10.0 ** (np.linspace(0.0, mel_max, n_bands + 2) / 2595.0) - 1.0)
  inner = np.searchsorted(bin_hz, points_hz[1:-1], side="right")  # first bin strictly above each point
  return np.concatenate([[0], inner, [n_bins]]).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class BandLayout:
  """Static description of a band-split (numpy arrays, built at trace time).

  Attributes:
    n_bins: spectrogram bins.
    edges: ``(n_bands + 2,)`` boundaries; band ``i`` is bins ``[edges[i], edges[i + 2])``.
    starts: ``(n_bands,)`` first bin of each band.
    widths: ``(n_bands,)`` bins per band.
    index: ``(n_bands, max_width)`` bin of each slot (0 in padding slots).
    mask: ``(n_bands, max_width)`` bool, True for real slots.
    merge_index: ``(2, n_bins)`` flat slot (``band * max_width + offset``) of the two copies of each bin (the same
      slot twice for bins covered by one band).
  """
  n_bins: int
  edges: np.ndarray
  starts: np.ndarray
  widths: np.ndarray
  index: np.ndarray
  mask: np.ndarray
  merge_index: np.ndarray

  @property
  def n_bands(self) -> int:
    return int(self.widths.shape[0])

  @property
  def max_width(self) -> int:
    return int(self.index.shape[1])


@functools.lru_cache(maxsize=16)
def band_layout(sample_rate: float = 32000.0, n_fft: int = 1024, n_bands: int = 64) -> BandLayout:
  """The band-split layout for an STFT of ``n_fft`` at ``sample_rate`` (cached).

  Args:
    sample_rate: Hz (CaRE-SEP / HTS-AT: 32000).
    n_fft: FFT size (CaRE-SEP: 1024).
    n_bands: bands (CaRE-SEP: 64).

  Returns:
    a :class:`BandLayout`.

  Raises:
    ValueError: if some band would be empty (too many bands for the frequency resolution).
  """
  if n_bands < 1:
    raise ValueError("n_bands must be positive")
  edges = mel_band_edges(sample_rate, n_fft, n_bands)
  n_bins = n_fft // 2 + 1
  starts, stops = edges[:-2], edges[2:]
  widths = stops - starts
  if np.any(widths <= 0):
    raise ValueError(f"{n_bands} mel bands leave empty bands for n_fft={n_fft} at {sample_rate} Hz; use fewer bands")
  max_width = int(widths.max())
  offs = np.arange(max_width)[None, :]
  mask = offs < widths[:, None]
  index = np.where(mask, starts[:, None] + offs, 0)
  # For each bin: the lower band containing it (i = segment - 1, if that exists) and the upper one (i = segment).
  k = np.arange(n_bins)
  segment = np.searchsorted(edges, k, side="right") - 1  # edges[segment] <= k < edges[segment + 1]
  upper = np.minimum(segment, n_bands - 1)
  lower = np.maximum(segment - 1, 0)
  first = lower * max_width + (k - starts[lower])
  second = upper * max_width + (k - starts[upper])
  merge_index = np.stack([first, second])
  for arr in (edges, starts, widths, index, mask, merge_index):
    arr.flags.writeable = False
  return BandLayout(n_bins, edges, starts, widths, index, mask, merge_index)


def band_split(spec: jax.Array, layout: BandLayout) -> jax.Array:
  """Split the frequency axis into the layout's overlapping mel bands, zero-padded to a common width.

  Args:
    spec: ``(..., frames, n_bins)`` real or complex spectrogram.
    layout: from :func:`band_layout`.

  Returns:
    ``(..., frames, n_bands, max_width)``; ``out[..., b, j] = spec[..., edges[b] + j]`` for ``j < widths[b]``, 0 after.

  Raises:
    ValueError: if the bin count does not match the layout.
  """
  if spec.shape[-1] != layout.n_bins:
    raise ValueError(f"spectrogram has {spec.shape[-1]} bins, layout expects {layout.n_bins}")
  out = spec[..., layout.index]
  return jnp.where(jnp.asarray(layout.mask), out, jnp.zeros((), out.dtype))


def band_merge(bands: jax.Array, layout: BandLayout) -> jax.Array:
  """Inverse of :func:`band_split`: each bin is the mean of its (one or two) band copies.

  Args:
    bands: ``(..., frames, n_bands, max_width)`` (padding slots are ignored).
    layout: from :func:`band_layout`.

  Returns:
    ``(..., frames, n_bins)``.

  Raises:
    ValueError: if the band shape does not match the layout.
  """
  if bands.shape[-2:] != (layout.n_bands, layout.max_width):
    raise ValueError(f"bands of shape {bands.shape[-2:]} do not match layout {(layout.n_bands, layout.max_width)}")
  flat = bands.reshape(bands.shape[:-2] + (layout.n_bands * layout.max_width,))
  return 0.5 * (flat[..., layout.merge_index[0]] + flat[..., layout.merge_index[1]])
