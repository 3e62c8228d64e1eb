"""Masked audio modelling: AudioMAE, SupMAM, MAM-CLAP and SupMAM-CLAP pretraining (seed 004).

``config.objective``:
  * ``'audiomae'`` (Huang et al. 2022; facebookresearch/AudioMAE ``models_mae.py`` ``forward_loss``): per-patch
    normalised MSE on the masked patches only (``uss_jax.losses.masked_patch_mse``), mask ratio 0.8;
  * ``'supmam'`` (seed 004 Eqs. (2)-(3)): the same reconstruction loss plus ``lambda_cls * CE(p / tau, y)`` where
    ``p`` are the logits of the classification branch on the average of the VISIBLE encoder tokens (Linear ->
    BatchNorm -> ReLU -> Linear), mask 0.4, ``lambda_cls`` 0.01. The paper leaves ``tau`` and the hidden width
    unstated; the defaults (10.0, 3072) are SupMAE's (enyac-group/supmae ``main_pretrain_supmae.py``,
    ``models_supmae.py``), whose loss ``CE(logits / temperature) * cls_loss_ratio`` seed 004 follows.
  * ``'mam_clap'`` (seed 004 Sec. 2.1, Eq. (1)): the decoder (one shifted-window block) and its head ``h`` (Linear +
    LayerNorm) predict the frozen CLAP teacher's features ``T`` at EVERY token; ``L = (1/l_v) sum_v ||Y - T||^2 +
    (1/l_m) sum_m ||Y - T||^2`` (``losses.visible_and_masked_mse``: per-token mean squared error over the feature
    axis, averaged separately over the visible and the masked tokens of the batch), mask 0.2.
  * ``'supmam_clap'``: MAM-CLAP's target loss + ``lambda_cls * CE(p / tau, y)`` (Eq. (3)), ``lambda_cls`` 1e-4.

The CLAP teacher (``config.teacher``; frozen: it is outside ``trainable``, kept in eval mode, its output is
``stop_gradient``-ed):
  * ``checkpoint``: a LAION-CLAP audio checkpoint (``uss_jax.convert.clap``; ``.safetensors`` / ``.npz`` copy, or a
    ``.pt`` where torch is installed) -> ``htsat.CLAPAudioEncoder``, front end ``config.teacher.frontend``
    (LAION: 48 kHz, 1024 / 480, 64 mels 50-14000 Hz); or
  * ``workdir``: a tagging run of this project with ``model.name == 'htsat'`` (``configs/sed_htsat.py``), restored
    from its checkpoint (latest, or ``config.teacher.step``) with that run's config.
  It runs on the batch waveform at ITS sample rate: when ``config.data.sample_rate`` differs, the waveform is
  resampled inside the jitted step by the rational polyphase filter of ``scipy.signal.resample_poly``
  (``resample_poly``: 16 kHz -> 48 kHz is up 3, down 1, a 61-tap Kaiser(5) low-pass). ``config.teacher.resample``
  False turns that into an error instead.
  Target (``config.teacher.target``): ``'tokens'`` = the final normalised HTS-AT token map (``HTSAT.tokens``, 768-d,
  32 time x 2 frequency tokens for 10 s), or ``'projected'`` = CLAP's ``audio_projection`` (Linear -> ReLU ->
  Linear, 512-d) applied to every token (checkpoint teachers only). Seed 004 does not say which CLAP feature it
  uses; the token map is the one with a spatial layout.
  Mapping onto the student's ``T x F`` patch grid (``map_token_grid``, ``config.teacher.grid_map``): both grids are
  taken to span the same clip and the same frequency range (fractions of each axis; the teacher's time axis is the
  clip it saw, the student's is its fbank frames incl. any zero padding), and each axis is resampled separately:
  ``'area'`` (default: each student cell = overlap-weighted mean of the teacher cells it covers; plain repetition
  when the student grid is an integer multiple: 32 x 2 -> 64 x 8 copies each teacher token to 2 x 4 student
  tokens), ``'bilinear'`` (half-pixel centres, edges clamped) or ``'nearest'``. Optionally
  (``config.mam_clap.norm_target``) each target token is normalised as AudioMAE's ``norm_pix_loss``.

The waveform batch comes from ``pretraining.pretraining_train_iterator`` (random crops; mixup when
``config.data.mixup_alpha`` > 0, off by default); the student's front end (``config.frontend``, AudioMAE Kaldi fbank)
and the teacher run inside the jitted step. Masking keeps a fixed number of tokens per example, so every shape is
static under jit.

Classification target (``config.supmam.target``): ``'multi_hot'`` (default) = the clip's multi-hot labels
normalised to a distribution (= one-hot for single-label clips; AudioSet's multi-label clips spread the mass),
``'label'`` = the primary class id.

Evaluation on the held-out split (``eval_outputs`` / ``summarize``): with a fixed masking key
(``config.eval_seed``), ``rec_loss`` (AudioMAE / SupMAM) or ``target_loss`` (CLAP objectives, Eq. (1) per clip),
averaged over clips; for the supervised objectives also ``mAP`` / ``accuracy`` of the branch under the training mask
ratio, and ``mAP_full`` / ``accuracy_full`` with every token visible.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import logging
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipelines import pipelines, pretraining
from uss_jax import losses, metrics
from uss_jax.audio import frontends
from uss_jax.audio.resample import resample_filter, resample_poly, resample_ratio  # noqa: F401  (re-exported)
from uss_jax.models import htsat, mae, vit
from uss_jax.tasks.tagging import LabeledAudioTask, data_source
from uss_jax.train import checkpoint as checkpoint_lib

OBJECTIVES = ("audiomae", "supmam", "mam_clap", "supmam_clap")
CLAP_OBJECTIVES = ("mam_clap", "supmam_clap")
SUPERVISED_OBJECTIVES = ("supmam", "supmam_clap")
CLS_TARGETS = ("multi_hot", "label")
GRID_MAPS = ("area", "bilinear", "nearest")
TEACHER_TARGETS = ("tokens", "projected")


def build_frontend(config):
  """The front end of ``config.frontend`` (``uss_jax.audio.frontends.get_frontend``)."""
  fe = dict(config.frontend)
  return frontends.get_frontend(fe.pop("name"), **fe)


def build_mae(config, num_classes: int, rngs: nnx.Rngs, out_dim: int | None = None) -> mae.MaskedAutoencoder:
  """The ``MaskedAutoencoder`` of ``config.model`` (+ a SupMAM branch with ``num_classes`` outputs when supervised).

  ``config.model.encoder``: ``size`` (a ``vit.VIT_PRESETS`` key) and any ``VisionTransformer`` argument
  (``embed_dim``, ``depth``, ``num_heads``, ``patch_size``, ``pos_embed_layout``, ``attention`` ...); ``img_size`` is
  the front end's ``(target_frames, num_mel_bins)``. ``config.model.decoder``: ``preset`` (``mae.DECODER_PRESETS``)
  and any ``MAEDecoder`` argument. Compute dtype: ``config.compute_dtype``.

  Args:
    config, num_classes, rngs: as above.
    out_dim: decoder prediction width; None = the patch size (reconstruction), else a teacher feature width.

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
  decoder = mae.build_decoder(encoder.embed_dim, out_dim or pt * pf, preset, dtype=dtype, rngs=rngs, **dec_cfg)
  classifier = None
  if objective in SUPERVISED_OBJECTIVES:
    classifier = mae.SupervisedBranch(encoder.embed_dim, num_classes, hidden=config.supmam.get("hidden", 3072),
                                      dtype=dtype, rngs=rngs)
  return mae.MaskedAutoencoder(encoder, decoder, mask_ratio=config.model.mask_ratio, classifier=classifier)


def per_example_masked_mse(pred: jax.Array, target_patches: jax.Array, mask: jax.Array,
                           norm_pix_loss: bool = True) -> jax.Array:
  """``losses.masked_patch_mse`` of each example on its own: ``(batch,)``."""
  fn = lambda p, t, m: losses.masked_patch_mse(p[None], t[None], m[None], norm_pix_loss=norm_pix_loss)
  return jax.vmap(fn)(pred, target_patches, mask)


def per_example_target_loss(pred: jax.Array, target: jax.Array, mask: jax.Array,
                            norm_target: bool = False) -> jax.Array:
  """``losses.visible_and_masked_mse`` (seed 004 Eq. (1)) of each example on its own: ``(batch,)``."""
  fn = lambda p, t, m: losses.visible_and_masked_mse(p[None], t[None], m[None], norm_target=norm_target)
  return jax.vmap(fn)(pred, target, mask)


# --------------------------------------------------------------------------------------------------------------------
# Teacher signal path: token-grid mapping (static numpy matrices evaluated at trace time); the resampler is
# ``uss_jax.audio.resample`` (re-exported above).
# --------------------------------------------------------------------------------------------------------------------


def grid_map_matrix(n_in: int, n_out: int, method: str = "area") -> np.ndarray:
  """``(n_out, n_in)`` matrix resampling one axis of a token grid, both grids spanning ``[0, 1)``.

  * ``'area'``: output cell ``i`` covers ``[i, i + 1) * n_in / n_out`` input cells; weight = overlap / cell width.
  * ``'bilinear'``: ``src = max((i + 0.5) n_in / n_out - 0.5, 0)``, linear between ``floor(src)`` and the next
    (clamped), half-pixel centres (PyTorch ``align_corners=False``).
  * ``'nearest'``: input ``floor((i + 0.5) n_in / n_out)``.

  Rows sum to 1.

  Raises:
    ValueError: unknown method or a size below 1.
  """
  if n_in < 1 or n_out < 1:
    raise ValueError(f"grid sizes must be >= 1, got {n_in} -> {n_out}")
  m = np.zeros((n_out, n_in))
  scale = n_in / n_out
  if method == "area":
    for i in range(n_out):
      lo, hi = i * scale, (i + 1) * scale
      for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
        m[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
  elif method == "bilinear":
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = src - i0
    np.add.at(m, (np.arange(n_out), i0), 1 - w)
    np.add.at(m, (np.arange(n_out), i1), w)
  elif method == "nearest":
    m[np.arange(n_out), np.minimum(np.floor((np.arange(n_out) + 0.5) * scale).astype(np.int64), n_in - 1)] = 1.0
  else:
    raise ValueError(f"unknown grid map {method!r}; expected one of {GRID_MAPS}")
  return m


def map_token_grid(tokens: jax.Array, grid: tuple[int, int], method: str = "area") -> jax.Array:
  """Maps a teacher token map onto the student's patch grid, separably over (time, freq).

  ``out[b, t, f] = sum_{j, k} Mt[t, j] Mf[f, k] tokens[b, j, k]`` with ``Mt = grid_map_matrix(Tt, T)``,
  ``Mf = grid_map_matrix(Ft, F)``.

  Args:
    tokens: ``(batch, Tt, Ft, C)`` time-major teacher tokens.
    grid: the student's ``(T, F)``.
    method: ``'area'`` | ``'bilinear'`` | ``'nearest'`` (``grid_map_matrix``).

  Returns:
    ``(batch, T * F, C)`` in the student's token order ``t * F + f``.
  """
  b, tt, ft, c = tokens.shape
  t, f = (int(g) for g in grid)
  mt = jnp.asarray(grid_map_matrix(tt, t, method), tokens.dtype)
  mf = jnp.asarray(grid_map_matrix(ft, f, method), tokens.dtype)
  out = jnp.einsum("tj,fk,bjkc->btfc", mt, mf, tokens, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(b, t * f, c)


# --------------------------------------------------------------------------------------------------------------------
# The teacher and the distillation model.
# --------------------------------------------------------------------------------------------------------------------


def load_htsat_run(workdir: str, step: int | None = None) -> tuple[htsat.HTSAT, ml_collections.ConfigDict]:
  """The HTS-AT of a tagging run of this project (latest checkpoint by default), in eval mode, and that run's config.

  Raises:
    FileNotFoundError: ``workdir`` has no (finished) checkpoint.
    ValueError: the run's model is not an HTS-AT.
  """
  restored, run_config, step = checkpoint_lib.restore_run_model(
      workdir, step, field="config.teacher.workdir",
      hint="train an HTS-AT tagger first: uss-jax train --config=configs/sed_htsat.py:smoke --workdir=...")
  if run_config.model.get("name") != "htsat":
    raise ValueError(f"config.teacher.workdir={workdir}: its model is {run_config.model.get('name')!r}, not 'htsat'")
  num_classes = int(np.asarray(restored["tscam_conv"]["kernel"]).shape[-1])
  # Built abstractly (no random initialisation), then filled with the restored arrays.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: htsat.build_htsat(run_config, num_classes, nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, restored))
  model = nnx.merge(graphdef, state)
  model.eval()
  logging.info("teacher: HTS-AT %d-d, %d classes, from %s step %d", model.num_features, num_classes, workdir, step)
  return model, run_config


def teacher_feature_dim(teacher: htsat.HTSAT | htsat.CLAPAudioEncoder, target: str = "tokens") -> int:
  """Width of the teacher target: the token width (768 for HTS-AT-tiny) or the CLAP projection's (512)."""
  if target == "projected":
    return teacher.joint_dim
  branch = teacher.audio_branch if isinstance(teacher, htsat.CLAPAudioEncoder) else teacher
  return branch.num_features


class CLAPDistiller(nnx.Module):
  """A ``MaskedAutoencoder`` student and the frozen teacher whose token map it predicts (MAM-CLAP, seed 004).

  Args:
    student: the masked autoencoder; its decoder's ``out_dim`` is the target width.
    teacher: ``htsat.HTSAT`` or ``htsat.CLAPAudioEncoder`` (front end inside, at ``teacher_rate``).
    data_rate, teacher_rate: sample rates (Hz) of the batch waveform and of the teacher's front end.
    target: ``'tokens'`` | ``'projected'`` (``CLAPAudioEncoder`` only).
    grid_map: ``'area'`` | ``'bilinear'`` | ``'nearest'``.

  Raises:
    ValueError: unknown target / grid map, or ``'projected'`` with a plain HTS-AT.
  """

  def __init__(self, student: mae.MaskedAutoencoder, teacher: htsat.HTSAT | htsat.CLAPAudioEncoder, *,
               data_rate: int, teacher_rate: int, target: str = "tokens", grid_map: str = "area"):
    if target not in TEACHER_TARGETS:
      raise ValueError(f"config.teacher.target: unknown target {target!r}; expected one of {TEACHER_TARGETS}")
    if grid_map not in GRID_MAPS:
      raise ValueError(f"config.teacher.grid_map: unknown map {grid_map!r}; expected one of {GRID_MAPS}")
    if target == "projected" and not isinstance(teacher, htsat.CLAPAudioEncoder):
      raise ValueError("config.teacher.target='projected' needs a CLAP checkpoint teacher (audio_projection)")
    self.student = student
    self.teacher = teacher
    self.data_rate, self.teacher_rate = int(data_rate), int(teacher_rate)
    self.resample = resample_ratio(self.data_rate, self.teacher_rate)
    self.target = target
    self.grid_map = grid_map

  @property
  def target_dim(self) -> int:
    return teacher_feature_dim(self.teacher, self.target)

  def teacher_targets(self, waveform: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Teacher features on the student grid: ``(batch, T * F, target_dim)`` float32, no gradient.

    ``waveform`` ``(batch, samples)`` at ``data_rate`` is resampled to ``teacher_rate`` (``resample_poly``), run
    through the teacher in eval mode, its ``tokens`` (optionally projected) mapped with ``map_token_grid``.
    """
    self.teacher.eval()
    up, down = self.resample
    wave = resample_poly(waveform, up, down) if (up, down) != (1, 1) else waveform
    tokens = self.teacher(wave)["tokens"]
    if self.target == "projected":
      tokens = self.teacher.project_tokens(tokens)
    return jax.lax.stop_gradient(map_token_grid(tokens.astype(jnp.float32), grid, self.grid_map))

  def grid(self, fbank: jax.Array) -> tuple[int, int]:
    """The student's token grid ``(T, F)`` for ``fbank`` ``(batch, frames, bins)``."""
    return self.student.encoder.grid_size(fbank.shape[1], fbank.shape[2])

  def __call__(self, fbank: jax.Array, **kwargs: Any) -> dict[str, jax.Array]:
    """The student's ``MaskedAutoencoder.__call__`` (``pred`` ``(batch, N, target_dim)``, ``mask``, ...)."""
    return self.student(fbank, **kwargs)

  def classify(self, fbank: jax.Array, **kwargs: Any) -> jax.Array:
    """The student's SupMAM branch on the whole input."""
    return self.student.classify(fbank, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# The task.
# --------------------------------------------------------------------------------------------------------------------


class MAMTask(LabeledAudioTask):
  """Masked audio pretraining on a labeled folder + CSV (config: ``objective``, ``data``, ``frontend``, ``model``,
  ``supmam``, ``eval_seed``; for the CLAP objectives also ``teacher`` and ``mam_clap``)."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    objective = config.get("objective", "audiomae")
    if objective not in OBJECTIVES:
      raise ValueError(f"config.objective: unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if self.supervised and config.supmam.get("target", "multi_hot") not in CLS_TARGETS:
      raise ValueError(f"config.supmam.target must be one of {CLS_TARGETS}, got {config.supmam.target!r}")
    self.frontend = build_frontend(config)
    self._teacher = None
    self._teacher_builder: Callable[[nnx.Rngs], nnx.Module] | None = None
    if self.distills:
      t = config.teacher
      if bool(t.get("checkpoint")) == bool(t.get("workdir")):
        raise ValueError("the CLAP objectives need exactly one of config.teacher.checkpoint (a LAION-CLAP audio "
                         "checkpoint) and config.teacher.workdir (an HTS-AT tagging run)")
      if t.get("target", "tokens") not in TEACHER_TARGETS:
        raise ValueError(f"config.teacher.target must be one of {TEACHER_TARGETS}, got {t.target!r}")
      if t.get("grid_map", "area") not in GRID_MAPS:
        raise ValueError(f"config.teacher.grid_map must be one of {GRID_MAPS}, got {t.grid_map!r}")
      # The optimizer trains the student only; the teacher stays in the state (sharded, checkpointed), unchanged.
      self.trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))

  @property
  def supervised(self) -> bool:
    return self.config.get("objective", "audiomae") in SUPERVISED_OBJECTIVES

  @property
  def distills(self) -> bool:
    return self.config.get("objective", "audiomae") in CLAP_OBJECTIVES

  # ---- teacher ----

  def prepare(self) -> None:
    super().prepare()
    if self.distills and self._teacher is None:
      self._load_teacher()

  def _load_teacher(self) -> None:
    t = self.config.teacher
    if t.get("workdir"):
      step = t.get("step", -1)
      model, run_config = load_htsat_run(t.workdir, None if step is None or step < 0 else int(step))
      self._teacher_builder = lambda rngs: htsat.build_htsat(run_config, model.num_classes, rngs)
      teacher_rate = run_config.frontend.sample_rate
    else:
      from uss_jax.convert import clap  # pylint: disable=import-outside-toplevel
      fe_cfg = dict(t.frontend)
      fe = frontends.get_frontend(fe_cfg.pop("name", "panns"), **fe_cfg)
      sd = clap.load_state_dict(t.checkpoint)
      arch = clap.clap_architecture(sd, freq_ratio=t.get("freq_ratio") or None,
                                    target_frames=t.get("target_frames") or None)
      model = nnx.eval_shape(lambda: clap.build_clap_encoder(arch, fe, nnx.Rngs(0)))
      report = clap.convert_clap(sd, model)
      model.eval()
      logging.info("teacher: LAION-CLAP audio encoder from %s (%d keys loaded, %d ignored)", t.checkpoint,
                   len(report["loaded"]), len(report["ignored"]))
      self._teacher_builder = lambda rngs: clap.build_clap_encoder(arch, fe, rngs)
      teacher_rate = fe.sample_rate
    data_rate = self.config.data.sample_rate
    if teacher_rate != data_rate and not t.get("resample", True):
      raise ValueError(f"the teacher runs at {teacher_rate} Hz but config.data.sample_rate is {data_rate} Hz and "
                       "config.teacher.resample is False")
    self._teacher = model
    self._teacher_rate = int(teacher_rate)

  @property
  def teacher(self) -> nnx.Module:
    """The loaded (concrete) teacher; ``prepare()`` loads it."""
    if self._teacher is None:
      self.prepare()
    return self._teacher

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    num_classes = len(self.class_names) if self.supervised else 0
    if not self.distills:
      return build_mae(self.config, num_classes, rngs)
    _ = self.teacher
    # A fresh (abstract) teacher: its weights are put in by initialize_state, or restored with the checkpoint.
    teacher = self._teacher_builder(rngs)
    t = self.config.teacher
    target = t.get("target", "tokens")
    student = build_mae(self.config, num_classes, rngs, out_dim=teacher_feature_dim(teacher, target))
    return CLAPDistiller(student, teacher, data_rate=self.config.data.sample_rate, teacher_rate=self._teacher_rate,
                         target=target, grid_map=t.get("grid_map", "area"))

  def initialize_state(self, state, shardings):
    """Puts the loaded teacher's weights into a freshly initialised state (CLAP objectives)."""
    if not self.distills:
      return state
    trained = nnx.state(self.teacher)
    placed = jax.tree.map(lambda v, s: jax.device_put(np.asarray(v), s), trained, shardings["model"]["teacher"])
    state["model"]["teacher"] = placed
    return state

  # ---- objective ----

  def _cls_target(self, batch) -> jax.Array:
    if self.config.supmam.get("target", "multi_hot") == "label":
      return batch["label"].astype(jnp.int32)
    y = batch["labels"].astype(jnp.float32)
    return y / jnp.maximum(y.sum(axis=-1, keepdims=True), 1.0)

  def _norm_target(self) -> bool:
    return bool(self.config.get("mam_clap", {}).get("norm_target", False))

  def loss(self, model, batch, rngs):
    wave = batch["waveform"]
    fbank = self.frontend(wave)
    out = model(fbank, rngs=rngs)
    if self.distills:
      target = model.teacher_targets(wave, model.grid(fbank))
      norm = self._norm_target()
      main = losses.visible_and_masked_mse(out["pred"], target, out["mask"], norm_target=norm)
      aux = {"target_loss": main,
             "masked_loss": losses.masked_patch_mse(out["pred"], target, out["mask"], norm_pix_loss=norm),
             "visible_loss": losses.masked_patch_mse(out["pred"], target, 1.0 - out["mask"], norm_pix_loss=norm)}
    else:
      main = losses.masked_patch_mse(out["pred"], out["target_patches"], out["mask"],
                                     norm_pix_loss=self.config.model.get("norm_pix_loss", True))
      aux = {"rec_loss": main}
    if not self.supervised:
      return main, aux
    s = self.config.supmam
    cls = losses.softmax_ce(out["logits"], self._cls_target(batch), temperature=s.temperature)
    return main + s.cls_weight * cls, {**aux, "cls_loss": cls}

  # ---- evaluation ----

  def eval_outputs(self, model, batch):
    wave = batch["waveform"]
    fbank = self.frontend(wave)
    out = model(fbank, rngs=nnx.Rngs(masking=jax.random.key(self.config.get("eval_seed", 0))))
    if self.distills:
      target = model.teacher_targets(wave, model.grid(fbank))
      result = {"target_loss": per_example_target_loss(out["pred"], target, out["mask"], self._norm_target())}
    else:
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
    key = "target_loss" if self.distills else "rec_loss"
    summary = {key: float(np.mean(outputs[key])), "num_clips": float(len(outputs[key]))}
    if self.supervised:
      for suffix in ("", "_full"):
        scores = outputs["scores" + suffix]
        summary["mAP" + suffix] = metrics.mean_average_precision(outputs["labels"], scores)
        summary["accuracy" + suffix] = metrics.accuracy(outputs["label"], scores)
    return summary

  # ---- data ----

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    d = self.config.data
    return pretraining.pretraining_train_iterator(
        data_source(self.dataset, "train"), clip_samples=self._clip_samples(d.clip_seconds),
        global_batch=self.config.batch_size, seed=self.config.seed, process_index=process_index,
        process_count=process_count, num_workers=self.config.input.get("num_workers", 0),
        mixup_alpha=d.get("mixup_alpha", 0.0), mixup_prob=d.get("mixup_prob", 1.0))

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    return pipelines.tagging_eval_batches(
        data_source(self.dataset, "test"), clip_samples=self._clip_samples(self.config.data.eval_clip_seconds),
        global_batch=self.config.get("eval_batch_size", self.config.batch_size), process_index=process_index,
        process_count=process_count)
