"""grain pipelines of the conditioned-extraction task families (the scheme of ``data_pipelines.pipelines``).

  SoundFilter      ``soundfilter_train_iterator``, ``soundfilter_eval_set`` (seed 003 Sec. 3.3.1: target crop +
                   background crop with gain in +-4 dB, a second crop of the target clip as audio condition, the caption
                   as text condition at ``text_rate``)
  extraction       ``tse_train_iterator``, ``tse_eval_set`` (seed 002 Sec. VI-A: Scaper-like mixtures of 3-4 events,
                   two targets, enrollment = another clip of the target class, class-id clue)

Mixing itself is in ``data_pipelines.mixing``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grain
import numpy as np

from data_pipelines import mixing
from data_pipelines.pipelines import (_waveform, host_sharded_generated_iterator, host_sharded_train_iterator,
                                      stack)


# ---- SoundFilter (seed 003): target crop + gained background crop, audio or text condition ----


def encode_caption(caption: bytes | str, width: int = 256) -> np.ndarray:
  """UTF-8 bytes of ``caption`` as a (width,) uint8 array, cut at ``width`` bytes and zero-padded."""
  data = caption.encode("utf-8") if isinstance(caption, str) else bytes(caption)
  out = np.zeros((width,), np.uint8)
  data = data[:width]
  out[:len(data)] = np.frombuffer(data, np.uint8)
  return out


def decode_caption(array: np.ndarray) -> str:
  """Inverse of ``encode_caption`` (a caption cut inside a multi-byte character ends with U+FFFD)."""
  return bytes(np.asarray(array, np.uint8)).rstrip(b"\0").decode("utf-8", "replace")


class SoundFilterTransform:
  """Clip index -> SoundFilter example (``mixing.soundfilter_example``) with caption and clip id.

  The background clip is uniform over the other clips of ``source`` (or over ``background_source``, the paper's
  separate unlabeled background audio, when given).

  Args:
    source: random-access source of dicts with ``waveform`` and ``caption`` (bytes or str).
    crop_samples: crop length in samples (2 s).
    gain_db, text_rate, gain_reference, crop_rule: see ``mixing.soundfilter_example``.
    background_source: optional separate source of background clips.
    tokenizer: optional ``caption (str) -> dict of fixed-shape arrays`` merged into the example (e.g. token ids).
    caption_bytes: width of the ``caption`` array (``encode_caption``).
  """

  def __init__(self, source: Any, *, crop_samples: int, gain_db: float = 4.0, text_rate: float = 0.3,
               gain_reference: str = "target", crop_rule: str = "random", background_source: Any = None,
               tokenizer: Callable[[str], Mapping[str, np.ndarray]] | None = None,
               caption_bytes: int = 256):
    self.source = source
    self.background_source = background_source
    self.crop_samples = int(crop_samples)
    self.gain_db = gain_db
    self.text_rate = text_rate
    self.gain_reference = gain_reference
    self.crop_rule = crop_rule
    self.tokenizer = tokenizer
    self.caption_bytes = caption_bytes

  def __call__(self, clip: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    clip = int(clip)
    element = self.source[clip]
    if self.background_source is not None:
      bg_clip = int(rng.integers(len(self.background_source)))
      background = _waveform(self.background_source, bg_clip)
    else:
      n = len(self.source)
      bg_clip = int(rng.integers(n - 1)) if n > 1 else 0
      bg_clip += int(n > 1 and bg_clip >= clip)
      background = _waveform(self.source, bg_clip)
    out = mixing.soundfilter_example(element["waveform"], background, rng, crop_samples=self.crop_samples,
                                     gain_db=self.gain_db, text_rate=self.text_rate,
                                     gain_reference=self.gain_reference, crop_rule=self.crop_rule)
    caption = element.get("caption", b"")
    caption = caption.encode("utf-8") if isinstance(caption, str) else bytes(caption)
    out["caption"] = encode_caption(caption, self.caption_bytes)
    if self.tokenizer is not None:
      out.update({k: np.asarray(v) for k, v in self.tokenizer(caption.decode("utf-8", "replace")).items()})
    out["clip"] = np.int32(clip)
    out["background_clip"] = np.int32(bg_clip)
    return out


def soundfilter_train_iterator(source: Any, *, crop_samples: int, global_batch: int, seed: int, process_index: int,
                               process_count: int, num_workers: int = 0, gain_db: float = 4.0,
                               text_rate: float = 0.3, gain_reference: str = "target", crop_rule: str = "random",
                               background_source: Any = None, tokenizer: Callable[[str], Mapping[str, np.ndarray]] | None = None
                               ) -> grain.DatasetIterator:
  """Infinite SoundFilter batches: every captioned clip once per epoch (shuffled) as the target.

  Returns:
    iterator of dicts (b = rows of this process): ``mixture``, ``target``, ``background``, ``condition``
    (b, crop_samples) float32 with ``mixture = target + background``; ``use_text`` (b,) float32 (1 = condition on
    the caption, drawn with probability ``text_rate``); ``background_gain_db`` (b,) float32 in [-gain_db, gain_db]
    and ``background_scale`` (b,) float32 (``mixing.soundfilter_example``);
    ``target_start``, ``condition_start``, ``background_start`` (b,) int32; ``caption`` (b, 256) uint8 (UTF-8,
    zero-padded: ``decode_caption``; numeric, so the trainer can shard it like any other entry);
    ``clip``, ``background_clip`` (b,) int32; plus the tokenizer's arrays.
  """
  transform = SoundFilterTransform(source, crop_samples=crop_samples, gain_db=gain_db, text_rate=text_rate,
                                   gain_reference=gain_reference, crop_rule=crop_rule,
                                   background_source=background_source, tokenizer=tokenizer)
  return host_sharded_train_iterator(range(len(source)), transform, global_batch=global_batch, seed=seed,
                                     process_index=process_index, process_count=process_count,
                                     num_workers=num_workers)


def soundfilter_eval_set(source: Any, *, crop_samples: int, seed: int, gain_db: float = 4.0,
                         gain_reference: str = "target", crop_rule: str = "random",
                         background_source: Any = None) -> dict[str, np.ndarray]:
  """One fixed SoundFilter example per clip of ``source`` (clip order), from generators seeded by (seed, clip).

  Every example carries both conditions (``condition`` audio and ``caption``) so that audio- and text-queried
  SI-SDR are scored on the same mixtures; ``use_text`` is dropped.
  """
  transform = SoundFilterTransform(source, crop_samples=crop_samples, gain_db=gain_db, text_rate=0.0,
                                   gain_reference=gain_reference, crop_rule=crop_rule,
                                   background_source=background_source)
  rows = [transform(i, np.random.default_rng([seed, i])) for i in range(len(source))]
  out = stack(rows)
  out.pop("use_text")
  return out


# ---- target sound extraction (seed 002): Scaper-like soundscapes, two targets, enrollments ----


def clip_labels(source: Any) -> np.ndarray:
  """(clips, classes) uint8 multi-hot ``labels`` of every element of ``source`` (one pass over the source)."""
  return np.stack([np.asarray(source[i]["labels"], np.uint8) for i in range(len(source))])


class TSEElements:
  """Element ``n`` of the target-sound-extraction stream (seed 002 Sec. VI-A; ``mixing.draw_tse_recipe`` +
  ``mixing.scaper_mix``): 3-4 foreground events of different classes over a background, the first two events are
  the targets, each with an enrollment clip of its class that is not in the mixture.

  Args:
    source: random-access source of dicts with ``waveform`` (and ``labels`` unless ``labels`` is given).
    mixture_samples: soundscape length in samples (6 s at 16 kHz in seed 002: 96,000).
    labels: (clips, classes) multi-hot; default ``clip_labels(source)`` (reads every element once).
    enrollment_samples: enrollment length (default ``mixture_samples``); a random crop, zero-padded if shorter.
    num_events, num_targets: see ``mixing.draw_tse_recipe``.
    snr_db, event_samples: see ``mixing.scaper_mix``; ``event_samples`` defaults to half to five sixths of the
      mixture (3-5 s of 6 s).
    normalize: divide mixture and targets by the mixture's max |.| (one factor, so SNRs are kept; as Semantic
      Hearing's data loader ``semaudio_binaural_base.py``).
  """

  def __init__(self, source: Any, *, mixture_samples: int, labels: np.ndarray | None = None,
               enrollment_samples: int | None = None, num_events: tuple[int, int] = (3, 4), num_targets: int = 2,
               snr_db: tuple[float, float] = (5.0, 15.0), event_samples: tuple[int, int] | None = None,
               normalize: bool = True):
    self.source = source
    self.labels = np.asarray(clip_labels(source) if labels is None else labels).astype(np.uint8)
    self.members = mixing.class_members(self.labels)
    self.mixture_samples = int(mixture_samples)
    self.enrollment_samples = int(enrollment_samples or mixture_samples)
    self.num_events = num_events
    self.num_targets = num_targets
    self.snr_db = snr_db
    self.event_samples = event_samples or (self.mixture_samples // 2, self.mixture_samples * 5 // 6)
    self.normalize = normalize

  def __call__(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    del n  # everything comes from the element's generator
    recipe = mixing.draw_tse_recipe(rng, self.labels, self.members, num_events=self.num_events,
                                    num_targets=self.num_targets)
    scape = mixing.scaper_mix([_waveform(self.source, c) for c in recipe["event_clip"]],
                              _waveform(self.source, recipe["background_clip"]), rng,
                              mixture_samples=self.mixture_samples, event_samples=self.event_samples,
                              snr_db=self.snr_db)
    mixture, targets = scape["mixture"], scape["events"][:self.num_targets]
    if self.normalize:
      mixture, peak = mixing.peak_normalize(mixture)
      targets = targets / np.float32(peak)
    enrollment = np.stack([mixing.random_crop(_waveform(self.source, c), self.enrollment_samples, rng)[0]
                           for c in recipe["enrollment_clip"]])
    events = len(recipe["event_clip"])
    snr = np.full((self.num_events[1],), np.nan, np.float32)
    snr[:events] = scape["snr_db"]
    return {"mixture": mixture, "target": targets,
            "class_id": recipe["event_class"][:self.num_targets].astype(np.int32), "enrollment": enrollment,
            "num_events": np.int32(events), "snr_db": snr}


def tse_train_iterator(source: Any, *, mixture_samples: int, global_batch: int, seed: int, process_index: int,
                       process_count: int, num_workers: int = 0, **options: Any) -> grain.DatasetIterator:
  """Infinite TSE batches (``TSEElements(source, mixture_samples=..., **options)``).

  Returns:
    iterator of dicts: ``mixture`` (b, mixture_samples); ``target`` (b, 2, mixture_samples) the two target events
    as placed in the mixture; ``class_id`` (b, 2) int32 (the class-label clues); ``enrollment``
    (b, 2, enrollment_samples) float32; ``num_events`` (b,) int32; ``snr_db`` (b, max events) float32, NaN past
    ``num_events``.
  """
  elements = TSEElements(source, mixture_samples=mixture_samples, **options)
  return host_sharded_generated_iterator(elements, global_batch=global_batch, seed=seed,
                                         process_index=process_index, process_count=process_count,
                                         num_workers=num_workers)


def tse_eval_set(source: Any, *, num_mixtures: int, seed: int, mixture_samples: int,
                 **options: Any) -> dict[str, np.ndarray]:
  """``num_mixtures`` fixed TSE examples (fixed enrollments, as seed 002's validation / test sets), element ``i``
  drawn from the generator seeded by ``(seed, i)``; arrays as in ``tse_train_iterator`` with leading axis N."""
  elements = TSEElements(source, mixture_samples=mixture_samples, **options)
  return stack([elements(i, np.random.default_rng([seed, i])) for i in range(num_mixtures)])
