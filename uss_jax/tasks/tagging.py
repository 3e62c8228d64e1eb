"""Clip-level multi-label audio tagging: the SED that mines anchor segments, and ViT fine-tuning after pretraining.

Models (``config.model.name``, ``build_tagger``):
  * ``'cnn14'`` (default): PANNs Cnn14 (``uss_jax.models.cnn14``) with its log-mel front end (Kong et al., PANNs 2020);
  * ``'vit'``: the AudioMAE fine-tuning model (Huang et al. 2022; facebookresearch/AudioMAE ``models_vit.py``,
    ``main_finetune_as.py`` / ``main_finetune_esc.py``): Kaldi fbank front end (``config.frontend``), optional
    SpecAugment stripes on the fbank in training, the ViT encoder with 2-D time / frequency token masking in training
    (``mask_t_prob`` / ``mask_f_prob``; seed 004's "SpecAugment 0.2 time / 0.2 freq"), drop path, mean pool of the
    patch tokens -> ``fc_norm`` -> linear head (``ViTTagger``);
  * ``'htsat'``: HTS-AT (``uss_jax.models.htsat.build_htsat``).
Every model returns ``logits`` and ``clipwise_output = sigmoid(logits)``, both ``(batch, classes)``.

Loss: BCE on the logits (``losses.sigmoid_bce``; soft targets under mixup, AudioMAE ``dataset.py``: waveforms and
labels mixed with the same λ ~ Beta(α, α) with probability ``config.data.mixup_prob``). Evaluation: mAP (macro over
classes with a positive, AudioSet style) and top-1 accuracy against the primary label, on a held-out split that never
shares a source recording with training, or a held-out fold (``config.data.test_fold``; ESC-50 5-fold accuracy).

Initialisation (``config.init``, ViT only): ``workdir`` = a masked-pretraining (``mam``) run of this project, whose
encoder weights (latest checkpoint, or ``step``) are put into the ViT; or ``checkpoint`` = an AudioMAE / timm file read
by ``uss_jax.convert.audiomae``. The head and ``fc_norm`` start fresh (AudioMAE: ``norm`` is dropped, head
``trunc_normal(2e-5)``). ``linear_probe=True`` trains only the head and ``fc_norm`` (the encoder stays frozen).
Layer-wise LR decay and AudioMAE's weight-decay selection: ``uss_jax.train.optim`` (``config.optimizer.layer_decay``).
"""

from __future__ import annotations

import csv
import dataclasses
import io as _text_io
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import pipelines, pretraining
from uss_jax import io, losses, metrics
from uss_jax.audio import frontends
from uss_jax.models import cnn14, vit
from uss_jax.models import uss as uss_models
from uss_jax.tasks.base import Task
from uss_jax.train import checkpoint as checkpoint_lib
from uss_jax.train import optim

MODELS = ("cnn14", "vit", "htsat")
DATASETS = ("labeled_audio", "esc50")


# --------------------------------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FoldSplits:
  """A built dataset read through other split names: ``split_aliases['train' | 'test']`` (ESC-50 folds)."""
  builder: Any
  split_aliases: Mapping[str, str]

  @property
  def data_dir(self) -> str:
    return self.builder.data_dir

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.builder.class_names)


def prepare_labeled_audio(config, workdir: str):
  """Builds (process 0 first, then the others) and opens the dataset named by ``config.data``.

  ``config.data.dataset``: ``'labeled_audio'`` (default; a folder + CSV, ``data_pipelines.builders.labeled_audio``)
  or ``'esc50'`` (``data_pipelines.builders.esc50``; ``esc50_dir`` = a local ESC-50-master copy, '' = download).
  ``config.data.test_fold`` (0 = none): the held-out fold. ESC-50 (a fold in 1..5 is required): train on the other
  four folds, test on this one (``esc50.cross_validation_splits``). Labeled folder: the CSV's ``fold`` column must
  exist; rows of that fold form ``test`` (``holdout_folds``), stored under a per-fold config name so that the folds
  can share one ``tfds_dir``. Without a fold: the builder's own split (CSV split column or group holdout).

  Returns:
    a builder with ``data_dir`` and ``class_names`` (``FoldSplits`` for ESC-50); read it with ``data_source``.

  Raises:
    ValueError: an unknown ``dataset``, or ESC-50 without a fold in 1..5.
  """
  d = config.data
  # tfds / array_record open the dataset files themselves: they get the native spelling (a URL stays a URL).
  tfds_dir = io.native(d.get("tfds_dir") or io.join(workdir, "tfds"))
  kind = d.get("dataset", "labeled_audio") or "labeled_audio"
  fold = int(d.get("test_fold", 0) or 0)
  if kind not in DATASETS:
    raise ValueError(f"config.data.dataset: unknown dataset {kind!r}; expected one of {DATASETS}")

  def build():
    if kind == "esc50":
      from data_pipelines.builders import esc50  # pylint: disable=import-outside-toplevel
      train, test = esc50.cross_validation_splits(fold)
      builder = esc50.build_esc50(d.get("esc50_dir") or None, tfds_dir, d.sample_rate)
      return FoldSplits(builder, {"train": train, "test": test})
    from data_pipelines.builders import labeled_audio  # pylint: disable=import-outside-toplevel
    options = {}
    if fold:
      options = {"holdout_folds": (str(fold),), "config_name": f"sr{d.sample_rate}_int16_fold{fold}"}
    return labeled_audio.build_labeled_audio(
        audio_dir=d.audio_dir, csv_path=d.csv_path, data_dir=tfds_dir, sample_rate=d.sample_rate,
        holdout_fraction=d.get("holdout_fraction", 0.2), **options)

  if kind == "esc50" and not 1 <= fold <= 5:
    raise ValueError(f"config.data.test_fold: ESC-50 needs the held-out fold in 1..5, got {fold}")
  if jax.process_count() > 1:  # process 0 builds, the others open the finished build after the barrier
    built = []
    io.write_on_process0("labeled_audio_built", lambda: built.append(build()))
    return built[0] if built else build()
  return build()


def data_source(dataset, split: str):
  """A picklable random-access source of a built split (grain worker processes receive it by pickling).

  ``split`` is ``'train'`` / ``'test'`` (mapped to fold names for ``FoldSplits``) or any split name of the dataset.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  split = dict(getattr(dataset, "split_aliases", {})).get(split, split)
  return tfds.builder_from_directory(dataset.data_dir).as_data_source(split)


SAMPLE_WEIGHTS_FILE = "sample_weights_train.npy"  # cached label-frequency weights of the train split


def train_sample_weights(config, source, workdir: str) -> np.ndarray:
  """(clips,) weighted-sampler weights of the train split, in ``source`` order.

  ``config.data.weight_csv`` (AudioMAE's format: one weight per line, in the train split's order) when set; otherwise
  ``augment.label_frequency_weights`` of the split's labels, computed with one pass over ``source`` and cached in
  ``<workdir>/sample_weights_train.npy`` (recomputed if the clip count changed).

  Raises:
    ValueError: the weight file does not have one finite, non-negative value per clip (the message names the file).
  """
  from data_pipelines import augment  # pylint: disable=import-outside-toplevel
  path = config.data.get("weight_csv", "") or ""
  n = len(source)
  if path:
    try:
      weights = np.loadtxt(_text_io.StringIO(io.read_text(path)), delimiter=",", ndmin=1, dtype=np.float64)
    except (OSError, ValueError) as e:
      raise ValueError(f"config.data.weight_csv: cannot read {path}: {e}") from e
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
      raise ValueError(f"config.data.weight_csv: {path} must hold {n} finite non-negative weights (one per train "
                       f"clip), got shape {weights.shape}")
    return weights
  cache = io.join(workdir, SAMPLE_WEIGHTS_FILE)
  if io.exists(cache):
    weights = np.load(_text_io.BytesIO(io.read_bytes(cache)), allow_pickle=False)
    if weights.shape == (n,):
      return weights
  labels = np.stack([np.asarray(source[i]["labels"], np.float32) for i in range(n)])
  weights = augment.label_frequency_weights(labels)
  if jax.process_index() == 0:  # every process computes the same weights; process 0 caches them atomically
    buf = _text_io.BytesIO()
    np.save(buf, weights)
    io.write_bytes_atomic(cache, buf.getvalue())
  return weights


class LabeledAudioTask(Task):
  """Base of the tasks that read a labeled folder + CSV (``config.data``): the dataset, its classes, clip lengths."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self._dataset = None

  @property
  def dataset(self):
    if self._dataset is None:
      self._dataset = prepare_labeled_audio(self.config, self.workdir)
    return self._dataset

  def prepare(self) -> None:
    _ = self.dataset

  @property
  def class_names(self) -> list[str]:
    return list(self.dataset.class_names)

  def _clip_samples(self, seconds: float) -> int:
    return int(round(seconds * self.config.data.sample_rate))


# --------------------------------------------------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------------------------------------------------


def _augment_key(rngs: nnx.Rngs | None) -> jax.Array:
  for stream in ("augment", "default", "dropout"):
    if rngs is not None and stream in rngs:
      return rngs[stream]()
  raise ValueError("SpecAugment in train mode needs rngs with a stream 'augment', 'default' or 'dropout'")


class ViTTagger(nnx.Module):
  """AudioMAE fine-tuning model: waveform -> fbank -> [SpecAugment] -> ViT (global pool, head) -> logits.

  Forward (train vs eval via ``model.train()`` / ``model.eval()``):
    1. ``fbank = frontend(waveform)`` ``(batch, frames, bins)`` (AudioMAE: Kaldi fbank, ``(x - mean) / (2 std)``);
    2. train mode with ``spec_augment``: ``frontends.spec_augment(fbank, **spec_augment)`` with the stripes set to
       ``mask_value`` (AudioMAE ``dataset.py`` masks the log-fbank with 0 BEFORE normalising, torchaudio
       ``FrequencyMasking(freqm)`` / ``TimeMasking(timem)``, one stripe each; the default ``mask_value`` is that 0
       after the front end's normalisation, ``-mean / (2 std)``);
    3. ``encoder(fbank)``: ``vit.VisionTransformer`` with ``global_pool=True`` (its own 2-D token masking and drop
       path in train mode).

  Output dict: ``logits`` ``(batch, classes)`` float32, ``clipwise_output`` = ``sigmoid(logits)``, ``embedding``
  ``(batch, D)`` (the ``fc_norm`` of the mean patch token).

  Args:
    frontend: waveform ``(batch, samples)`` -> ``(batch, frames, bins)`` (a ``uss_jax.audio.frontends`` front end).
    encoder: the ViT, ``global_pool=True`` and ``num_classes > 0``.
    spec_augment: keyword arguments of ``frontends.spec_augment`` (``time_mask_width`` / ``time_mask_ratio``,
      ``num_time_masks``, ``freq_mask_width`` / ``freq_mask_ratio``, ``num_freq_masks``, ``mask_value``), or None.

  Raises:
    ValueError: an encoder without global pool or head.
  """

  def __init__(self, frontend: Any, encoder: vit.VisionTransformer, spec_augment: Mapping[str, Any] | None = None):
    if not encoder.global_pool or encoder.head is None:
      raise ValueError("ViTTagger needs a VisionTransformer with global_pool=True and num_classes > 0")
    self.frontend = frontend
    self.encoder = encoder
    self.spec_augment = dict(spec_augment) if spec_augment else None
    self.num_classes = encoder.num_classes
    self.embedding_dim = encoder.embed_dim
    self.deterministic = False  # flipped by model.train() / model.eval()

  def __call__(self, waveform: jax.Array, *, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """``waveform`` ``(batch, samples)`` -> outputs (class docstring); ``rngs`` needed in train mode."""
    fbank = self.frontend(waveform)
    if not self.deterministic and self.spec_augment:
      fbank = frontends.spec_augment(fbank, _augment_key(rngs), **self.spec_augment)
    out = self.encoder(fbank, rngs=rngs)
    logits = out["logits"].astype(jnp.float32)
    return {"logits": logits, "clipwise_output": jax.nn.sigmoid(logits), "embedding": out["pooled"]}


def build_frontend(config):
  """The front end of ``config.frontend`` (``uss_jax.audio.frontends.get_frontend``)."""
  fe = dict(config.frontend)
  return frontends.get_frontend(fe.pop("name"), **fe)


def spec_augment_options(config, frontend) -> dict[str, Any] | None:
  """``config.model.spec_augment`` as ``frontends.spec_augment`` keyword arguments, or None when off.

  Accepts False / None / {} (off) or a dict of ``time_mask_width`` | ``time_mask_ratio``, ``num_time_masks`` (1),
  ``freq_mask_width`` | ``freq_mask_ratio``, ``num_freq_masks`` (1), ``mask_value`` (default: a log-fbank 0 after the
  front end's normalisation, ``-mean / (2 std)``, as AudioMAE masks before normalising; 0 without stats).
  """
  spec = config.model.get("spec_augment", None)
  if not spec:
    return None
  spec = {k: v for k, v in dict(spec).items() if v is not None}
  spec.setdefault("num_time_masks", 1)
  spec.setdefault("num_freq_masks", 1)
  if "mask_value" not in spec:
    stats = getattr(frontend, "stats", None)
    spec["mask_value"] = float(-stats[0] / (2.0 * stats[1])) if stats else 0.0
  return spec


def build_vit_tagger(config, num_classes: int, rngs: nnx.Rngs) -> ViTTagger:
  """The ``ViTTagger`` of ``config.model`` (``name='vit'``).

  ``config.model.encoder``: ``size`` (a ``vit.VIT_PRESETS`` key) and any ``VisionTransformer`` argument, as in the
  pretraining config (``configs/audiomae.py``); ``img_size`` defaults to the front end's ``(frames, bins)`` of a
  ``config.data.clip_seconds`` clip. ``config.model``: ``drop_path`` (0.1), ``mask_t_prob`` / ``mask_f_prob`` (2-D
  token masking in training), ``spec_augment`` (``spec_augment_options``). Compute dtype: ``config.compute_dtype``.
  """
  m = config.model
  frontend = build_frontend(config)
  enc_cfg = dict(m.encoder)
  size = enc_cfg.pop("size", "base")
  if "img_size" not in enc_cfg or not enc_cfg["img_size"]:
    frames = frontend.num_frames(int(round(config.data.clip_seconds * config.data.sample_rate)))
    enc_cfg["img_size"] = (frames, frontend.num_bins)
  encoder = vit.build_vit(
      size, global_pool=True, num_classes=num_classes, drop_path=float(m.get("drop_path", 0.1)),
      mask_t_prob=float(m.get("mask_t_prob", 0.0)), mask_f_prob=float(m.get("mask_f_prob", 0.0)),
      dtype=jnp.dtype(config.get("compute_dtype", "float32")), rngs=rngs, **enc_cfg)
  return ViTTagger(frontend, encoder, spec_augment_options(config, frontend))


def build_cnn14(config, num_classes: int, rngs: nnx.Rngs) -> cnn14.Cnn14:
  """The Cnn14 of ``config.model`` with the front end of ``config.frontend`` (``uss_jax.models.uss.cnn14_from_config``)."""
  return uss_models.cnn14_from_config(config, num_classes, rngs)


def build_tagger(config, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
  """The tagging model named by ``config.model.name``: ``'cnn14'`` (default), ``'vit'`` or ``'htsat'``.

  Every model maps a waveform ``(batch, samples)`` to a dict with ``logits`` and ``clipwise_output``
  ``(batch, num_classes)``.

  Raises:
    ValueError: an unknown model name.
  """
  name = config.model.get("name", "cnn14") or "cnn14"
  if name == "cnn14":
    return build_cnn14(config, num_classes, rngs)
  if name == "vit":
    return build_vit_tagger(config, num_classes, rngs)
  if name == "htsat":
    from uss_jax.models import htsat  # pylint: disable=import-outside-toplevel
    return htsat.build_htsat(config, num_classes, rngs)
  raise ValueError(f"config.model.name: unknown tagging model {name!r}; expected one of {MODELS}")


# --------------------------------------------------------------------------------------------------------------------
# Pretrained encoder weights.
# --------------------------------------------------------------------------------------------------------------------


def _flatten_pure(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten_pure(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = np.asarray(v)
  return out


def pretrained_encoder_tree(model: Mapping[str, Any]) -> Mapping[str, Any] | None:
  """The ViT encoder subtree of a masked-pretraining model's state: ``encoder`` (objectives audiomae / supmam) or
  ``student.encoder`` (mam_clap / supmam_clap, whose model also holds the frozen teacher); None if neither."""
  if isinstance(model.get("encoder"), Mapping):
    return model["encoder"]
  student = model.get("student")
  return student.get("encoder") if isinstance(student, Mapping) else None


def load_mam_encoder(workdir: str, step: int | None = None) -> tuple[dict[tuple[str, ...], np.ndarray],
                                                                      ml_collections.ConfigDict, int]:
  """The ViT encoder weights of a masked-pretraining run of this project (``task='mam'``).

  Reads ``<workdir>/checkpoints/<step>/state`` (the latest step by default) as numpy, without its optimizer.

  Returns:
    ``({path: array}, run config, step)``; paths are the encoder's variable paths as strings, e.g.
    ``('blocks', '0', 'attn', 'qkv', 'kernel')``.

  Raises:
    FileNotFoundError: no (finished) checkpoint, or the checkpoint holds no ``model/encoder``.
  """
  model, run_config, step = checkpoint_lib.restore_run_model(
      workdir, step, field="config.init.workdir",
      hint="pretrain first: uss-jax train --config=configs/audiomae.py:smoke --workdir=...")
  encoder = pretrained_encoder_tree(model)
  if not isinstance(encoder, Mapping):
    raise FileNotFoundError(f"config.init.workdir: {workdir} step {step} holds no model/encoder (not a mam run?)")
  return _flatten_pure(encoder), run_config, step


def load_audiomae_encoder(path: str, config, num_classes: int) -> dict[tuple[str, ...], np.ndarray]:
  """Encoder weights from an AudioMAE / timm checkpoint file (``uss_jax.convert.audiomae``), as ``{path: array}``.

  As AudioMAE ``main_finetune_as.py``: a ``head`` of another shape is dropped, the checkpoint is loaded with
  ``strict=False`` (``norm`` of a pretraining checkpoint is skipped); variables the file lacks (``fc_norm``, ``head``)
  are not returned, so they keep the tagger's own initialisation.
  """
  from uss_jax.convert import audiomae  # pylint: disable=import-outside-toplevel

  state_dict = audiomae.load_state_dict(path)
  model = build_vit_tagger(config, num_classes, nnx.Rngs(0)).encoder
  if "head.weight" in state_dict and np.shape(state_dict["head.weight"])[0] != num_classes:
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
  report = audiomae.convert_audiomae(state_dict, model, strict=False)
  kept = {k.split(".")[0] for k in report["kept"]}
  logging.info("init from %s: loaded %d tensors; skipped %s; kept fresh %s", path, len(report["loaded"]),
               report["skipped"], sorted(kept))
  flat = {tuple(str(k) for k in p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
  return {p: v for p, v in flat.items() if p[0] not in kept}


# Encoder variables a fine-tuning run never takes from a pretraining run: the fresh pooling norm and head.
FRESH_IN_FINE_TUNING = ("fc_norm", "head")


def put_encoder_weights(encoder_state: Any, encoder_shardings: Any,
                        weights: Mapping[tuple[str, ...], np.ndarray]) -> tuple[Any, list[str]]:
  """Replaces the variables of ``encoder_state`` that ``weights`` holds (except ``fc_norm`` / ``head``).

  Args:
    encoder_state: the tagger encoder's ``nnx.State`` (sharded arrays).
    encoder_shardings: the same tree with ``NamedSharding`` values.
    weights: ``{path: array}`` (``load_mam_encoder`` / ``load_audiomae_encoder``).

  Returns:
    ``(new state, names of the variables taken from weights)``.

  A fixed ``pos_embed`` table the weights lack keeps its value (the sin-cos table a ``'sincos'`` encoder generates).

  Raises:
    ValueError: a variable outside ``fc_norm`` / ``head`` / ``pos_embed`` without a value in ``weights``, or a shape
      mismatch.
  """
  taken, missing, bad = [], [], []

  def put(path, value, sharding):
    names = optim.path_names(path)
    if names and names[-1] == "value":
      names = names[:-1]
    if names[0] in FRESH_IN_FINE_TUNING:
      return value
    if names not in weights:
      if names[0] != "pos_embed":  # a fixed table the tagger fills with the same sin-cos the encoder generated
        missing.append("/".join(names))
      return value
    new = weights[names]
    if tuple(new.shape) != tuple(value.shape):
      bad.append(f"{'/'.join(names)}: pretrained {tuple(new.shape)} vs model {tuple(value.shape)}")
      return value
    taken.append("/".join(names))
    return jax.device_put(np.asarray(new, dtype=value.dtype), sharding)

  new_state = jax.tree_util.tree_map_with_path(put, encoder_state, encoder_shardings)
  if missing or bad:
    raise ValueError(f"the pretrained encoder does not match the fine-tuning ViT: no value for {missing}; "
                     f"shape mismatches {bad} (use the pretraining run's model.encoder settings)")
  return new_state, taken


# --------------------------------------------------------------------------------------------------------------------
# The task.
# --------------------------------------------------------------------------------------------------------------------


class TaggingTask(LabeledAudioTask):
  """Multi-label tagging on a labeled folder + CSV or ESC-50 (config: ``data``, ``frontend``, ``model``, ``init``).

  Raises (at construction):
    ValueError: ``config.init`` / ``linear_probe`` with a model other than ``'vit'``, or both ``init.workdir`` and
      ``init.checkpoint``.
  """

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.model_name = config.model.get("name", "cnn14") or "cnn14"
    init = config.get("init", None) or {}
    self.init_workdir = init.get("workdir", "") or ""
    self.init_checkpoint = init.get("checkpoint", "") or ""
    self.init_step = init.get("step", -1)
    self.linear_probe = bool(init.get("linear_probe", False))
    if (self.init_workdir or self.init_checkpoint or self.linear_probe) and self.model_name != "vit":
      raise ValueError(f"config.init (pretrained weights / linear probe) needs model.name='vit', got "
                       f"{self.model_name!r}")
    if self.init_workdir and self.init_checkpoint:
      raise ValueError("config.init: give workdir (a mam run) or checkpoint (an AudioMAE file), not both")
    if self.linear_probe:
      # Only the pooling norm and the head train; the encoder stays as initialised (frozen, still checkpointed).
      self.trainable = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in FRESH_IN_FINE_TUNING)))
    self._pretrained: dict[tuple[str, ...], np.ndarray] | None = None

  def prepare(self) -> None:
    super().prepare()
    if self._pretrained is not None:
      return
    if self.init_workdir:
      step = None if self.init_step is None or int(self.init_step) < 0 else int(self.init_step)
      self._pretrained, run_config, step = load_mam_encoder(self.init_workdir, step)
      if run_config.get("frontend") and dict(run_config.frontend) != self.config.frontend.to_dict():
        logging.warning("the pretraining run's front end %s differs from config.frontend %s",
                        dict(run_config.frontend), self.config.frontend.to_dict())
      logging.info("init: encoder of %s step %d (%d arrays)", self.init_workdir, step, len(self._pretrained))
    elif self.init_checkpoint:
      self._pretrained = load_audiomae_encoder(self.init_checkpoint, self.config, len(self.class_names))

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return build_tagger(self.config, len(self.class_names), rngs)

  def initialize_state(self, state, shardings):
    """Puts the pretrained encoder weights (``config.init``) into a freshly initialised state."""
    if not self._pretrained:
      return state
    new, taken = put_encoder_weights(state["model"]["encoder"], shardings["model"]["encoder"], self._pretrained)
    state["model"]["encoder"] = new
    logging.info("init: %d encoder variables from the pretrained weights", len(taken))
    return state

  def weight_decay_mask(self, params):
    if self.model_name == "vit":
      return optim.vit_weight_decay_mask(params)
    return super().weight_decay_mask(params)

  def loss(self, model, batch, rngs):
    out = model(batch["waveform"], rngs=rngs)
    loss = losses.sigmoid_bce(out["logits"], batch["labels"])
    return loss, {}

  def eval_outputs(self, model, batch):
    out = model(batch["waveform"])
    return {"scores": out["clipwise_output"], "labels": batch["labels"], "label": batch["label"]}

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {
        "mAP": metrics.mean_average_precision(outputs["labels"], outputs["scores"]),
        "accuracy": metrics.accuracy(outputs["label"], outputs["scores"]),
        "num_clips": float(len(outputs["label"])),
    }

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """Random crops with multi-hot labels; optional mixup (``config.data.mixup_alpha > 0``, ``mixup_prob``), roll /
    gain augmentation (``data.roll_mag_aug``) and the weighted sampler (``data.weighted_sampler``, epochs of
    ``config.train_clips`` draws, ``data.sampler_replacement``; weights: ``train_sample_weights``)."""
    d = self.config.data
    common = dict(clip_samples=self._clip_samples(d.clip_seconds), global_batch=self.config.batch_size,
                  seed=self.config.seed, process_index=process_index, process_count=process_count,
                  num_workers=self.config.input.get("num_workers", 0))
    source = data_source(self.dataset, "train")
    mixup_alpha = float(d.get("mixup_alpha", 0.0) or 0.0)
    roll_mag, weighted = bool(d.get("roll_mag_aug", False)), bool(d.get("weighted_sampler", False))
    if mixup_alpha > 0 or roll_mag or weighted:
      sampling = {}
      if weighted:
        sampling = dict(sample_weights=train_sample_weights(self.config, source, self.workdir),
                        epoch_len=int(self.config.get("train_clips", 0) or len(source)),
                        replacement=bool(d.get("sampler_replacement", True)))
      return pretraining.pretraining_train_iterator(source, mixup_alpha=mixup_alpha,
                                                  mixup_prob=float(d.get("mixup_prob", 1.0)), roll_mag=roll_mag,
                                                  **sampling, **common)
    return pipelines.tagging_train_iterator(source, **common)

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return pipelines.tagging_eval_batches(
        data_source(self.dataset, "test"), clip_samples=self._clip_samples(self.config.data.eval_clip_seconds),
        global_batch=self.config.get("eval_batch_size", self.config.batch_size), process_index=process_index,
        process_count=process_count)

  def write_artifacts(self, outputs: Mapping[str, np.ndarray], summary: Mapping[str, float], step: int) -> None:
    """``<workdir>/eval_step<N>_per_class.csv``: average precision and number of positives per class (through
    ``uss_jax.io``: local or cloud workdir, written atomically)."""
    _, ap = metrics.mean_average_precision(outputs["labels"], outputs["scores"], return_per_class=True)
    f = _text_io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["class", "positives", "average_precision"])
    for name, positives, value in zip(self.class_names, outputs["labels"].sum(0), ap):
      w.writerow([name, int(positives), "" if np.isnan(value) else f"{value:.4f}"])
    io.write_text_atomic(io.join(self.workdir, f"eval_step{step}_per_class.csv"), f.getvalue())
