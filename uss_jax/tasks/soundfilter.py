"""SoundFilter: conditioned separation of one sound from a two-sound mixture (seed 003, Kilgour et al. 2022).

Data (Sec. 3.3.1, ``data_pipelines.extraction``): the target is a 2 s random crop (``config.data.crop_seconds``) of a
labeled / captioned clip; a 2 s crop of another clip, scaled by a gain uniform in +-4 dB (``gain_db``), is the
background; mixture = target + background; a second crop of the target clip that shares no sample with the first is
the audio condition. Model (``uss_jax.models.soundfilter``): a FiLM-conditioned waveform U-Net with an "enhanced" and a
"suppressed" output. Loss (Sec. 3.3.1, Eq. (1) with the sign erratum of /work/shared/seeds/INDEX.md):

  L = softplus(c - SI-SDR(enhanced, target)) + softplus(c - SI-SDR(suppressed, background))
      + w * softplus(c - SNR(enhanced + suppressed, mixture)),        c = 30 dB (``config.loss.clip_db``), w = 1,

each term averaged over the examples where it is defined (``soundfilter_loss``, ``uss_jax.losses``): a term with a
silent reference (mean square < ``config.loss.silence_power``, 1e-8) and an example with a silent mixture or
condition are left out. The paper says nothing about silence; short sounds zero-padded to the clip length (most of the
demo corpus's 2 s clips) make it common, and SI-SDR against an all-zero reference is undefined.

Conditioning (``config.condition.mode``):
  * ``'audio'`` (the only mode for now): the conditioning encoder of ref. [11] (Gfeller et al. 2021), a waveform
    encoder of the generator's family pooled over time to ``D`` numbers, trained jointly with the generator on the
    audio condition; ``config.data.text_rate`` must be 0.
  * ``'soundwords'`` (reserved): the paper's frozen SoundWords co-embedding, whose text tower makes text conditioning
    (training text rate 0.3 in the paper) possible. It needs a SoundWords run of this project, which does not exist
    yet: this mode raises until then.

Evaluation: a fixed set (``extraction.soundfilter_eval_set``: one example per test clip, generators seeded by
``(config.data.eval_seed, clip)``) built once and stored in ``<workdir>/soundfilter_eval_set.npz``, so every run and
every evaluation scores the same examples; audio condition. Metrics (``summarize``): mean SI-SDR and SI-SDRi
(``uss_jax.metrics.si_sdr`` / Le Roux et al. 2019) of enhanced vs target and suppressed vs background, mean SNR of
enhanced + suppressed vs the mixture, over the examples that are mixtures of two sounds (``scored``: no silent
mixture, target, background or condition; ``num_scored``). Artifacts: ``eval_step<N>_examples.csv`` (per example, NaN
where not scored) and a few example WAVs.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import extraction, pipelines
from uss_jax import losses, metrics
from uss_jax.models import soundfilter as soundfilter_lib
from uss_jax.tasks.tagging import LabeledAudioTask, data_source

MODES = ("audio", "soundwords")
EVAL_SET_FILE = "soundfilter_eval_set.npz"
NUM_EXAMPLE_WAVS = 2  # evaluation examples written as WAV files (mixture, target, condition, enhanced, suppressed)
MODEL_OPTIONS = ("channels", "strides", "embedding_dim", "dilations", "residual_kernel", "io_kernel",
                 "bottleneck_kernel", "num_groups", "normalize_input", "output_skip")
SILENCE_POWER = 1e-8  # mean square below which a waveform counts as silent (RMS 1e-4, -80 dBFS)
# Fields of the eval set that record how it was built (checked when a stored set is reused).
_META = ("meta_crop_samples", "meta_sample_rate", "meta_seed", "meta_gain_db", "meta_num_clips")


def active(x: jax.Array | np.ndarray, silence_power: float = SILENCE_POWER):
  """Whether each waveform ``(..., samples)`` is not silent: mean square >= ``silence_power`` (jnp or numpy)."""
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.mean(xp.square(x.astype(xp.float32)), axis=-1) >= silence_power


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def soundfilter_loss(mixture: jax.Array, target: jax.Array, background: jax.Array, enhanced: jax.Array,
                     suppressed: jax.Array, *, condition: jax.Array | None = None, clip_db: float = 30.0,
                     consistency_weight: float = 1.0,
                     silence_power: float = SILENCE_POWER) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The SoundFilter training loss (module docstring; seed 003 Sec. 3.3.1, Eq. (1) sign-corrected).

  Each of the three terms is the mean over the examples where it is defined: an SI-SDR / SNR against a silent
  reference (mean square < ``silence_power``) has no meaning (every estimate projects onto zero), and an example
  whose mixture or audio condition is silent (digital silence: the demo corpus pads short sounds with zeros) is left
  out entirely, which also keeps its gradient at exactly zero (a GroupNorm of an all-zero map would multiply the
  gradient by 1 / sqrt(eps) at every layer). With no silent waveform in the batch this is the paper's loss, each
  term averaged over the batch.

  Args:
    mixture, target, background, enhanced, suppressed: ``(batch, samples)`` waveforms.
    condition: the audio condition ``(batch, samples')`` (None: not checked for silence).
    clip_db: the soft clip ``c`` in dB (30).
    consistency_weight: weight ``w`` of the consistency term (1; 0 = the paper's "- consistency loss" ablation).
    silence_power: mean-square threshold of silence (1e-8, i.e. -80 dBFS RMS; 0 = no example is left out).

  Returns:
    ``(loss, aux)``: scalar loss and scalar logs ``loss_enhanced``, ``loss_suppressed``, ``loss_consistency``
    (the three terms), ``si_sdr_enhanced`` and ``si_sdri_enhanced`` (means over the examples of ``loss_enhanced``,
    dB) and ``scored_fraction`` (share of the batch in the consistency term).

  Raises:
    ValueError: shapes differ.
  """
  row = active(mixture, silence_power)
  if condition is not None:
    row = row & active(condition, silence_power)
  w_con = row.astype(jnp.float32)
  w_enh = (row & active(target, silence_power)).astype(jnp.float32)
  w_sup = (row & active(background, silence_power)).astype(jnp.float32)
  si_sdr_enh = losses.si_sdr(enhanced, target)
  enh = _masked_mean(jax.nn.softplus(clip_db - si_sdr_enh), w_enh)
  sup = _masked_mean(losses.soft_clipped_si_sdr_loss(suppressed, background, clip_db=clip_db, reduction="none"),
                     w_sup)
  con = _masked_mean(losses.mixture_consistency_loss(mixture, enhanced, suppressed, clip_db=clip_db,
                                                     reduction="none"), w_con)
  aux = {"loss_enhanced": enh, "loss_suppressed": sup, "loss_consistency": con,
         "si_sdr_enhanced": _masked_mean(si_sdr_enh, w_enh),
         "si_sdri_enhanced": _masked_mean(si_sdr_enh - losses.si_sdr(mixture, target), w_enh),
         "scored_fraction": jnp.mean(w_con)}
  return enh + sup + consistency_weight * con, aux


def model_options(config) -> dict:
  """``config.model`` as ``build_soundfilter`` overrides (the fields of ``MODEL_OPTIONS`` present in it)."""
  m = config.model
  return {k: (tuple(m[k]) if k in ("strides", "dilations") else m[k]) for k in MODEL_OPTIONS if k in m}


def build_model(config, rngs: nnx.Rngs) -> soundfilter_lib.SoundFilter:
  """The ``SoundFilter`` of ``config.model`` (``size`` + overrides), computation dtype ``config.compute_dtype``."""
  return soundfilter_lib.build_soundfilter(
      config.model.get("size", "paper"), overrides=model_options(config),
      dtype=jnp.dtype(config.get("compute_dtype", "float32")), rngs=rngs)


def check_condition(config) -> str:
  """The conditioning mode of ``config`` after the checks of the module docstring.

  Raises:
    ValueError: ``config.condition.mode`` unknown or ``'soundwords'`` (needs a SoundWords run, future), or
      ``config.data.text_rate > 0`` in mode ``'audio'`` (text conditioning needs SoundWords).
  """
  condition = config.get("condition", None) or {}
  mode = condition.get("mode", "audio") or "audio"
  if mode not in MODES:
    raise ValueError(f"config.condition.mode: unknown conditioning mode {mode!r}; expected one of {MODES}")
  if mode == "soundwords":
    raise ValueError("config.condition.mode='soundwords' needs a trained SoundWords run (the frozen text/audio "
                     "co-embedding of seed 003), which this project does not provide yet; use mode 'audio'")
  text_rate = float(config.data.get("text_rate", 0.0) or 0.0)
  if text_rate > 0:
    raise ValueError(f"config.data.text_rate={text_rate}: text conditioning needs a SoundWords text tower "
                     "(config.condition.mode='soundwords', future); with mode 'audio' set config.data.text_rate=0")
  return mode


class SoundFilterTask(LabeledAudioTask):
  """Config: ``data`` (labeled audio + ``crop_seconds``, ``gain_db``, ``text_rate``, ``eval_seed``), ``condition``
  (``mode``), ``model`` (``size`` + ``MODEL_OPTIONS``), ``loss`` (``clip_db``, ``consistency_weight``,
  ``silence_power``).

  Raises (at construction):
    ValueError: ``check_condition``; a crop that is not a whole number of the generator's total stride
      (``config.data.crop_seconds``).
  """

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.mode = check_condition(config)
    d = config.data
    self.crop_samples = self._clip_samples(d.crop_seconds)
    options = {**soundfilter_lib.SIZES.get(config.model.get("size", "paper"), {}), **model_options(config)}
    stride = math.prod(tuple(options.get("strides", (1,))))
    if self.crop_samples % stride:
      raise ValueError(f"config.data.crop_seconds={d.crop_seconds} gives {self.crop_samples} samples at "
                       f"{d.sample_rate} Hz, not a multiple of the SoundFilter total stride {stride}")
    self.eval_set: dict[str, np.ndarray] | None = None
    self.silence_power = float((config.get("loss", None) or {}).get("silence_power", SILENCE_POWER))

  # ---- data ----

  def prepare(self) -> None:
    super().prepare()
    if self.eval_set is None:
      self.eval_set = self._eval_set()

  def _eval_meta(self, num_clips: int) -> dict[str, np.ndarray]:
    d = self.config.data
    return {"meta_crop_samples": np.int64(self.crop_samples), "meta_sample_rate": np.int64(d.sample_rate),
            "meta_seed": np.int64(d.get("eval_seed", 1234)), "meta_gain_db": np.float64(d.get("gain_db", 4.0)),
            "meta_num_clips": np.int64(num_clips)}

  def _eval_set(self) -> dict[str, np.ndarray]:
    """The stored eval set of the workdir, or a new one (saved by process 0).

    Raises:
      ValueError: the stored set was built with another crop, sample rate, seed, gain or test split.
    """
    path = os.path.join(self.workdir, EVAL_SET_FILE)
    source = data_source(self.dataset, "test")
    expected = self._eval_meta(len(source))
    if os.path.exists(path):
      stored = pipelines.load_eval_set(path)
      got = {k: stored.pop(k, None) for k in _META}
      diff = [f"{k[5:]}: stored {None if got[k] is None else got[k].item()} vs config {expected[k].item()}"
              for k in _META if got[k] is None or got[k].item() != expected[k].item()]
      if diff:
        raise ValueError(f"{path} was built for other settings ({'; '.join(diff)}): use a new workdir or delete the "
                         "file to score a new evaluation set")
      return stored
    d = self.config.data
    eval_set = extraction.soundfilter_eval_set(source, crop_samples=self.crop_samples,
                                               seed=int(d.get("eval_seed", 1234)), gain_db=float(d.get("gain_db", 4.0)))
    if jax.process_index() == 0 and "://" not in self.workdir:
      os.makedirs(self.workdir, exist_ok=True)
      tmp = path + ".tmp"
      pipelines.save_eval_set(tmp, {**eval_set, **expected})
      os.replace(tmp, path)
    return eval_set

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    d = self.config.data
    return extraction.soundfilter_train_iterator(
        data_source(self.dataset, "train"), crop_samples=self.crop_samples, global_batch=self.config.batch_size,
        seed=self.config.seed, process_index=process_index, process_count=process_count,
        num_workers=self.config.input.get("num_workers", 0), gain_db=float(d.get("gain_db", 4.0)),
        text_rate=float(d.get("text_rate", 0.0) or 0.0))

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    keep = ("mixture", "target", "background", "condition", "clip", "background_clip", "background_gain_db")
    return pipelines.eval_set_batches({k: self.eval_set[k] for k in keep},
                                      global_batch=self.config.get("eval_batch_size", self.config.batch_size),
                                      process_index=process_index, process_count=process_count)

  # ---- the recipe ----

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return build_model(self.config, rngs)

  def loss(self, model, batch, rngs):
    del rngs
    out = model(batch["mixture"], batch["condition"])
    lc = self.config.get("loss", None) or {}
    return soundfilter_loss(batch["mixture"], batch["target"], batch["background"], out["enhanced"],
                            out["suppressed"], condition=batch["condition"], clip_db=float(lc.get("clip_db", 30.0)),
                            consistency_weight=float(lc.get("consistency_weight", 1.0)),
                            silence_power=self.silence_power)

  def eval_outputs(self, model, batch):
    out = model(batch["mixture"], batch["condition"])
    return {"enhanced": out["enhanced"], "suppressed": out["suppressed"], "mixture": batch["mixture"],
            "target": batch["target"], "background": batch["background"], "clip": batch["clip"],
            "background_clip": batch["background_clip"], "background_gain_db": batch["background_gain_db"],
            "condition_power": jnp.mean(jnp.square(batch["condition"]), axis=-1)}

  def scored(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(examples,)`` bool: the examples that are mixtures of two sounds with a condition, i.e. none of mixture,
    target, background and condition is silent (mean square < ``config.loss.silence_power``). Elsewhere SI-SDR or
    SI-SDRi is undefined (a silent reference) or meaningless (a silent background makes the mixture the target, whose
    SI-SDR is then unbounded); the paper evaluates "mixtures of two arbitrary sounds"."""
    ok = np.asarray(outputs["condition_power"]) >= self.silence_power
    for k in ("mixture", "target", "background"):
      ok &= active(np.asarray(outputs[k]), self.silence_power)
    return ok

  def per_example(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-example dB values, each ``(examples,)``, NaN where not ``scored``: ``si_sdr_{enhanced,suppressed}`` (vs
    target / background), ``si_sdri_{enhanced,suppressed}`` (minus the SI-SDR of the mixture as the estimate) and
    ``snr_consistency`` (SNR of enhanced + suppressed vs the mixture)."""
    ok = self.scored(outputs)
    mix = np.asarray(outputs["mixture"], np.float64)
    out = {}
    for kind, ref in (("enhanced", "target"), ("suppressed", "background")):
      est, r = np.asarray(outputs[kind], np.float64), np.asarray(outputs[ref], np.float64)
      out[f"si_sdr_{kind}"] = np.where(ok, metrics.si_sdr(est, r), np.nan)
      out[f"si_sdri_{kind}"] = np.where(ok, out[f"si_sdr_{kind}"] - metrics.si_sdr(mix, r), np.nan)
    total = np.asarray(outputs["enhanced"], np.float64) + np.asarray(outputs["suppressed"], np.float64)
    out["snr_consistency"] = np.where(ok, metrics.snr(total, mix), np.nan)
    return out

  def summarize(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means of ``per_example`` over the ``scored`` examples (dB; NaN if none), ``num_examples`` (all) and
    ``num_scored``."""
    values = self.per_example(outputs)
    ok = self.scored(outputs)
    summary = {k: float(np.mean(v[ok])) if ok.any() else float("nan") for k, v in values.items()}
    summary["num_examples"] = float(len(ok))
    summary["num_scored"] = float(ok.sum())
    return summary

  def write_artifacts(self, outputs: Mapping[str, np.ndarray], summary: Mapping[str, float], step: int) -> None:
    """``eval_step<N>_examples.csv`` (one row per example: clips, gain, the ``per_example`` values) and
    ``examples/<i>_{mixture,target,condition,enhanced,suppressed}.wav`` for the first ``NUM_EXAMPLE_WAVS`` examples
    (float WAV at the data sample rate, overwritten at every evaluation)."""
    del summary
    if "://" in self.workdir:
      return
    values = self.per_example(outputs)
    names = list(values)
    with open(os.path.join(self.workdir, f"eval_step{step}_examples.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["clip", "background_clip", "background_gain_db", *[f"{n}_dB" for n in names]])
      for i in range(len(outputs["mixture"])):
        w.writerow([int(outputs["clip"][i]), int(outputs["background_clip"][i]),
                    f"{float(outputs['background_gain_db'][i]):.2f}", *[f"{values[n][i]:.3f}" for n in names]])
    import soundfile as sf  # pylint: disable=import-outside-toplevel

    out_dir = os.path.join(self.workdir, "examples")
    os.makedirs(out_dir, exist_ok=True)
    conditions = {int(c): i for i, c in enumerate(self.eval_set["clip"])}
    for i in range(min(NUM_EXAMPLE_WAVS, len(outputs["mixture"]))):
      audio = {k: outputs[k][i] for k in ("mixture", "target", "enhanced", "suppressed")}
      audio["condition"] = self.eval_set["condition"][conditions[int(outputs["clip"][i])]]
      for kind, wav in audio.items():
        sf.write(os.path.join(out_dir, f"{i}_{kind}.wav"), np.asarray(wav, np.float32),
                 int(self.config.data.sample_rate), subtype="FLOAT")
