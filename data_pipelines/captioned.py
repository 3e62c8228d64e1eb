"""grain pipelines of audio-text pairs (SoundWords, seed 003 Sec. 3.3.2), on the scheme of ``data_pipelines.pipelines``.

``soundwords_train_iterator``: every captioned clip once per epoch (shuffled), a random crop of ``clip_samples``
(zero-padded when shorter) with its caption tokenised on the host (``uss_jax.text.TextTokenizer``: fixed-length ids and
attention mask, so the step sees static shapes). ``soundwords_eval_set``: each held-out clip once, its first
``clip_samples`` samples, with the same fields plus the index of its caption among the split's distinct captions
(``caption_id``; clips cut from one recording share a caption, which recall@K must count as one relevant text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines.pipelines import crop_or_pad, host_sharded_train_iterator, stack, to_float32


def caption_text(element: Mapping[str, Any]) -> str:
  """The caption of a source element (bytes or str; '' when absent)."""
  caption = element.get("caption", b"")
  return caption.decode("utf-8", "replace") if isinstance(caption, (bytes, np.bytes_)) else str(caption)


class SoundWordsTransform:
  """Element -> ``{'audio': (clip_samples,) float32, 'token_ids', 'attention_mask': (max_tokens,) int32}``.

  Args:
    clip_samples: crop length (samples).
    tokenizer: picklable ``caption -> {'token_ids', 'attention_mask'}`` (``TextTokenizer.encode_one``'s owner).
    train: random crop (True) or the first ``clip_samples`` (False).
  """

  def __init__(self, clip_samples: int, tokenizer: Any, train: bool = True):
    self.clip_samples = int(clip_samples)
    self.tokenizer = tokenizer
    self.train = train

  def __call__(self, element: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    audio = crop_or_pad(to_float32(element["waveform"]), self.clip_samples, rng if self.train else None)
    return {"audio": audio, **self.tokenizer.encode_one(caption_text(element))}


def soundwords_train_iterator(source: Any, *, clip_samples: int, tokenizer: Any, global_batch: int, seed: int,
                              process_index: int, process_count: int, num_workers: int = 0) -> grain.DatasetIterator:
  """Infinite per-host batches of ``SoundWordsTransform(train=True)`` rows (``audio`` (b, clip_samples) float32,
  ``token_ids`` / ``attention_mask`` (b, max_tokens) int32)."""
  return host_sharded_train_iterator(source, SoundWordsTransform(clip_samples, tokenizer, train=True),
                                     global_batch=global_batch, seed=seed, process_index=process_index,
                                     process_count=process_count, num_workers=num_workers)


def soundwords_eval_set(source: Any, *, clip_samples: int, tokenizer: Any) -> tuple[dict[str, np.ndarray], list[str]]:
  """Each clip of ``source`` once (``SoundWordsTransform(train=False)``) plus ``clip`` (index, int32) and
  ``caption_id`` (int32 index into the returned list of distinct captions, in first-seen order).

  Returns:
    ``(eval_set, captions)``.

  Raises:
    ValueError: an empty source.
  """
  if len(source) == 0:
    raise ValueError("the evaluation split holds no clip")
  transform = SoundWordsTransform(clip_samples, tokenizer, train=False)
  rows, captions, ids = [], [], {}
  for i in range(len(source)):
    element = source[i]
    text = caption_text(element)
    if text not in ids:
      ids[text] = len(captions)
      captions.append(text)
    rows.append({**transform(element), "clip": np.int32(i), "caption_id": np.int32(ids[text])})
  return stack(rows), captions


def distinct_captions(source: Any) -> list[str]:
  """The distinct captions of ``source`` in first-seen order (one pass)."""
  seen: dict[str, None] = {}
  for i in range(len(source)):
    seen.setdefault(caption_text(source[i]), None)
  return list(seen)


def caption_table(captions: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> dict[str, np.ndarray]:
  """``{caption: embedding}`` of each distinct caption, embedded in one call of ``embed(list) -> (n, D)``."""
  captions = list(dict.fromkeys(captions))
  if not captions:
    return {}
  emb = np.asarray(embed(captions), np.float32)
  return {c: emb[i] for i, c in enumerate(captions)}
