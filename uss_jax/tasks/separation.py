"""Query-based universal sound separation (Kong et al., bytedance/uss; seed 000's ResUNet30 baseline).

A ResUNet30 separates ``mixture`` conditioned on the latent source embedding of a query, computed by a FROZEN sound
event detector (the PANNs Cnn14 of a tagging run of this project, ``config.query.workdir``) from the target's anchor
segment itself during training (oracle embedding), L1 waveform loss. Data: SED anchor segments mined once with the
query net over the dataset (``data_pipelines.anchors``), class-balanced pairs of different classes, energy matched
(``data_pipelines.pipelines.separation_train_iterator``); or, with ``config.data.anchors = 'online'``, the pairs'
whole clips are scored by the query net inside the train step and their anchor segments cut and mixed there
(``SeparationTask.online_pairs``, as bytedance/uss trains). Evaluation as the reference: a fixed set of mixtures per
class built once and stored in the workdir, SDR / SDRi (bytedance/uss ``calculate_sdr``) with the oracle embedding
and with the class-average embedding (mean query-net embedding over the class's training anchor segments), median
per class, mean over classes; a per-class table and a bar plot are written to the workdir.
"""

from __future__ import annotations

import csv
import io as _text_io
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import anchors as anchors_lib
from data_pipelines import mixing, pipelines
from uss_jax import io, losses, metrics
from uss_jax.models import cnn14, registry
from uss_jax.models import uss as uss_lib
from uss_jax.tasks.base import Task
from uss_jax.tasks.tagging import data_source, load_mam_encoder, prepare_labeled_audio, put_encoder_weights
from uss_jax.train import checkpoint as checkpoint_lib


NUM_EXAMPLE_CLASSES = 4  # classes whose first evaluation mixture is written as example audio
QUERY_CONFIG_FILE = "query_net_config.json"  # older runs: the query net's config (now in system_context.json)


# The system (separator + frozen query net) lives with the models (uss_jax.models.uss), built by the registry.
QueryConditionedSeparator = uss_lib.QueryConditionedSeparator


def build_separation_model(config: ml_collections.ConfigDict, query_config: ml_collections.ConfigDict,
                           num_classes: int, rngs: nnx.Rngs) -> QueryConditionedSeparator:
  """The task's model for a query net config and class count (``registry.build_system`` with a minimal context)."""
  return registry.build_system(config, {"query_net_config": query_config.to_dict(), "num_classes": num_classes}, rngs)


def load_query_net(query_workdir: str, step: int | None = None) -> tuple[cnn14.Cnn14, ml_collections.ConfigDict]:
  """The Cnn14 of a tagging run (its latest checkpoint by default), in eval mode, and that run's config.

  Raises:
    FileNotFoundError: ``query_workdir`` has no checkpoint.
  """
  restored, tag_config, step = checkpoint_lib.restore_run_model(
      query_workdir, step, field="config.query.workdir",
      hint="train a tagger first: uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=...")
  num_classes = int(np.asarray(restored["fc_audioset"]["kernel"]).shape[-1])
  model = uss_lib.cnn14_from_config(tag_config, num_classes, nnx.Rngs(0))
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  model.eval()
  logging.info("query net: Cnn14 %s, %d classes, from %s step %d", tuple(tag_config.model.channels), num_classes,
               query_workdir, step)
  return model, tag_config


class SeparationTask(Task):
  """Config: ``data`` (labeled audio + ``segment_seconds``, ``eval_pairs_per_class``), ``query`` (``workdir``),
  ``model`` (ResUNet30 ``channels``, ``n_fft``, ``hop_length``)."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self._prepared = False

  # ---- one-time preparation: dataset, query net, anchors, class embeddings, eval set ----

  def prepare(self) -> None:
    if self._prepared:
      return
    c = self.config
    self.dataset = prepare_labeled_audio(c, self.workdir)
    self.query_net, self.query_config = load_query_net(c.query.workdir, c.query.get("step"))
    if self.query_config.data.sample_rate != c.data.sample_rate:
      raise ValueError(f"config.data.sample_rate={c.data.sample_rate} differs from the query net's "
                       f"{self.query_config.data.sample_rate} Hz")
    self.mae_weights, mae_context = self._mae_encoder()
    # What the config alone does not say, so that the registry (and uss-jax separate / info) rebuilds the model from
    # this workdir: the query net's config and class count, the identity of its weights, the A-MAE encoder.
    self.context = {
        "query_net_config": self.query_config.to_dict(), "num_classes": self.query_net.num_classes,
        "condition_space": uss_lib.weights_digest(nnx.state(self.query_net).to_pure_dict()) + (
            "/clipwise" if c.query.get("output", "embedding") == "clipwise_output" else ""),
        "class_names": self.class_names, **mae_context}
    io.write_on_process0("system_context", lambda: registry.write_context(self.workdir, self.context))
    self.segment_samples = int(round(c.data.segment_seconds * c.data.sample_rate))
    self.anchor_mode = anchors_lib.check_anchor_mode(c.data.get("anchors", "offline"))
    # Both modes mine the index once: its rows are the class-balanced sampler's (clip, class) pairs, the test split's
    # segments make the stored evaluation set and the train split's the class-average queries. 'online' then cuts the
    # training segments inside the train step with the query net (bytedance/uss); 'offline' reads them from the index.
    self.anchors = {split: self._mine(split) for split in ("train", "test")}
    meta = anchors_lib.read_anchor_metadata(io.join(self.workdir, "anchors", "train"))
    self.frame_hop, self.frame_offset = int(meta["hop_samples"]), int(meta["frame_offset"])
    self.class_embeddings = self._class_embeddings()
    self.eval_set = self._eval_set()
    self._prepared = True

  def _mine(self, split: str) -> anchors_lib.AnchorIndex:
    out_dir = io.join(self.workdir, "anchors", split)
    anchors_lib.mine_anchors(
        self.query_net, data_source(self.dataset, split), sample_rate=self.config.data.sample_rate,
        segment_seconds=self.config.data.segment_seconds, batch_size=self.config.data.get("mining_batch_size", 8),
        chunk_size=self.config.data.get("mining_chunk_size", 512), out_dir=out_dir,
        process_index=jax.process_index(), process_count=jax.process_count(),
        detector_name=f"query_net:{self.config.query.workdir}")
    io.barrier(f"anchors_{split}")  # every host's chunks are written before any host reads the whole index
    return anchors_lib.load_anchor_index(out_dir)

  def _embed_batches(self, segments: np.ndarray, batch: int = 16) -> np.ndarray:
    key = self.config.query.get("output", "embedding")
    fn = jax.jit(lambda g, s, x: nnx.merge(g, s)(x)[key])
    graphdef, state = nnx.split(self.query_net)
    out = [np.asarray(fn(graphdef, state, jnp.asarray(segments[i:i + batch]))) for i in range(0, len(segments), batch)]
    return np.concatenate(out) if out else np.zeros((0, self.query_net.embedding_dim), np.float32)

  def _stored_settings(self, split: str) -> dict:
    """What a stored class table / eval set depends on: the query net (weights digest, output) and the anchor index."""
    meta = anchors_lib.read_anchor_metadata(io.join(self.workdir, "anchors", split))
    return {"condition_space": self.context["condition_space"], "segment_samples": self.segment_samples,
            "anchors_detector_sha256": meta.get("detector_sha256"), "anchors_num_clips": meta.get("num_clips")}

  def _class_embeddings(self) -> np.ndarray:
    """(classes, embedding_dim): mean query-net embedding over each class's training anchor segments; stored in
    ``<workdir>/class_embeddings.npz`` (process 0 computes and writes it atomically, every process reads it), with
    the settings it was computed with (refused when they differ)."""
    path = io.join(self.workdir, "class_embeddings.npz")
    names = np.array(self.class_names)
    settings = {"class_names": list(self.class_names), **self._stored_settings("train")}

    def load(p):
      stored = io.load_npz(p)
      io.check_settings(p, json.loads(str(stored.get("settings_json", "{}"))), settings, what="class-embedding table")
      return np.asarray(stored["embeddings"], np.float32)

    def save(p, table):
      io.save_npz_atomic(p, class_names=names, embeddings=table, settings_json=np.array(json.dumps(settings)))

    return io.build_or_load("class_embeddings", path, self._compute_class_embeddings, save, load)

  def _compute_class_embeddings(self) -> np.ndarray:
    names = self.class_names
    index, source = self.anchors["train"], data_source(self.dataset, "train")
    segments = np.stack([mixing.anchor_crop(source[int(c)]["waveform"], int(s), self.segment_samples)
                         for c, s in zip(index.clip, index.start)]).astype(np.float32)
    emb = self._embed_batches(segments)
    table = np.zeros((len(names), emb.shape[-1]), np.float32)
    for k in range(len(names)):
      rows = index.rows_of_class(k)
      if len(rows):
        table[k] = emb[rows].mean(0)
    return table

  def _eval_set(self) -> dict[str, np.ndarray]:
    """The fixed evaluation mixtures, ``<workdir>/eval_set.npz`` (``pipelines.stored_eval_set``: process 0 builds and
    writes it atomically with its settings, every process reads it; a set built with other settings is refused)."""
    pairs, seed = int(self.config.data.eval_pairs_per_class), int(self.config.data.get("eval_seed", 1234))
    settings = {"pairs_per_class": pairs, "eval_seed": seed, "normalize": False, **self._stored_settings("test")}
    return pipelines.stored_eval_set(
        io.join(self.workdir, "eval_set.npz"),
        lambda: pipelines.separation_eval_set(data_source(self.dataset, "test"), self.anchors["test"],
                                              pairs_per_class=pairs, seed=seed, segment_samples=self.segment_samples),
        settings)

  @property
  def class_names(self) -> list[str]:
    return list(self.dataset.class_names)

  # ---- the recipe ----

  def _mae_encoder(self) -> tuple[dict | None, dict]:
    """MAE-ResUNet only: the A-MAE encoder weights ``{path: array}`` and the context entries that rebuild it
    (``mae_encoder``: ``VisionTransformer`` arguments, ``mae_fbank``: ``AudioMAEFbank`` fields), from a masked-
    pretraining run (``config.model.mae.workdir``) or an AudioMAE checkpoint file (``config.model.mae.checkpoint``).

    Raises:
      ValueError: neither or both sources given. FileNotFoundError: the run / file is missing.
    """
    m = self.config.model
    if (m.get("name") or "resunet30") != "mae_resunet":
      return None, {}
    mae_cfg = m.get("mae") or {}
    workdir, path = mae_cfg.get("workdir") or "", mae_cfg.get("checkpoint") or ""
    if bool(workdir) == bool(path):
      raise ValueError("config.model.mae: give exactly one of workdir (a configs/audiomae.py run) and checkpoint "
                       "(an AudioMAE .pth / .safetensors / .npz file)")
    if workdir:
      weights, run_config, step = load_mam_encoder(workdir, mae_cfg.get("step"))
      frontend = uss_lib.frontend_from_config(run_config)
      enc = dict(run_config.model.encoder)
      frames = frontend.num_frames(int(round(run_config.data.clip_seconds * run_config.data.sample_rate)))
      enc["img_size"] = [int(frames), int(frontend.num_bins)]
      fbank = dict(run_config.frontend)
      logging.info("MAE-ResUNet: A-MAE encoder of %s step %d (%d tensors)", workdir, step, len(weights))
    else:
      from uss_jax.convert import audiomae as convert_audiomae  # pylint: disable=import-outside-toplevel
      state_dict = convert_audiomae.load_state_dict(path)
      enc = {k: (list(v) if isinstance(v, tuple) else v)
             for k, v in convert_audiomae.infer_config(state_dict).items()}
      enc.update(global_pool=False, num_classes=0)
      model = convert_audiomae.load_audiomae_checkpoint(path, strict=False, global_pool=False, num_classes=0)
      weights = {tuple(str(k) for k in p): np.asarray(v.get_value())
                 for p, v in nnx.to_flat_state(nnx.state(model))}
      fbank = {"name": "audiomae", "sample_rate": 16000, "num_mel_bins": 128, "norm_stats": "audioset"}
    return weights, {"mae_encoder": enc, "mae_fbank": fbank}

  @property
  def trainable(self):
    """The separator's parameters; a frozen MAE-ResUNet's A-MAE encoder excluded."""
    m = self.config.model
    if (m.get("name") or "resunet30") == "mae_resunet" and (m.get("mae") or {}).get("mode", "frozen") == "frozen":
      return nnx.All(nnx.Param, nnx.PathContains("separator"), nnx.Not(nnx.PathContains("encoder")))
    return nnx.All(nnx.Param, nnx.PathContains("separator"))

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    # A fresh (abstract) query net: its weights are put in by initialize_state, or restored with the checkpoint.
    return registry.build_system(self.config, self.context, rngs)

  def initialize_state(self, state, shardings):
    """Puts the tagging run's query-net weights (and MAE-ResUNet's A-MAE encoder) into a fresh state."""
    trained = nnx.state(self.query_net)
    placed = jax.tree.map(lambda v, s: jax.device_put(np.asarray(v), s), trained,
                          shardings["model"]["query_net"])
    state["model"]["query_net"] = placed
    if self.mae_weights is not None:
      sep = state["model"]["separator"]
      sep["encoder"], taken = put_encoder_weights(sep["encoder"], shardings["model"]["separator"]["encoder"],
                                                  self.mae_weights)
      logging.info("MAE-ResUNet: %d encoder variables from the pretrained A-MAE", len(taken))
    return state

  def online_pairs(self, model: QueryConditionedSeparator, batch) -> tuple[jax.Array, jax.Array]:
    """``(mixture, target)`` (batch, segment_samples) of an online batch: the frozen query net (eval mode) scores
    both whole clips of each pair, ``anchors.online_anchor_segments`` cuts each clip's anchor segment of its class
    (the offline rule, frames past a clip's end masked), and ``mixing.mix_pairs`` energy-matches the interferer."""
    clips = jnp.concatenate([batch["target_clip"], batch["interferer_clip"]])
    classes = jnp.concatenate([batch["class_id"], batch["interferer_class_id"]])
    lengths = jnp.concatenate([batch["target_samples"], batch["interferer_samples"]])
    model.query_net.eval()
    prob = jax.lax.stop_gradient(model.query_net(clips)["framewise_output"])
    frames = jnp.clip(lengths // self.frame_hop + self.frame_offset, 1, prob.shape[1])
    segments = anchors_lib.online_anchor_segments(prob, clips, classes, self.segment_samples, self.frame_hop, frames)
    b = batch["class_id"].shape[0]
    return mixing.mix_pairs(segments[:b], segments[b:], bool(self.config.data.get("normalize", True)))

  def loss(self, model, batch, rngs):
    del rngs
    if self.config.data.get("anchors", "offline") == "online":
      mixture, target = self.online_pairs(model, batch)
    else:
      mixture, target = batch["mixture"], batch["target"]
    est = model(mixture, model.embed(target))
    return losses.l1_waveform(est, target), {}

  def eval_outputs(self, model, batch):
    oracle = model(batch["mixture"], model.embed(batch["target"]))
    average = model(batch["mixture"], batch["avg_condition"])
    return {"est_oracle": oracle, "est_average": average, "mixture": batch["mixture"], "target": batch["target"],
            "class_id": batch["class_id"]}

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    ref, mix = outputs["target"], outputs["mixture"]
    result = {}
    for kind in ("oracle", "average"):
      sdr = metrics.sdr(outputs[f"est_{kind}"], ref)
      sdri = sdr - metrics.sdr(mix, ref)
      result[f"SDR_{kind}"] = metrics.per_class_summary(sdr, outputs["class_id"])["mean"]
      result[f"SDRi_{kind}"] = metrics.per_class_summary(sdri, outputs["class_id"])["mean"]
    return result

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """Offline: mixtures of anchor segments from the index. Online: pairs of whole clips (``data.clip_seconds``)."""
    if self.anchor_mode == "online":
      return pipelines.separation_online_train_iterator(
          data_source(self.dataset, "train"), self.anchors["train"],
          clip_samples=int(round(self.config.data.clip_seconds * self.config.data.sample_rate)),
          global_batch=self.config.batch_size, seed=self.config.seed, process_index=process_index,
          process_count=process_count, num_workers=self.config.input.get("num_workers", 0))
    return pipelines.separation_train_iterator(
        data_source(self.dataset, "train"), self.anchors["train"], segment_samples=self.segment_samples,
        global_batch=self.config.batch_size, seed=self.config.seed, process_index=process_index,
        process_count=process_count, num_workers=self.config.input.get("num_workers", 0),
        normalize=self.config.data.get("normalize", True))

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    keep = ("mixture", "target", "class_id")
    for batch in pipelines.eval_set_batches({k: self.eval_set[k] for k in keep},
                                            global_batch=self.config.get("eval_batch_size", self.config.batch_size),
                                            process_index=process_index, process_count=process_count):
      batch["class_id"] = batch["class_id"].astype(np.int32)
      batch["avg_condition"] = self.class_embeddings[batch["class_id"]]
      yield batch

  def write_artifacts(self, outputs: Mapping[str, np.ndarray], summary: Mapping[str, float], step: int) -> None:
    """``eval_step<N>_per_class.csv`` (median SDRi per class, oracle and average query), a bar plot PNG and example
    audio (``_write_examples``); every file through ``uss_jax.io`` (local or cloud workdir, written atomically)."""
    ref, mix = outputs["target"], outputs["mixture"]
    base = metrics.sdr(mix, ref)
    tables = {f"SDRi_{kind}": metrics.per_class_summary(metrics.sdr(outputs[f"est_{kind}"], ref) - base,
                                                        outputs["class_id"], self.class_names)
              for kind in ("oracle", "average")}
    self._write_examples(outputs)
    write_class_tables(self.workdir, step, tables,
                       bars={"SDRi_oracle": "oracle query", "SDRi_average": "class-average query"},
                       ylabel="median SDRi (dB)",
                       title=f"step {step}: mean SDRi oracle {summary['SDRi_oracle']:.2f} dB, "
                             f"average {summary['SDRi_average']:.2f} dB")

  def _write_examples(self, outputs: Mapping[str, np.ndarray], max_classes: int = NUM_EXAMPLE_CLASSES) -> None:
    """``<workdir>/examples/<class>_{mixture,target,oracle,average}.wav``: the first evaluation mixture of each of
    the first ``max_classes`` classes with its target and both estimates (float WAV at the data sample rate;
    overwritten at every evaluation)."""
    out_dir = io.join(self.workdir, "examples")
    seen = []
    for i, k in enumerate(np.asarray(outputs["class_id"]).astype(int)):
      if k in seen:
        continue
      seen.append(k)
      name = self.class_names[k]
      for kind, key in (("mixture", "mixture"), ("target", "target"), ("oracle", "est_oracle"),
                        ("average", "est_average")):
        io.write_wav_atomic(io.join(out_dir, f"{name}_{kind}.wav"), np.asarray(outputs[key][i], np.float32),
                            int(self.config.data.sample_rate))
      if len(seen) == max_classes:
        break


def write_class_tables(workdir: str, step: int, tables: Mapping[str, Mapping[str, Any]], *, bars: Mapping[str, str],
                       ylabel: str, title: str) -> None:
  """``<workdir>/eval_step<N>_per_class.csv`` and ``eval_step<N>_sdri.png`` of per-class medians.

  Args:
    workdir: the run directory (local or cloud; written atomically through ``uss_jax.io``).
    step: the evaluated step.
    tables: ``{metric name: metrics.per_class_summary(...) with class names}``, in column order; the CSV has
      ``class, mixtures, <name>_median_dB...`` (mixture counts from the first table).
    bars: ``{metric name: legend label}`` of the metrics drawn as grouped bars (dB) in the PNG.
    ylabel, title: of the plot. No plot without matplotlib.
  """
  first = next(iter(tables.values()))
  names = list(first["per_class"])
  f = _text_io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(["class", "mixtures"] + [f"{k}_median_dB" for k in tables])
  for n in names:
    w.writerow([n, first["counts"][n]] + [f"{t['per_class'][n]:.2f}" for t in tables.values()])
  io.write_text_atomic(io.join(workdir, f"eval_step{step}_per_class.csv"), f.getvalue())
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  x = np.arange(len(names))
  width = 0.8 / len(bars)
  fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4))
  for i, (k, label) in enumerate(bars.items()):
    ax.bar(x + (i - (len(bars) - 1) / 2) * width, [tables[k]["per_class"][n] for n in names], width, label=label)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(x, names, rotation=70, ha="right", fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  io.save_figure_atomic(io.join(workdir, f"eval_step{step}_sdri.png"), fig, dpi=100)
  plt.close(fig)
