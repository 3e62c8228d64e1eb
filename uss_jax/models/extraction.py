"""The registry builder of the target sound extraction systems (seed 002): SoundBeam and the online Waveformer.

``build_tse_system(config, context, rngs)`` composes the separator (``models/soundbeam.py`` or
``models/waveformer.py``) with its clue encoders: the class table, the enrollment encoder (Conv-TasNet, or M2D + MHFA)
and, optionally, the M2D input enhancer (AIE) on the mixture, and declares its ``SystemInterface`` (class and audio
clues, one waveform output; streaming for Waveformer). The TSE task (``uss_jax.tasks.tse``) and inference build the same
tree from a run's config and ``system_context.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx
import jax.numpy as jnp
import ml_collections

from uss_jax.models import soundbeam
from uss_jax.models.interface import SystemInterface

MODELS = ("soundbeam", "waveformer")


def build_tse_system(config: ml_collections.ConfigDict, context: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
  """The registry builder of ``'soundbeam'`` and ``'waveformer'`` (``config.model.name``).

  ``config.model``: ``size`` (``soundbeam.SIZES`` / ``waveformer.SIZES``) plus any constructor argument as an
  override; ``m2d`` (optional): ``enrollment`` (M2D + MHFA enrollment encoder, ``mhfa_heads``,
  ``mhfa_compression``, ``mhfa_output_norm``), ``mixture`` (AIE over the M2D's layers; causal for Waveformer), one
  M2D shared by both.
  ``context``: ``num_classes``, ``class_names``, ``m2d`` (the M2D's constructor arguments, or None),
  ``condition_space``, ``sample_rate``, ``segment_samples``, ``query_samples``. Compute dtype ``config.compute_dtype``
  (SoundBeam).

  Raises:
    ValueError: unknown model name or inconsistent sizes.
  """
  from uss_jax.models import m2d as m2d_lib  # pylint: disable=import-outside-toplevel
  from uss_jax.models import waveformer as wf  # pylint: disable=import-outside-toplevel
  m = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(config.model).items()}
  name = m.pop("name", "soundbeam") or "soundbeam"
  size = m.pop("size", "paper")
  o = dict(m.pop("m2d", None) or {})
  if name not in MODELS:
    raise ValueError(f"config.model.name: unknown TSE system {name!r}; expected one of {MODELS}")
  num_classes = int(context["num_classes"])
  sizes = (soundbeam.SIZES if name == "soundbeam" else wf.SIZES).get(size, {})
  embed_dim = int({**sizes, **m}.get("embed_dim" if name == "soundbeam" else "enc_dim", 0))
  shared = enroll = None
  if o.get("enrollment") or o.get("mixture"):
    arch = dict(context.get("m2d") or {})
    shared = m2d_lib.M2D(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}, rngs=rngs)
  if o.get("enrollment"):
    enroll = soundbeam.M2DEnrollmentEncoder(shared, embed_dim, compression_dim=int(o.get("mhfa_compression", 128)),
                                            heads=int(o.get("mhfa_heads", 8)),
                                            output_norm=str(o.get("mhfa_output_norm", "none")), rngs=rngs)
  mixture = shared if o.get("mixture") else None
  if name == "soundbeam":
    dtype = jnp.dtype(config.get("compute_dtype", "float32"))
    model = soundbeam.soundbeam(size, num_classes, rngs=rngs, dtype=None if dtype == jnp.float32 else dtype,
                                enrollment_encoder=enroll, mixture_m2d=mixture, **m)
  else:
    model = wf.waveformer(size, num_classes, rngs=rngs, enrollment_encoder=enroll, mixture_m2d=mixture, **m)
  model.info = SystemInterface(
      name=name, sample_rate=int(context.get("sample_rate", config.data.sample_rate)),
      segment_samples=int(context.get("segment_samples", round(config.data.mixture_seconds *
                                                               config.data.sample_rate))),
      condition_size=model.embed_dim, query_kinds=("class", "audio"), outputs=("waveform",),
      condition_space=str(context.get("condition_space", "")),
      query_samples=context.get("query_samples"), streaming=name == "waveformer",
      class_names=tuple(context.get("class_names", ())) or tuple(str(i) for i in range(num_classes)))
  return model


def build_soundbeam(config: ml_collections.ConfigDict, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
  """The system of ``config.model`` for ``num_classes`` classes without an M2D (tests, benchmarks): ``size`` (a
  ``soundbeam.SIZES`` key) plus any constructor argument as an override; compute dtype ``config.compute_dtype``."""
  return build_tse_system(config, {"num_classes": num_classes, "m2d": None}, rngs)
