"""The two families every separation / extraction system is made of: query encoders and separators.

A **query encoder** turns a query into a condition vector ``(batch, condition_size)``:

* ``'audio'``: a waveform ``(batch, query_samples)`` at the system's rate (PANNs Cnn14 latent source embedding,
  HTS-AT / CaRE-SEP shared encoder, M2D + MHFA enrollment encoder, SoundWords audio tower, SoundBeam's TasNet
  enrollment encoder) -> ``embed_audio``;
* ``'class'``: class ids ``(batch,)`` int32 through a learned table or class-clue encoder (SoundBeam, Waveformer)
  -> ``embed_class``; a run may instead (or also) store class-average conditions (``class_embeddings.npz``, the mean
  audio embedding over each class's training anchor segments, bytedance/uss), which inference serves without the model;
* ``'text'``: token ids ``(batch, tokens)`` int32 + attention mask (SoundWords text tower) -> ``embed_text``.

A **separator** maps ``(mixture (batch, samples), condition (batch, condition_size))`` to one or more estimates
``{name: (batch, samples)}`` (ResUNet30, MAE-ResUNet, Swin-UNet, SoundBeam, Waveformer, SoundFilter).

A **system** is the ``nnx.Module`` a task trains (its parameter tree is the checkpoint's ``model`` tree) and that
implements, as plain methods, ``interface()``, ``separate()`` and the ``embed_*`` of its query kinds
(``SystemProtocol``). Systems are built from config by one registry (``uss_jax.models.registry``), so a task and
``uss-jax separate`` / ``info`` build the same module from a run's stored config and context alone.

Two systems whose ``condition_space`` strings are equal may swap query encoders: the query encoder of one run drives
the separator of another (e.g. two USS runs conditioned on the same frozen PANNs Cnn14).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax

QUERY_KINDS = ("audio", "class", "text")


@dataclasses.dataclass(frozen=True)
class SystemInterface:
  """Static facts of a system, enough for inference to drive it without knowing its architecture.

  Attributes:
    name: the registry name (``config.model.name``), e.g. ``'resunet30'``.
    sample_rate: Hz of the mixture, the audio queries and the outputs.
    segment_samples: the training mixture length in samples; inference chunks default to twice this.
    condition_size: width of the condition vector.
    query_kinds: which ``embed_*`` methods exist (a subset of ``QUERY_KINDS``, in order of preference).
    outputs: names of ``separate``'s outputs; ``outputs[0]`` is the target estimate (e.g. ``('waveform',)`` or
      ``('enhanced', 'suppressed')``).
    condition_space: identifies the embedding space of the condition (e.g. ``'cnn14:<weights digest>'``); equal
      strings mean interchangeable query encoders.
    query_samples: length of one audio-query segment in samples (longer queries are cut into segments whose
      embeddings are averaged, shorter ones repeated); None = ``segment_samples``.
    streaming: the separator has a stateful chunk-by-chunk path equal to its offline forward (Waveformer).
    class_names: names of the class ids ``embed_class`` takes (``'class'`` kind), in id order.
    min_samples: inputs shorter than this are zero-padded by inference (e.g. the STFT's padding multiple).
  """

  name: str
  sample_rate: int
  segment_samples: int
  condition_size: int
  query_kinds: tuple[str, ...]
  outputs: tuple[str, ...] = ("waveform",)
  condition_space: str = ""
  query_samples: int | None = None
  streaming: bool = False
  class_names: tuple[str, ...] = ()
  min_samples: int = 1

  def __post_init__(self):
    unknown = set(self.query_kinds) - set(QUERY_KINDS)
    if unknown:
      raise ValueError(f"SystemInterface {self.name!r}: unknown query kinds {sorted(unknown)}; "
                       f"expected a subset of {QUERY_KINDS}")
    if not self.outputs:
      raise ValueError(f"SystemInterface {self.name!r}: needs at least one output")
    if "class" in self.query_kinds and not self.class_names:
      raise ValueError(f"SystemInterface {self.name!r}: a 'class' query needs class_names")

  @property
  def audio_query_samples(self) -> int:
    return int(self.query_samples or self.segment_samples)

  def to_json(self) -> dict[str, Any]:
    """A JSON-able dict (lists for tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@runtime_checkable
class SystemProtocol(Protocol):
  """What inference calls on a system (the ``embed_*`` only for the declared query kinds)."""

  def interface(self) -> SystemInterface:
    ...

  def separate(self, mixture: jax.Array, condition: jax.Array) -> dict[str, jax.Array]:
    """``(batch, samples)`` mixture, ``(batch, condition_size)`` condition -> ``{output: (batch, samples)}``."""
    ...


def check_system(model: Any) -> SystemInterface:
  """The ``SystemInterface`` of ``model`` after checking that it implements the methods it declares.

  Raises:
    TypeError: ``model`` is not a system (no ``interface`` / ``separate``) or lacks an ``embed_*`` method of one of its
      declared query kinds.
  """
  if not callable(getattr(model, "interface", None)) or not callable(getattr(model, "separate", None)):
    raise TypeError(f"{type(model).__name__} is not a separation system (needs interface() and separate())")
  info = model.interface()
  for kind in info.query_kinds:
    if not callable(getattr(model, f"embed_{kind}", None)):
      raise TypeError(f"{type(model).__name__} declares {kind!r} queries but has no embed_{kind}()")
  return info
