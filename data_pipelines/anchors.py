"""SED anchor segments: for each (clip, class) the window where a sound event detector is most confident.

The anchor index is the contract between anchor mining (this module) and the separation pipelines
(``data_pipelines.pipelines``): see ``AnchorIndex``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorIndex:
  """Anchor segments of one dataset split, one row per (clip, class) pair.

  Attributes:
    clip: (N,) int64, index of the clip in the split's random-access data source.
    label: (N,) int64, class id.
    start: (N,) int64, first sample of the anchor segment (at ``sample_rate``); the segment is
      ``[start, start + segment_samples)`` of the clip, zero-padded past its end.
    score: (N,) float32, the detector's mean framewise probability of ``label`` over the segment.
    segment_samples: segment length in samples (bytedance/uss: 2 s).
    sample_rate: Hz.
  """

  clip: np.ndarray
  label: np.ndarray
  start: np.ndarray
  score: np.ndarray
  segment_samples: int
  sample_rate: int

  def __len__(self) -> int:
    return int(self.clip.shape[0])

  def rows_of_class(self, label: int) -> np.ndarray:
    """Row indices whose class is ``label`` (sorted)."""
    return np.flatnonzero(self.label == label)
