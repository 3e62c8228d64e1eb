"""Separation with a query encoder inside the system: CaRE-SEP and its ST-SED-SEP baseline (seed 001).

``JointSeparationTask`` is ``SeparationTask`` (same dataset, anchor index, class-balanced energy-matched pairs and
the same stored evaluation mixtures, all mined by the run's ``config.query.workdir`` Cnn14 detector) with the
pieces seed 001 changes:

* the query embedding ``e_j`` comes from the system itself (``model.query``: CaRE-SEP's shared encoder, or the
  HTS-AT of ST-SED-SEP), computed on the clean source segment (the oracle anchor, as bytedance/uss trains);
* Eq. (1) ``S(a, e_j) -> a_j`` for **both** sources of each mixture (``a = a_1 + a_2``): the batch of ``B`` mixtures
  becomes ``2B`` separations; loss ``mae_weight * mean|y - a_j| + sdr_weight * (-SDR(y, a_j))`` (Sec. 2.1: MAE +
  SDR on waveforms; SDR = ``10 log10(|a|^2 / |y - a|^2)``, ``losses.snr_loss``); CLS+SEP adds
  ``cls_weight * BCE`` of the query pass's token-semantic logits against both sources' classes (``config.loss``);
* Table 2's switches (``config.ablation``): ``grad`` (the separation loss reaches the query embedding),
  ``init`` (the encoder / query HTS-AT starts from an HTS-AT tagging run, ``config.init.workdir``),
  ``shared_encoder`` (CaRE-SEP only: False = a separate query encoder of the same architecture);
* evaluation (Sec. 3.2, RetroCirce ``utils.py``): mixture-SDR ``S(c_1 + c_2, e_1) -> c_1``, clean-SDR
  ``S(c_1, e_1) -> c_1`` and silence-SDR ``S(c_2, e_1) -> 0`` (``uss_jax.metrics``), with the self-source query
  ``e_1`` of the clean target, plus SDRi (bytedance/uss, comparable to the ResUNet30 runs), the trivial 0.5 x
  mixture's mixture-SDR on the same rows, and the tagging mAP of the system's head on the targets. Medians per class,
  mean over classes; a per-class table and a bar plot as the separation task writes them.

Class-average queries are not served: the query space is the run's own (and moves while it trains), so
``class_embeddings.npz`` is not written and ``uss-jax separate`` takes audio queries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import pipelines
from uss_jax import io, losses, metrics
from uss_jax.models import registry
from uss_jax.tasks.separation import SeparationTask, write_class_tables
from uss_jax.tasks.tagging import data_source
from uss_jax.train import checkpoint as checkpoint_lib
from uss_jax.train import optim

SYSTEMS = ("care_sep", "st_sed_sep")


def copy_matching(state: Any, shardings: Any, weights: Mapping[tuple[str, ...], np.ndarray]) -> tuple[Any, list, list]:
  """Puts ``weights[path]`` into every variable of ``state`` whose path and shape match (the paper's "Init").

  Args:
    state: an ``nnx.State`` subtree (sharded arrays); shardings: the same tree of ``NamedSharding``s.
    weights: ``{path names: array}`` of a tagging run's model.

  Returns:
    ``(new state, taken paths, skipped paths)``; skipped = no such path in ``weights`` or another shape.
  """
  taken, skipped = [], []

  def put(path, value, sharding):
    names = optim.path_names(path)
    if names and names[-1] == "value":
      names = names[:-1]
    new = weights.get(names)
    if new is None or tuple(new.shape) != tuple(value.shape):
      skipped.append("/".join(names))
      return value
    taken.append("/".join(names))
    return jax.device_put(np.asarray(new, dtype=value.dtype), sharding)

  return jax.tree_util.tree_map_with_path(put, state, shardings), taken, skipped


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = np.asarray(v)
  return out


class JointSeparationTask(SeparationTask):
  """Config as ``SeparationTask`` plus ``model.name`` in ``SYSTEMS``, ``loss`` (``mae_weight``, ``sdr_weight``,
  ``cls_weight``), ``ablation`` (``grad``, ``init``, ``shared_encoder``), ``init`` (``workdir``, ``step``)."""

  def prepare(self) -> None:
    if self._prepared:
      return
    name = registry.system_name(self.config)
    if name not in SYSTEMS:
      raise ValueError(f"config.model.name={name!r}: the joint_separation task trains {SYSTEMS}")
    self._init_workdir()  # a bad Init flag pair fails before the anchor mining, not after it
    super().prepare()
    self.detector_space = self.context["condition_space"]
    # The query space is this run's own; the tagging head has one output per dataset class.
    self.context = {**self.context, "num_classes": len(self.class_names), "condition_space": f"{name}:{self.workdir}"}
    io.write_on_process0("system_context", lambda: registry.write_context(self.workdir, self.context))

  def _class_embeddings(self):
    return None  # no class-average queries (module docstring)

  @property
  def trainable(self):
    """Everything but a frozen query network: ST-SED-SEP's HTS-AT, or CaRE-SEP's separate query encoder, when
    ``ablation.grad`` is off."""
    if self.config.ablation.grad:
      return nnx.Param
    frozen = "query_net" if registry.system_name(self.config) == "st_sed_sep" else "query_encoder"
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains(frozen)))

  def _init_workdir(self) -> str:
    """``config.init.workdir`` when ``ablation.init`` is on, else ''.

    Raises:
      ValueError: init on without a workdir, or a workdir with init off (it would be ignored).
    """
    workdir = self.config.init.get("workdir") or ""
    if not self.config.ablation.init:
      if workdir:
        raise ValueError(f"config.init.workdir={workdir} is set but config.ablation.init=False, so it would be "
                         "ignored: add --config.ablation.init=True (Table 2's Init) or drop config.init.workdir")
      return ""
    if not workdir:
      raise ValueError("config.ablation.init=True needs config.init.workdir (a configs/sed_htsat.py run)")
    return workdir

  def initialize_state(self, state, shardings):
    """``ablation.init``: the HTS-AT tagging run of ``config.init.workdir`` into the encoder(s) / query net, by path
    and shape (the Swin stages, patch embedding, norm; the head when the classes agree).

    Raises:
      ValueError: init on without a workdir, a workdir with init off (it would be ignored), or a run whose Swin
        stages do not fit the encoder.
    """
    workdir = self._init_workdir()
    if not workdir:
      return state
    restored, _, step = checkpoint_lib.restore_run_model(
        workdir, self.config.init.get("step"), field="config.init.workdir",
        hint="train an HTS-AT tagger: uss-jax train --config=configs/sed_htsat.py:smoke --workdir=...")
    weights = _flatten(restored)
    targets = ["query_net"] if registry.system_name(self.config) == "st_sed_sep" else ["encoder", "query_encoder"]
    for key in targets:
      if key not in state["model"] or not hasattr(state["model"][key], "items"):
        continue
      new, taken, skipped = copy_matching(state["model"][key], shardings["model"][key], weights)
      if not any(t.startswith("layers/") for t in taken):
        raise ValueError(f"config.init.workdir={workdir}: no Swin stage of the tagging run fits the {key} "
                         f"(use the same embed_dim / depths / num_heads / window); skipped {skipped[:5]} ...")
      state["model"][key] = new
      logging.info("init %s from %s step %d: %d variables taken, %d kept (%s)", key, workdir, step, len(taken),
                   len(skipped), ", ".join(skipped[:8]))
    return state

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    """Offline anchor mixtures with each mixture's interferer share (``mixture = target + interferer``)."""
    if self.config.data.get("anchors", "offline") != "offline" or self.config.data.get("normalize", False):
      raise ValueError("joint_separation trains on offline anchors without peak normalisation (data.anchors="
                       "'offline', data.normalize=False): both sources of each mixture are targets")
    return pipelines.separation_train_iterator(
        data_source(self.dataset, "train"), self.anchors["train"], segment_samples=self.segment_samples,
        global_batch=self.config.batch_size, seed=self.config.seed, process_index=process_index,
        process_count=process_count, num_workers=self.config.input.get("num_workers", 0), normalize=False,
        with_interferer=True)

  def loss(self, model, batch, rngs):
    lc = self.config.loss
    sources = jnp.concatenate([batch["target"], batch["interferer"]])  # a_1, a_2
    mixture = jnp.concatenate([batch["mixture"], batch["mixture"]])
    query = model.query(sources, rngs=rngs)
    est = model(mixture, query["embedding"], rngs=rngs)
    mae = losses.l1_waveform(est, sources)
    neg_sdr = losses.snr_loss(est, sources)
    total = lc.mae_weight * mae + lc.sdr_weight * neg_sdr
    aux = {"mae": mae, "sdr": -neg_sdr}
    if lc.cls_weight:
      k = query["logits"].shape[-1]
      labels = jax.nn.one_hot(jnp.concatenate([batch["class_id"], batch["interferer_class_id"]]), k)
      bce = losses.sigmoid_bce(query["logits"], labels)
      total = total + lc.cls_weight * bce
      aux["bce"] = bce
    return total, aux

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    keep = ("mixture", "target", "class_id")
    for batch in pipelines.eval_set_batches({k: self.eval_set[k] for k in keep},
                                            global_batch=self.config.get("eval_batch_size", self.config.batch_size),
                                            process_index=process_index, process_count=process_count):
      batch["class_id"] = batch["class_id"].astype(np.int32)
      yield batch

  def eval_outputs(self, model, batch):
    mixture, target = batch["mixture"], batch["target"]
    interferer = mixture - target  # the stored set is not peak-normalised
    query = model.query(target)
    e = query["embedding"]
    return {"est_mixture": model(mixture, e), "est_clean": model(target, e), "est_silence": model(interferer, e),
            "interferer": interferer, "mixture": mixture, "target": target, "class_id": batch["class_id"],
            "clipwise": jax.nn.sigmoid(query["logits"])}

  def _per_example(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    ref, mix = outputs["target"], outputs["mixture"]
    return {
        "mixture_SDR": metrics.mixture_sdr(outputs["est_mixture"], ref),
        "clean_SDR": metrics.clean_sdr(outputs["est_clean"], ref),
        "silence_SDR": metrics.silence_sdr(outputs["interferer"], outputs["est_silence"]),
        "SDRi": metrics.sdr(outputs["est_mixture"], ref) - metrics.sdr(mix, ref),
        "mixture_SDR_half_mixture": metrics.mixture_sdr(0.5 * mix, ref),
    }

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    per = self._per_example(outputs)
    result = {k: float(metrics.per_class_summary(v, outputs["class_id"])["mean"]) for k, v in per.items()}
    labels = np.eye(len(self.class_names), dtype=np.float32)[np.asarray(outputs["class_id"]).astype(int)]
    result["mAP"] = float(metrics.mean_average_precision(labels, np.asarray(outputs["clipwise"])))
    return result

  def write_artifacts(self, outputs: Mapping[str, np.ndarray], summary: Mapping[str, float], step: int) -> None:
    """``eval_step<N>_per_class.csv`` (median mixture / clean / silence-SDR and SDRi per class) and a bar plot."""
    per = self._per_example(outputs)
    tables = {k: metrics.per_class_summary(v, outputs["class_id"], self.class_names) for k, v in per.items()}
    write_class_tables(self.workdir, step, tables, bars={k: k for k in ("mixture_SDR", "silence_SDR", "SDRi")},
                       ylabel="median (dB)",
                       title=f"step {step}: mixture-SDR {summary['mixture_SDR']:.2f} dB (0.5 x mixture "
                             f"{summary['mixture_SDR_half_mixture']:.2f}), silence-SDR {summary['silence_SDR']:.2f} dB")
