"""Masked audio modelling: AudioMAE pretraining and SupMAM (reconstruction + a supervised branch on visible tokens).

``config.objective``:
  * ``'audiomae'`` (Huang et al. 2022; facebookresearch/AudioMAE ``models_mae.py`` ``forward_loss``): per-patch
    normalised MSE on the masked patches only (``uss_jax.losses.masked_patch_mse``), mask ratio 0.8;
  * ``'supmam'`` (seed 004 Eqs. (2)-(3)): the same reconstruction loss plus ``lambda_cls * CE(p / tau, y)`` where
    ``p`` are the logits of the classification branch on the average of the VISIBLE encoder tokens (Linear ->
    BatchNorm -> ReLU -> Linear), mask 0.4, ``lambda_cls`` 0.01. The paper leaves ``tau`` and the hidden width
    unstated; the defaults (10.0, 3072) are SupMAE's (enyac-group/supmae ``main_pretrain_supmae.py``,
    ``models_supmae.py``), whose loss ``CE(logits / temperature) * cls_loss_ratio`` seed 004 follows.

The waveform batch comes from the labeled-audio pipeline (``prepare_labeled_audio`` / ``tagging_train_iterator``);
the AudioMAE Kaldi fbank is computed inside the jitted step (``config.frontend``). Masking keeps a fixed number of
tokens per example, so every shape is static under jit.

Classification target (``config.supmam.target``): ``'multi_hot'`` (default) = the clip's multi-hot labels
normalised to a distribution (= one-hot for single-label clips; AudioSet's multi-label clips spread the mass),
``'label'`` = the primary class id.

Evaluation on the held-out split (``eval_outputs`` / ``summarize``): ``rec_loss`` = the same masked reconstruction
loss with a fixed masking key (``config.eval_seed``), averaged over clips; for SupMAM also ``mAP`` / ``accuracy`` of
the branch under the training mask ratio, and ``mAP_full`` / ``accuracy_full`` with every token visible.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import pipelines
from uss_jax import losses, metrics
from uss_jax.audio import frontends
from uss_jax.models import mae, vit
from uss_jax.tasks.tagging import LabeledAudioTask, data_source

OBJECTIVES = ("audiomae", "supmam")
CLS_TARGETS = ("multi_hot", "label")


def build_frontend(config):
  """The front end of ``config.frontend`` (``uss_jax.audio.frontends.get_frontend``)."""
  fe = dict(config.frontend)
  return frontends.get_frontend(fe.pop("name"), **fe)


def build_mae(config, num_classes: int, rngs: nnx.Rngs) -> mae.MaskedAutoencoder:
  """The ``MaskedAutoencoder`` of ``config.model`` (+ a SupMAM branch with ``num_classes`` outputs for ``supmam``).

  ``config.model.encoder``: ``size`` (a ``vit.VIT_PRESETS`` key) and any ``VisionTransformer`` argument
  (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``pos_embed_layout``, ``attention`` ...); ``img_size`` is
  the front end's ``(target_frames, num_mel_bins)``. ``config.model.decoder``: ``preset`` (``mae.DECODER_PRESETS``)
  and any ``MAEDecoder`` argument. Compute dtype: ``config.compute_dtype``.

  Raises:
    ValueError: unknown objective, preset or argument values.
  """
  objective = config.get("objective", "audiomae")
  if objective not in OBJECTIVES:
    raise ValueError(f"config.objective: unknown objective {objective!r}; expected one of {OBJECTIVES}")
  dtype = jnp.dtype(config.get("compute_dtype", "float32"))
  frontend = build_frontend(config)
  enc_cfg = dict(config.model.encoder)
  size = enc_cfg.pop("size", "base")
  frames = frontend.num_frames(int(round(config.data.clip_seconds * config.data.sample_rate)))
  encoder = vit.build_vit(size, img_size=(frames, frontend.num_bins), global_pool=False, num_classes=0,
                          drop_path=0.0, dtype=dtype, rngs=rngs, **enc_cfg)
  dec_cfg = dict(config.model.decoder)
  preset = dec_cfg.pop("preset", None)
  pt, pf = encoder.patch_embed.patch_size
  dec_cfg.setdefault("pos_embed_layout", enc_cfg.get("pos_embed_layout", "time_freq"))
  decoder = mae.build_decoder(encoder.embed_dim, pt * pf, preset, dtype=dtype, rngs=rngs, **dec_cfg)
  classifier = None
  if objective == "supmam":
    classifier = mae.SupervisedBranch(encoder.embed_dim, num_classes, hidden=config.supmam.get("hidden", 3072),
                                      dtype=dtype, rngs=rngs)
  return mae.MaskedAutoencoder(encoder, decoder, mask_ratio=config.model.mask_ratio, classifier=classifier)


def per_example_masked_mse(pred: jax.Array, target_patches: jax.Array, mask: jax.Array,
                           norm_pix_loss: bool = True) -> jax.Array:
  """``losses.masked_patch_mse`` of each example on its own: ``(batch,)``."""
  fn = lambda p, t, m: losses.masked_patch_mse(p[None], t[None], m[None], norm_pix_loss=norm_pix_loss)
  return jax.vmap(fn)(pred, target_patches, mask)


class MAMTask(LabeledAudioTask):
  """AudioMAE / SupMAM pretraining on a labeled folder + CSV (config: ``objective``, ``data``, ``frontend``,
  ``model``, ``supmam``, ``eval_seed``)."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    if config.get("objective", "audiomae") not in OBJECTIVES:
      raise ValueError(f"config.objective: unknown objective {config.get('objective')!r}; expected one of "
                       f"{OBJECTIVES}")
    if self.supervised and config.supmam.get("target", "multi_hot") not in CLS_TARGETS:
      raise ValueError(f"config.supmam.target must be one of {CLS_TARGETS}, got {config.supmam.target!r}")
    self.frontend = build_frontend(config)

  @property
  def supervised(self) -> bool:
    return self.config.get("objective", "audiomae") == "supmam"

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return build_mae(self.config, len(self.class_names) if self.supervised else 0, rngs)

  # ---- objective ----

  def _cls_target(self, batch) -> jax.Array:
    if self.config.supmam.get("target", "multi_hot") == "label":
      return batch["label"].astype(jnp.int32)
    y = batch["labels"].astype(jnp.float32)
    return y / jnp.maximum(y.sum(axis=-1, keepdims=True), 1.0)

  def loss(self, model, batch, rngs):
    out = model(self.frontend(batch["waveform"]), rngs=rngs)
    rec = losses.masked_patch_mse(out["pred"], out["target_patches"], out["mask"],
                                  norm_pix_loss=self.config.model.get("norm_pix_loss", True))
    if not self.supervised:
      return rec, {"rec_loss": rec}
    s = self.config.supmam
    cls = losses.softmax_ce(out["logits"], self._cls_target(batch), temperature=s.temperature)
    return rec + s.cls_weight * cls, {"rec_loss": rec, "cls_loss": cls}

  # ---- evaluation ----

  def eval_outputs(self, model, batch):
    fbank = self.frontend(batch["waveform"])
    out = model(fbank, rngs=nnx.Rngs(masking=jax.random.key(self.config.get("eval_seed", 0))))
    result = {"rec_loss": per_example_masked_mse(out["pred"], out["target_patches"], out["mask"],
                                                 self.config.model.get("norm_pix_loss", True))}
    if self.supervised:
      tau = self.config.supmam.temperature
      result.update({
          "scores": jax.nn.softmax(out["logits"].astype(jnp.float32) / tau, axis=-1),
          "scores_full": jax.nn.softmax(model.classify(fbank).astype(jnp.float32) / tau, axis=-1),
          "labels": batch["labels"], "label": batch["label"]})
    return result

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    summary = {"rec_loss": float(np.mean(outputs["rec_loss"])), "num_clips": float(len(outputs["rec_loss"]))}
    if self.supervised:
      for suffix in ("", "_full"):
        scores = outputs["scores" + suffix]
        summary["mAP" + suffix] = metrics.mean_average_precision(outputs["labels"], scores)
        summary["accuracy" + suffix] = metrics.accuracy(outputs["label"], scores)
    return summary

  # ---- data ----

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return pipelines.tagging_train_iterator(
        data_source(self.dataset, "train"), clip_samples=self._clip_samples(self.config.data.clip_seconds),
        global_batch=self.config.batch_size, seed=self.config.seed, process_index=process_index,
        process_count=process_count, num_workers=self.config.input.get("num_workers", 0))

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return pipelines.tagging_eval_batches(
        data_source(self.dataset, "test"), clip_samples=self._clip_samples(self.config.data.eval_clip_seconds),
        global_batch=self.config.get("eval_batch_size", self.config.batch_size), process_index=process_index,
        process_count=process_count)
