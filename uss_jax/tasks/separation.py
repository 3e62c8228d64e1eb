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
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from data_pipelines import anchors as anchors_lib
from data_pipelines import mixing, pipelines
from uss_jax import losses, metrics
from uss_jax.models import cnn14, resunet
from uss_jax.tasks.base import Task
from uss_jax.tasks.tagging import build_cnn14, data_source, prepare_labeled_audio
from uss_jax.train import checkpoint as checkpoint_lib


NUM_EXAMPLE_CLASSES = 4  # classes whose first evaluation mixture is written as example audio
QUERY_CONFIG_FILE = "query_net_config.json"  # the query net's (tagging run's) config, written by prepare()


class QueryConditionedSeparator(nnx.Module):
  """ResUNet30 separator + the frozen query net whose embedding conditions it (``trainable`` = the separator)."""

  def __init__(self, separator: resunet.ResUNet30, query_net: cnn14.Cnn14):
    self.separator = separator
    self.query_net = query_net

  def embed(self, query: jax.Array) -> jax.Array:
    """Latent source embedding (batch, embedding_dim) of query audio (batch, samples); no gradient, eval mode."""
    self.query_net.eval()
    return jax.lax.stop_gradient(self.query_net(query)["embedding"])

  def __call__(self, mixture: jax.Array, condition: jax.Array) -> jax.Array:
    """Separated waveform (batch, samples) of ``mixture`` (batch, samples) for ``condition`` (batch, embedding_dim)."""
    return self.separator(mixture, condition)["waveform"]


def build_separation_model(config: ml_collections.ConfigDict, query_config: ml_collections.ConfigDict,
                           num_classes: int, rngs: nnx.Rngs) -> QueryConditionedSeparator:
  """The ``QueryConditionedSeparator`` of a separation config (the task's model; also rebuilt by inference).

  Args:
    config: the separation run's config (``model.channels``, ``model.n_fft``, ``model.hop_length``,
      ``model.output_init``, ``model.bn_momentum``; ``compute_dtype``).
    query_config: the query net's (tagging run's) config, for ``build_cnn14``.
    num_classes: the query net's class count (its ``fc_audioset`` width).
    rngs: initialisation RNG streams (use under ``nnx.eval_shape`` for an abstract model).

  Returns:
    ``QueryConditionedSeparator(ResUNet30(condition_size = the query net's embedding size), Cnn14)``.
  """
  embedding_dim = nnx.eval_shape(lambda: build_cnn14(query_config, num_classes, nnx.Rngs(0))).embedding_dim
  m = config.model
  # The separator draws its initial values from ``rngs`` first, then the query net (whose values are replaced).
  separator = resunet.ResUNet30(
      condition_size=embedding_dim, channels=tuple(m.channels), n_fft=m.n_fft, hop_length=m.hop_length,
      output_init=m.get("output_init", "reference"), bn_momentum=m.get("bn_momentum", 0.01),
      dtype=jnp.dtype(config.get("compute_dtype", "float32")), rngs=rngs)
  return QueryConditionedSeparator(separator, build_cnn14(query_config, num_classes, rngs))


def load_query_net(query_workdir: str, step: int | None = None) -> tuple[cnn14.Cnn14, ml_collections.ConfigDict]:
  """The Cnn14 of a tagging run (its latest checkpoint by default), in eval mode, and that run's config.

  Raises:
    FileNotFoundError: ``query_workdir`` has no checkpoint.
  """
  restored, tag_config, step = checkpoint_lib.restore_run_model(
      query_workdir, step, field="config.query.workdir",
      hint="train a tagger first: uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=...")
  num_classes = int(np.asarray(restored["fc_audioset"]["kernel"]).shape[-1])
  model = build_cnn14(tag_config, num_classes, nnx.Rngs(0))
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

  trainable = nnx.All(nnx.Param, nnx.PathContains("separator"))

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
    if jax.process_index() == 0 and "://" not in self.workdir:
      # The query net's config beside the checkpoint, so that inference (uss_jax/inference.py) can rebuild the
      # model from this workdir alone.
      os.makedirs(self.workdir, exist_ok=True)
      with open(os.path.join(self.workdir, QUERY_CONFIG_FILE), "w") as f:
        f.write(self.query_config.to_json(indent=1))
    self.segment_samples = int(round(c.data.segment_seconds * c.data.sample_rate))
    self.anchor_mode = anchors_lib.check_anchor_mode(c.data.get("anchors", "offline"))
    # Both modes mine the index once: its rows are the class-balanced sampler's (clip, class) pairs, the test split's
    # segments make the stored evaluation set and the train split's the class-average queries. 'online' then cuts the
    # training segments inside the train step with the query net (bytedance/uss); 'offline' reads them from the index.
    self.anchors = {split: self._mine(split) for split in ("train", "test")}
    meta = anchors_lib.read_anchor_metadata(os.path.join(self.workdir, "anchors", "train"))
    self.frame_hop, self.frame_offset = int(meta["hop_samples"]), int(meta["frame_offset"])
    self.class_embeddings = self._class_embeddings()
    self.eval_set = self._eval_set()
    self._prepared = True

  def _mine(self, split: str) -> anchors_lib.AnchorIndex:
    out_dir = os.path.join(self.workdir, "anchors", split)
    anchors_lib.mine_anchors(
        self.query_net, data_source(self.dataset, split), sample_rate=self.config.data.sample_rate,
        segment_seconds=self.config.data.segment_seconds, batch_size=self.config.data.get("mining_batch_size", 8),
        out_dir=out_dir, process_index=jax.process_index(), process_count=jax.process_count(),
        detector_name=f"query_net:{self.config.query.workdir}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"anchors_{split}")
    return anchors_lib.load_anchor_index(out_dir)

  def _embed_batches(self, segments: np.ndarray, batch: int = 16) -> np.ndarray:
    fn = jax.jit(lambda g, s, x: nnx.merge(g, s)(x)["embedding"])
    graphdef, state = nnx.split(self.query_net)
    out = [np.asarray(fn(graphdef, state, jnp.asarray(segments[i:i + batch]))) for i in range(0, len(segments), batch)]
    return np.concatenate(out) if out else np.zeros((0, self.query_net.embedding_dim), np.float32)

  def _class_embeddings(self) -> np.ndarray:
    """(classes, embedding_dim): mean query-net embedding over each class's training anchor segments."""
    path = os.path.join(self.workdir, "class_embeddings.npz")
    names = np.array(self.class_names)
    if os.path.exists(path):
      with np.load(path, allow_pickle=False) as f:
        if list(f["class_names"]) == list(names):
          return f["embeddings"]
    index, source = self.anchors["train"], data_source(self.dataset, "train")
    segments = np.stack([mixing.anchor_crop(source[int(c)]["waveform"], int(s), self.segment_samples)
                         for c, s in zip(index.clip, index.start)]).astype(np.float32)
    emb = self._embed_batches(segments)
    table = np.zeros((len(names), emb.shape[-1]), np.float32)
    for k in range(len(names)):
      rows = index.rows_of_class(k)
      if len(rows):
        table[k] = emb[rows].mean(0)
    if jax.process_index() == 0:
      np.savez(path, class_names=names, embeddings=table)
    return table

  def _eval_set(self) -> dict[str, np.ndarray]:
    path = os.path.join(self.workdir, "eval_set.npz")
    if os.path.exists(path):
      return pipelines.load_eval_set(path)
    eval_set = pipelines.separation_eval_set(
        data_source(self.dataset, "test"), self.anchors["test"],
        pairs_per_class=self.config.data.eval_pairs_per_class, seed=self.config.data.get("eval_seed", 1234),
        segment_samples=self.segment_samples)
    if jax.process_index() == 0:
      pipelines.save_eval_set(path, eval_set)
    return eval_set

  @property
  def class_names(self) -> list[str]:
    return list(self.dataset.class_names)

  # ---- the recipe ----

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    # A fresh (abstract) query net: its weights are put in by initialize_state, or restored with the checkpoint.
    return build_separation_model(self.config, self.query_config, self.query_net.num_classes, rngs)

  def initialize_state(self, state, shardings):
    """Puts the tagging run's query-net weights into a freshly initialised state."""
    trained = nnx.state(self.query_net)
    placed = jax.tree.map(lambda v, s: jax.device_put(np.asarray(v), s), trained,
                          shardings["model"]["query_net"])
    state["model"]["query_net"] = placed
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
    audio (``_write_examples``)."""
    if "://" in self.workdir:
      return
    ref, mix = outputs["target"], outputs["mixture"]
    base = metrics.sdr(mix, ref)
    per = {kind: metrics.per_class_summary(metrics.sdr(outputs[f"est_{kind}"], ref) - base, outputs["class_id"],
                                           self.class_names) for kind in ("oracle", "average")}
    names = list(per["oracle"]["per_class"])
    with open(os.path.join(self.workdir, f"eval_step{step}_per_class.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["class", "mixtures", "SDRi_oracle_median_dB", "SDRi_average_median_dB"])
      for n in names:
        w.writerow([n, per["oracle"]["counts"][n], f"{per['oracle']['per_class'][n]:.2f}",
                    f"{per['average']['per_class'][n]:.2f}"])
    self._write_examples(outputs)
    try:
      import matplotlib  # pylint: disable=import-outside-toplevel
      matplotlib.use("Agg")
      import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError:
      return
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4))
    ax.bar(x - 0.2, [per["oracle"]["per_class"][n] for n in names], 0.4, label="oracle query")
    ax.bar(x + 0.2, [per["average"]["per_class"][n] for n in names], 0.4, label="class-average query")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("median SDRi (dB)")
    ax.set_title(f"step {step}: mean SDRi oracle {summary['SDRi_oracle']:.2f} dB, "
                 f"average {summary['SDRi_average']:.2f} dB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(self.workdir, f"eval_step{step}_sdri.png"), dpi=100)
    plt.close(fig)

  def _write_examples(self, outputs: Mapping[str, np.ndarray], max_classes: int = NUM_EXAMPLE_CLASSES) -> None:
    """``<workdir>/examples/<class>_{mixture,target,oracle,average}.wav``: the first evaluation mixture of each of
    the first ``max_classes`` classes with its target and both estimates (float WAV at the data sample rate;
    overwritten at every evaluation)."""
    import soundfile as sf  # pylint: disable=import-outside-toplevel

    out_dir = os.path.join(self.workdir, "examples")
    os.makedirs(out_dir, exist_ok=True)
    seen = []
    for i, k in enumerate(np.asarray(outputs["class_id"]).astype(int)):
      if k in seen:
        continue
      seen.append(k)
      name = self.class_names[k]
      for kind, key in (("mixture", "mixture"), ("target", "target"), ("oracle", "est_oracle"),
                        ("average", "est_average")):
        sf.write(os.path.join(out_dir, f"{name}_{kind}.wav"), np.asarray(outputs[key][i], np.float32),
                 int(self.config.data.sample_rate), subtype="FLOAT")
      if len(seen) == max_classes:
        break
