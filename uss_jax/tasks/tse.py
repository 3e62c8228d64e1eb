"""Target sound extraction with class-label and enrollment clues: SoundBeam (seed 002).

Data (seed 002 Sec. VI-A, ``data_pipelines.extraction``): Scaper-like soundscapes of 3-4 events of different classes
over a background, built on the fly from the train split of the labeled dataset of ``config.data``
(``tse_train_iterator``); each mixture has two targets, each with its class id and an enrollment (another clip of the
target class). The evaluation set is a fixed ``tse_eval_set`` of the test split (fixed enrollments, as the paper's
validation / test sets), built once and stored in the workdir (``tse_eval_set.npz``) so every run and every
evaluation scores the same mixtures. Each (mixture, target) is one extraction problem: the trainer's (batch, 2, ...)
arrays are flattened to (batch * 2, ...) with the mixture shared by its two targets.

Loss (seed 002 Eq. (2)): ``alpha L(TSE(x, o_1hot), s) + (1 - alpha) L(TSE(x, o_enroll), s)``, alpha = 0.5, with
``L`` = ``losses.weighted_snr_si_snr_loss`` = ``-0.9 SNR - 0.1 SI-SNR`` ("weighted sum of SNR and SI-SNR losses
following [18]", Waveformer ``dcc_tf.py``). Both clues run in one batched model call.

Evaluation (seed 002 Sec. VI-B): per extraction, SNRi = SNR(estimate) - SNR(mixture) and SI-SNRi, with the class clue
and with the enrollment clue; the mean over extractions and the failure rate (fraction with SNRi < 1 dB,
``metrics.failure_rate``); a per-class CSV and a few example WAVs in the workdir.

Inaudible targets: an event window cut from the silent part of a sparse clip (kick drum, snare) used to be digital
silence (8.5 % of the targets of 1.5 s demo mixtures); its SNR is about -100 dB for any non-zero estimate, which
dominated the batch mean and trained the model to output silence. The pipeline now redraws such windows
(``mixing.audible_crop``); as a safeguard, extractions whose target is still more than ``config.loss.min_target_db``
(-30 dB) below the mixture are left out of the loss and of the metrics (``audible_targets``, counted as
``num_inaudible``; the paper's Scaper data has no such targets).
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
import ml_collections
import numpy as np

from data_pipelines import extraction, pipelines
from uss_jax import losses, metrics
from uss_jax.models import registry
from uss_jax.tasks.tagging import LabeledAudioTask, data_source

EVAL_SET_FILE = "tse_eval_set.npz"
CLUES = ("class", "enrollment")
NUM_EXAMPLES = 2  # evaluation mixtures written as example audio
EVAL_KEYS = ("mixture", "target", "class_id", "enrollment")




def m2d_options(config: ml_collections.ConfigDict) -> dict:
  """``config.model.m2d`` as a dict (``enrollment`` / ``mixture`` flags, weight source, sizes); {} when absent."""
  m = config.model.get("m2d", None)
  return dict(m) if m is not None else {}


def uses_m2d(config: ml_collections.ConfigDict) -> bool:
  """Whether the system has an M2D (for the enrollment, the mixture or both)."""
  o = m2d_options(config)
  return bool(o.get("enrollment", False) or o.get("mixture", False))


def m2d_weights(config: ml_collections.ConfigDict) -> tuple[dict | None, dict]:
  """The M2D of ``config.model.m2d``: ``(weights {path: array} or None, constructor arguments)``.

  Sources, first that is set: ``checkpoint`` (a released M2D file, ``uss_jax.convert.m2d.load_m2d_checkpoint``),
  ``workdir`` (a masked-pretraining run of this project with the M2D front end, ``step`` optional:
  ``m2d_from_mam_run``), else a randomly initialised M2D of the given sizes (``embed_dim``, ``depth``,
  ``num_heads``, ``img_size``, ``patch_size``: tests and smoke runs).

  Raises:
    FileNotFoundError / ValueError: a weight source that cannot be read or does not match.
  """
  from uss_jax.convert import m2d as convert_m2d  # pylint: disable=import-outside-toplevel
  o = m2d_options(config)
  if o.get("checkpoint"):
    model = convert_m2d.load_m2d_checkpoint(o["checkpoint"])
    arch = dict(img_size=(model.bins, model.unit_frames), patch_size=(model.patch_f, model.patch_t),
                embed_dim=model.embed_dim, depth=model.depth, num_heads=model.blocks[0].attn.num_heads,
                mlp_ratio=model.blocks[0].mlp.fc1.kernel.shape[1] / model.embed_dim)
    return _flat(model), arch
  if o.get("workdir"):
    return m2d_from_mam_run(o["workdir"], o.get("step") or None)
  arch = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in o.items()
          if k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")}
  return None, arch


def _flat(model: nnx.Module) -> dict:
  return {tuple(str(k) for k in p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


def m2d_from_mam_run(workdir: str, step: int | None = None) -> tuple[dict, dict]:
  """An M2D-style encoder from a masked-pretraining run of this project (``configs/m2d_small.py``: the ``m2d`` log-mel
  front end, patches ``(time, 80)``): ``(weights {path: array}, M2D arguments)``.

  The ViT's patch projection, cls token, blocks and final norm are taken as they are (same variable names); its
  sin-cos positions (generated, time-major tokens) are written as the M2D's (f t) table for one unit of the run's
  clip length; ``norm_stats`` are the run's front-end statistics. A run with a stored position table
  (``pos_embed='learned'`` / ``'table'``) gives that table (time-major rows reordered to (f t)), not a regenerated
  sin-cos one. The M2D's own front end gets the run's ``sample_rate``, ``n_fft``, ``hop_length``, ``fmin``,
  ``fmax`` (the M2D windows with ``n_fft`` and uses ``log(mel + float32 eps)``).

  Raises:
    FileNotFoundError: no checkpoint. ValueError: the run does not use the M2D front end, or its front end has a
      window length or log epsilon the M2D cannot reproduce.
  """
  from uss_jax.models import vit  # pylint: disable=import-outside-toplevel
  from uss_jax.tasks import tagging  # pylint: disable=import-outside-toplevel
  weights, run_config, _ = tagging.load_mam_encoder(workdir, step)
  from uss_jax.audio import frontends, mel as mel_lib  # pylint: disable=import-outside-toplevel
  fe = dict(run_config.frontend)
  if fe.get("name") != "m2d":
    raise ValueError(f"config.model.m2d.workdir: {workdir} was pretrained with the {fe.get('name')!r} front end; an "
                     "M2D encoder needs the 'm2d' log-mel (configs/m2d_small.py)")
  lm = frontends.get_frontend(**fe)  # M2DLogMel with the run's fields
  if (lm.win_length or lm.n_fft) != lm.n_fft or lm.log_eps != mel_lib.FLOAT32_EPS:
    raise ValueError(f"config.model.m2d.workdir: {workdir}'s front end (win_length {lm.win_length}, log_eps "
                     f"{lm.log_eps}) differs from the M2D's (window = n_fft, float32 eps)")
  enc = dict(run_config.model.encoder)
  pt, pf = vit._pair(enc.get("patch_size", 16))  # (time, freq)
  d = int(weights[("cls_token",)].shape[-1])
  depth = len({k[1] for k in weights if k[0] == "blocks"})
  heads = int(enc.get("num_heads", vit.VIT_PRESETS[enc.get("size", "base")]["num_heads"]))
  hidden = int(weights[("blocks", "0", "mlp", "fc1", "kernel")].shape[1])
  samples = int(round(run_config.data.clip_seconds * run_config.data.sample_rate))
  frames = lm.num_frames(samples) // pt * pt  # the ViT's nominal frames (mam.build_mae), whole patches
  bins = int(lm.n_mels)
  grid_t, grid_f = frames // pt, bins // pf
  if ("pos_embed",) in weights:  # a stored table on the ViT's nominal grid (time-major, cls first)
    table = np.asarray(weights[("pos_embed",)], np.float32).reshape(1 + grid_t * grid_f, d)
  else:
    table = vit.sincos_pos_embed_2d(d, (grid_t, grid_f), layout=enc.get("pos_embed_layout", "time_freq"),
                                    cls_token=True)
  cls, rest = table[:1], table[1:].reshape(grid_t, grid_f, d).transpose(1, 0, 2).reshape(grid_t * grid_f, d)
  out = {k: v for k, v in weights.items() if k[0] in ("patch_embed", "cls_token", "blocks", "norm")}
  out[("pos_embed",)] = np.concatenate([cls, rest])[None].astype(np.float32)
  stats = fe.get("norm_stats") or (0.0, 1.0)
  out[("norm_stats",)] = np.asarray(stats, np.float32)
  arch = dict(img_size=(bins, frames), patch_size=(pf, pt), embed_dim=d, depth=depth, num_heads=heads,
              mlp_ratio=hidden / d, sample_rate=int(lm.sample_rate), n_fft=int(lm.n_fft),
              hop_length=int(lm.hop_length), fmin=float(lm.fmin),
              fmax=float(lm.fmax if lm.fmax is not None else lm.sample_rate / 2))
  return out, arch


def m2d_paths(model: nnx.Module) -> list[tuple[str, ...]]:
  """State paths of the M2D modules in ``model`` (a shared M2D appears once, at the path ``nnx.state`` uses)."""
  from uss_jax.models import m2d as m2d_lib  # pylint: disable=import-outside-toplevel
  return [tuple(str(k) for k in path) for path, node in nnx.iter_graph(model) if isinstance(node, m2d_lib.M2D)]


def flatten_targets(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``target`` (b, k, S), ``class_id`` (b, k), ``enrollment`` (b, k, E) -> (b k, S), (b k,), (b k, E), rows
  ``i k .. i k + k - 1`` belonging to mixture ``i`` (the order ``SoundBeam.__call__`` expects)."""
  target = batch["target"]
  b, k = target.shape[:2]
  return (target.reshape(b * k, -1), batch["class_id"].reshape(b * k),
          batch["enrollment"].reshape(b * k, -1))


def extraction_scores(est: np.ndarray, target: np.ndarray, mixture: np.ndarray) -> dict[str, np.ndarray]:
  """Per-extraction SNRi and SI-SNRi (dB) of ``est`` / ``target`` (n, k, S) for mixtures (n, S), flattened to n k."""
  n, k, s = target.shape
  ref = target.reshape(n * k, s)
  mix = np.repeat(mixture, k, axis=0)
  return {"snri": metrics.snri(est.reshape(n * k, s), ref, mix),
          "si_snri": metrics.si_sdri(est.reshape(n * k, s), ref, mix, zero_mean=True)}


def audible_targets(target: jax.Array, mixture: jax.Array, min_target_db: float) -> jax.Array:
  """1.0 where ``10 log10(sum target^2 / sum mixture^2) >= min_target_db``, else 0.0 (float32, shape ``(...)``).

  ``target`` and ``mixture`` are ``(..., samples)`` (jax or numpy). A target window cut from the silent part of a
  sparse clip (kick drum, snare: digital zeros) has no SNR to optimise: any non-zero estimate scores about
  ``10 log10(eps / error)`` ~ -100 dB, which swamps the batch mean and drives the model to silent outputs. Such
  extractions are left out of the loss and of the metrics.
  """
  xp = jnp if isinstance(target, jax.Array) or isinstance(mixture, jax.Array) else np
  t = xp.sum(xp.square(target.astype(xp.float32)), axis=-1)
  m = xp.sum(xp.square(mixture.astype(xp.float32)), axis=-1)
  return (t >= m * 10.0 ** (min_target_db / 10.0)).astype(xp.float32)


def tse_loss(est: Mapping[str, jax.Array], target: jax.Array, *, alpha: float = 0.5, snr_weight: float = 0.9,
             si_snr_weight: float = 0.1, weight: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Seed 002 Eq. (2): ``alpha L(est['class'], s) + (1 - alpha) L(est['enrollment'], s)``, ``L`` =
  ``losses.weighted_snr_si_snr_loss`` (``-snr_weight SNR - si_snr_weight SI-SNR``, dB) averaged over extractions.

  Args:
    est: ``{'class': (n, samples), 'enrollment': (n, samples)}`` estimates.
    target: ``(n, samples)`` targets.
    alpha: multi-task weight (0.5 in seed 002). snr_weight, si_snr_weight: 0.9 / 0.1 (Waveformer ``dcc_tf.py``).
    weight: optional ``(n,)`` 0/1 weights (``audible_targets``): the average is over the weighted extractions (a
      batch without any gives loss 0).

  Returns:
    ``(loss, {'loss_class', 'loss_enrollment', 'snr_class', 'snr_enrollment', 'audible_fraction'})`` scalars (SNR
    in dB, for logging; same weighting).
  """
  w = jnp.ones(target.shape[:1], jnp.float32) if weight is None else weight.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(w), 1.0)

  def mean(x):
    return jnp.sum(w * x) / count

  parts = {clue: mean(losses.weighted_snr_si_snr_loss(est[clue], target, snr_weight=snr_weight,
                                                      si_snr_weight=si_snr_weight, reduction="none"))
           for clue in CLUES}
  total = alpha * parts["class"] + (1.0 - alpha) * parts["enrollment"]
  aux = {f"loss_{clue}": parts[clue] for clue in CLUES}
  aux.update({f"snr_{clue}": mean(losses.snr(jax.lax.stop_gradient(est[clue]), target)) for clue in CLUES})
  aux["audible_fraction"] = jnp.mean(w)
  return total, aux


class TSETask(LabeledAudioTask):
  """SoundBeam target sound extraction (config: ``data`` with ``mixture_seconds``, ``enrollment_seconds``,
  ``num_events``, ``snr_db``, ``eval_mixtures``, ``eval_seed``, ``normalize``; ``model``; ``loss`` with ``alpha``,
  ``snr_weight``, ``si_snr_weight``)."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self._labels: dict[str, np.ndarray] = {}
    self._eval_set: dict[str, np.ndarray] | None = None
    self._context: dict[str, Any] | None = None
    self._m2d_weights: dict | None = None

  # ---- data ----

  def _samples(self, key: str, default: float | None = None) -> int:
    seconds = self.config.data.get(key, None) or default
    return self._clip_samples(float(seconds))

  @property
  def mixture_samples(self) -> int:
    return self._samples("mixture_seconds")

  @property
  def enrollment_samples(self) -> int:
    return self._samples("enrollment_seconds", self.config.data.mixture_seconds)

  def _element_options(self, split: str) -> dict:
    d = self.config.data
    if split not in self._labels:
      self._labels[split] = extraction.clip_labels(data_source(self.dataset, split))
    return dict(labels=self._labels[split], enrollment_samples=self.enrollment_samples,
                num_events=tuple(d.get("num_events", (3, 4))), snr_db=tuple(d.get("snr_db", (5.0, 15.0))),
                normalize=bool(d.get("normalize", True)))

  def _eval_settings(self) -> np.ndarray:
    d = self.config.data
    return np.array([self.mixture_samples, self.enrollment_samples, int(d.eval_mixtures), int(d.get("eval_seed", 0)),
                     int(d.sample_rate)], np.int64)

  @property
  def eval_set(self) -> dict[str, np.ndarray]:
    """The fixed evaluation mixtures: ``<workdir>/tse_eval_set.npz`` if it exists, else built and written there.

    Raises:
      ValueError: the stored set was built with other settings (mixture / enrollment length, count, seed, rate).
    """
    if self._eval_set is not None:
      return self._eval_set
    path = os.path.join(self.workdir, EVAL_SET_FILE)
    settings = self._eval_settings()
    if os.path.exists(path):
      stored = pipelines.load_eval_set(path)
      if not np.array_equal(stored.pop("settings", None), settings):
        raise ValueError(f"{path} was built with other settings (mixture samples, enrollment samples, mixtures, "
                         f"seed, sample rate) than {settings.tolist()}; use a fresh workdir")
    else:
      stored = extraction.tse_eval_set(data_source(self.dataset, "test"), num_mixtures=int(settings[2]),
                                       seed=int(settings[3]), mixture_samples=self.mixture_samples,
                                       **self._element_options("test"))
      if jax.process_index() == 0 and "://" not in self.workdir:
        os.makedirs(self.workdir, exist_ok=True)
        tmp = path + ".tmp"
        pipelines.save_eval_set(tmp, {**stored, "settings": settings})
        os.replace(tmp, path)  # other processes never see a partial file
      logging.info("built the TSE eval set: %d mixtures of %d samples", len(stored["mixture"]), self.mixture_samples)
    self._eval_set = stored
    return stored

  def prepare(self) -> None:
    super().prepare()
    _ = self.eval_set
    _ = self.context

  @property
  def context(self) -> dict[str, Any]:
    """The system context (``build_tse_system``), written to ``<workdir>/system_context.json`` (process 0) on first
    use; loads the M2D weights of ``config.model.m2d`` (host numpy) for ``initialize_state``."""
    if self._context is None:
      from uss_jax import io  # pylint: disable=import-outside-toplevel
      arch = None
      if uses_m2d(self.config):
        self._m2d_weights, arch = m2d_weights(self.config)
      name = registry.system_name(self.config)
      self._context = {
          "num_classes": len(self.class_names), "class_names": list(self.class_names), "m2d": arch,
          "sample_rate": int(self.config.data.sample_rate), "segment_samples": self.mixture_samples,
          "query_samples": self.enrollment_samples,
          # Clue embeddings are learned by each run: only this run's encoders drive its extractor.
          "condition_space": f"{name}:{os.path.abspath(self.workdir) if '://' not in self.workdir else self.workdir}"}
      io.write_on_process0("system_context", lambda: registry.write_context(self.workdir, self._context))
    return self._context

  @property
  def trainable(self):
    """Everything but the M2D (a frozen foundation model, seed 002)."""
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("m2d")))

  def initialize_state(self, state, shardings):
    """Puts the M2D weights of ``config.model.m2d`` (a released checkpoint or a pretraining run) into a fresh state.

    Raises:
      ValueError: the weights do not match the model's M2D.
    """
    if self._m2d_weights is None:
      return state
    from uss_jax.tasks import tagging  # pylint: disable=import-outside-toplevel
    abstract = nnx.eval_shape(lambda: self.build_model(nnx.Rngs(0)))
    for path in m2d_paths(abstract):
      sub, sub_sh = state["model"], shardings["model"]
      for k in path:
        sub, sub_sh = sub[k], sub_sh[k]
      new, taken = tagging.put_encoder_weights(sub, sub_sh, self._m2d_weights)
      node = state["model"]
      for k in path[:-1]:
        node = node[k]
      node[path[-1]] = new
      logging.info("init: %d M2D variables at %s", len(taken), "/".join(path))
    return state

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return extraction.tse_train_iterator(
        data_source(self.dataset, "train"), mixture_samples=self.mixture_samples, global_batch=self.config.batch_size,
        seed=self.config.seed, process_index=process_index, process_count=process_count,
        num_workers=self.config.input.get("num_workers", 0), **self._element_options("train"))

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    ev = self.eval_set
    for batch in pipelines.eval_set_batches({k: ev[k] for k in EVAL_KEYS},
                                            global_batch=self.config.get("eval_batch_size", self.config.batch_size),
                                            process_index=process_index, process_count=process_count):
      batch["class_id"] = batch["class_id"].astype(np.int32)
      yield batch

  # ---- the recipe ----

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return registry.build_system(self.config, self.context, rngs)

  def _extract(self, model, batch, rngs=None) -> tuple[dict[str, jax.Array], jax.Array]:
    target, class_id, enrollment = flatten_targets(batch)
    onehot = jax.nn.one_hot(class_id, len(self.class_names), dtype=jnp.float32)
    return model(batch["mixture"], class_onehot=onehot, enrollment=enrollment, rngs=rngs), target

  @property
  def min_target_db(self) -> float:
    """Extractions whose target is quieter than this (dB relative to the mixture) are skipped (``audible_targets``)."""
    return float(self.config.get("loss", {}).get("min_target_db", -30.0))

  def loss(self, model, batch, rngs):
    est, target = self._extract(model, batch, rngs)
    lc = self.config.get("loss", {})
    k = batch["target"].shape[1]
    weight = audible_targets(target, jnp.repeat(batch["mixture"], k, axis=0), self.min_target_db)
    return tse_loss(est, target, alpha=float(lc.get("alpha", 0.5)), snr_weight=float(lc.get("snr_weight", 0.9)),
                    si_snr_weight=float(lc.get("si_snr_weight", 0.1)), weight=weight)

  def eval_outputs(self, model, batch):
    est, _ = self._extract(model, batch)
    b, k = batch["target"].shape[:2]
    out = {f"est_{clue}": est[clue].reshape(b, k, -1) for clue in CLUES}
    out.update(mixture=batch["mixture"], target=batch["target"], class_id=batch["class_id"])
    return out

  def per_extraction(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-extraction arrays (n k,) of the evaluation outputs: ``snri_<clue>``, ``si_snri_<clue>``,
    ``level_<clue>`` (estimate-to-mixture energy, dB), ``mixture_snr``, ``mixture_si_snr`` (dB),
    ``half_mixture_snri`` (SNRi of returning 0.5 x mixture, dB), ``class_id`` and ``audible`` (bool,
    ``audible_targets``)."""
    mix, target = np.asarray(outputs["mixture"]), np.asarray(outputs["target"])
    n, k, s = target.shape
    mix_rep, ref = np.repeat(mix, k, axis=0), target.reshape(n * k, s)
    mix_energy = np.sum(np.square(mix_rep, dtype=np.float64), axis=-1)
    out = {"mixture_snr": np.asarray(metrics.snr(mix_rep, ref)),
           "mixture_si_snr": np.asarray(metrics.si_sdr(mix_rep, ref, zero_mean=True)),
           "half_mixture_snri": np.asarray(metrics.snri(0.5 * mix_rep, ref, mix_rep)),
           "class_id": np.asarray(outputs["class_id"]).reshape(n * k),
           "audible": audible_targets(ref, mix_rep, self.min_target_db).astype(bool)}
    for clue in CLUES:
      est = np.asarray(outputs[f"est_{clue}"])
      scores = extraction_scores(est, target, mix)
      out[f"snri_{clue}"], out[f"si_snri_{clue}"] = scores["snri"], scores["si_snri"]
      energy = np.sum(np.square(est.reshape(n * k, s), dtype=np.float64), axis=-1)
      out[f"level_{clue}"] = 10 * np.log10((energy + losses.EPS) / (mix_energy + losses.EPS))
    return out

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means over the extractions with an audible target (``audible_targets``): ``SNRi_<clue>``, ``SI_SNRi_<clue>``
    (dB), ``failure_rate_<clue>`` (fraction with SNRi < 1 dB), ``output_level_<clue>`` (estimate-to-mixture energy,
    dB) for clue in class / enrollment; ``mixture_SNR`` (input SNR, dB); ``num_extractions`` (scored) and
    ``num_inaudible`` (left out); the trivial outputs on the same extractions: ``baseline_SNRi_silence``,
    ``baseline_SI_SNRi_silence``, ``baseline_SNRi_half_mixture``, ``baseline_failure_rate_half_mixture``.

    Reading them: a silent output scores SNRi = -mixture_SNR (SNR 0 dB) and, by the torchmetrics eps convention,
    SI-SNR 0 dB, i.e. SI-SNRi = -SI-SNR(mixture): on 3-4-event mixtures (input SNR about -4.6 dB) silence scores
    SI-SNRi +4.6 dB, so an SI-SNRi is evidence of extraction only above ``baseline_SI_SNRi_silence``; returning
    0.5 x mixture scores SNRi ~ +3 dB at 0 dB input. A very low ``output_level`` flags the silent solution.

    Raises:
      ValueError: no extraction has an audible target.
    """
    per = self.per_extraction(outputs)
    keep = per["audible"]
    if not keep.any():
      raise ValueError("no evaluation extraction has an audible target (see config.loss.min_target_db)")
    result = {}
    for clue in CLUES:
      result[f"SNRi_{clue}"] = float(np.mean(per[f"snri_{clue}"][keep]))
      result[f"SI_SNRi_{clue}"] = float(np.mean(per[f"si_snri_{clue}"][keep]))
      result[f"failure_rate_{clue}"] = metrics.failure_rate(per[f"snri_{clue}"][keep])
      result[f"output_level_{clue}"] = float(np.mean(per[f"level_{clue}"][keep]))
    result["mixture_SNR"] = float(np.mean(per["mixture_snr"][keep]))
    # The trivial outputs on the same extractions (issue 12: a run must beat them, not 0 dB).
    mix_si = per["mixture_si_snr"][keep]
    result["baseline_SNRi_silence"] = -result["mixture_SNR"]
    result["baseline_SI_SNRi_silence"] = float(np.mean(-mix_si))
    result["baseline_SNRi_half_mixture"] = float(np.mean(per["half_mixture_snri"][keep]))
    result["baseline_failure_rate_half_mixture"] = metrics.failure_rate(per["half_mixture_snri"][keep])
    result["num_extractions"] = float(keep.sum())
    result["num_inaudible"] = float((~keep).sum())
    return result

  def write_artifacts(self, outputs: Mapping[str, np.ndarray], summary: Mapping[str, float], step: int) -> None:
    """``eval_step<N>_per_class.csv`` (per target class, audible targets only: extractions, mean SNRi and failure
    rate for each clue) and ``examples/mix<i>_{mixture,target<j>,class<j>,enrollment<j>}_<class>.wav`` for the first
    mixtures (overwritten at every evaluation)."""
    del summary
    if "://" in self.workdir:
      return
    per = self.per_extraction(outputs)
    ids = per["class_id"]
    with open(os.path.join(self.workdir, f"eval_step{step}_per_class.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["class", "extractions", "SNRi_class_mean_dB", "SNRi_enrollment_mean_dB", "failure_rate_class",
                  "failure_rate_enrollment"])
      for c in np.unique(ids[per["audible"]]):
        sel = (ids == c) & per["audible"]
        snri = {clue: per[f"snri_{clue}"][sel] for clue in CLUES}
        w.writerow([self.class_names[int(c)], int(sel.sum()), f"{snri['class'].mean():.2f}",
                    f"{snri['enrollment'].mean():.2f}", f"{metrics.failure_rate(snri['class']):.3f}",
                    f"{metrics.failure_rate(snri['enrollment']):.3f}"])
    self._write_examples(outputs)

  def _write_examples(self, outputs: Mapping[str, np.ndarray]) -> None:
    import soundfile as sf  # pylint: disable=import-outside-toplevel

    out_dir = os.path.join(self.workdir, "examples")
    os.makedirs(out_dir, exist_ok=True)
    rate = int(self.config.data.sample_rate)
    for i in range(min(NUM_EXAMPLES, len(outputs["mixture"]))):
      sf.write(os.path.join(out_dir, f"mix{i}_mixture.wav"), np.asarray(outputs["mixture"][i], np.float32), rate,
               subtype="FLOAT")
      for j in range(outputs["target"].shape[1]):
        name = self.class_names[int(outputs["class_id"][i, j])]
        for kind, key in (("target", "target"), ("class", "est_class"), ("enrollment", "est_enrollment")):
          sf.write(os.path.join(out_dir, f"mix{i}_{kind}{j}_{name}.wav"), np.asarray(outputs[key][i, j], np.float32),
                   rate, subtype="FLOAT")
