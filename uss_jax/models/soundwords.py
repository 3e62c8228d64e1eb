"""SoundWords (seed 003, Kilgour et al. Sec. 3.1 / 3.3.2): an audio tower and a text tower that end in one space.

``SoundWords`` = ``ResNetish`` (VGGish log-mel -> ResNet-50-style CNN -> mean over frames -> FC to ``D``) +
``BertTextEncoder`` (BERT -> [CLS] or mean pooling -> FC to ``D``) + the learnable softmax temperature of the
contrastive loss (``log_temperature``, initialised at log 0.1). Trained by ``uss_jax.tasks.contrastive``; frozen, it
is the query encoder of SoundFilter (``uss_jax.models.soundfilter``), for text or audio queries alike.

Both towers are rebuilt from a JSON-able ``spec`` (``soundwords_spec`` / ``build_soundwords``), which the contrastive
task writes into its run (``system_context.json``) so that SoundFilter, ``uss-jax embed`` and ``uss-jax search``
rebuild the model from the run alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from uss_jax.models import bert as bert_lib
from uss_jax.models import resnetish

INITIAL_TEMPERATURE = 0.1  # seed 003 Sec. 3.3.2


class SoundWords(nnx.Module):
  """Audio tower + text tower + ``log_temperature`` (scalar ``nnx.Param``).

  Args:
    audio_tower: ``(batch, samples) -> (batch, D)`` (``ResNetish``).
    text_tower: ``(token_ids, attention_mask) -> (batch, D)`` (``BertTextEncoder``).
    temperature: initial softmax temperature (0.1).
  """

  def __init__(self, audio_tower: resnetish.ResNetish, text_tower: bert_lib.BertTextEncoder, *,
               temperature: float = INITIAL_TEMPERATURE):
    if audio_tower.embedding_dim != text_tower.embedding_dim:
      raise ValueError(f"SoundWords towers end in different widths: audio {audio_tower.embedding_dim}, text "
                       f"{text_tower.embedding_dim}")
    self.audio_tower = audio_tower
    self.text_tower = text_tower
    self.embedding_dim = audio_tower.embedding_dim
    self.log_temperature = nnx.Param(jnp.asarray(math.log(temperature), jnp.float32))

  def embed_audio(self, audio: jax.Array) -> jax.Array:
    """``(batch, samples)`` 16 kHz waveform -> ``(batch, D)`` (not normalised)."""
    return self.audio_tower(audio)

  def embed_text(self, token_ids: jax.Array, attention_mask: jax.Array, *,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
    """``(batch, tokens)`` int32 ids + mask -> ``(batch, D)`` (not normalised); dropout only with ``rngs``."""
    return self.text_tower(token_ids, attention_mask, rngs=rngs)


def soundwords_spec(config) -> dict[str, Any]:
  """The JSON-able architecture of a SoundWords config (``config.audio``, ``config.text``, ``config.embedding_dim``)
  with ``text.bert`` filled in: the BERT config of the text checkpoint (``config.text.checkpoint``) or the test-size
  one with the tokenizer's vocabulary (``vocab_size`` must then be given by the caller)."""
  a, t = config.audio, config.text
  return {"embedding_dim": int(config.embedding_dim),
          "audio": {"size": a.size, "width": a.get("width") or None, "stages": list(a.stages) if a.get("stages") else None},
          "text": {"pooling": t.pooling, "bert": dict(t.bert) if t.get("bert") else None}}


def build_soundwords(spec: Mapping[str, Any], *, dtype: Any = None, rngs: nnx.Rngs) -> SoundWords:
  """A ``SoundWords`` of a ``spec`` (``soundwords_spec`` with ``text.bert`` = a ``BertConfig`` dict).

  Raises:
    ValueError: a spec without ``text.bert``, unknown sizes.
  """
  text = spec["text"]
  if not text.get("bert"):
    raise ValueError("SoundWords spec: text.bert (the BERT architecture) is missing")
  a = spec["audio"]
  d = int(spec["embedding_dim"])
  audio = resnetish.build_resnetish(a["size"], d, width=a.get("width"),
                                    stages=tuple(a["stages"]) if a.get("stages") else None, dtype=dtype, rngs=rngs)
  bert_cfg = bert_lib.BertConfig.from_dict(text["bert"])
  text_tower = bert_lib.BertTextEncoder(bert_cfg, d, pooling=text.get("pooling", "cls"), dtype=dtype, rngs=rngs)
  return SoundWords(audio, text_tower)
