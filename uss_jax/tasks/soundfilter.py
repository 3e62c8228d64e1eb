"""SoundFilter: conditioned separation of one sound from a two-sound mixture (seed 003, Kilgour et al. 2022).

Data (Sec. 3.3.1, ``data_pipelines.extraction``): the target is a 2 s random crop (``config.data.crop_seconds``) of a
labeled / captioned clip; a 2 s crop of another clip at a gain uniform in +-4 dB (``gain_db``) relative to the
target crop's level (``gain_reference='target'``: input SNR uniform in [-4, +4] dB; ``'raw'``: relative to the clip
as stored, what runs configured before the key existed used), is the background; mixture = target + background; a
second crop of the target clip that shares no sample with the first is the audio condition. Model
(``uss_jax.models.soundfilter``): a FiLM-conditioned waveform U-Net with an "enhanced" and a "suppressed" output.
Loss (Sec. 3.3.1, Eq. (1) with the sign erratum of /work/shared/seeds/INDEX.md):

  L = softplus(c - SI-SDR(enhanced, target)) + softplus(c - SI-SDR(suppressed, background))
      + w * softplus(c - SNR(enhanced + suppressed, mixture)),        c = 30 dB (``config.loss.clip_db``), w = 1,

each term averaged over the examples where it is defined (``soundfilter_loss``, ``uss_jax.losses``): a term with a
silent reference (mean square < ``config.loss.silence_power``, 1e-8) and an example with a silent mixture or
condition are left out. The paper says nothing about silence; short sounds zero-padded to the clip length (most of the
demo corpus's 2 s clips) make it common, and SI-SDR against an all-zero reference is undefined.

Conditioning (``config.condition.mode``):
  * ``'soundwords'`` (the paper, Sec. 3.1 / 3.3.1): the FROZEN SoundWords co-embedding of a SoundWords run of this
    project (``config.condition.soundwords_workdir``, a ``configs/soundwords.py`` run; ``soundwords_step``: 0 = its
    latest checkpoint). Per training example, with probability ``config.data.text_rate`` (0.3) the condition is the
    unit-norm text-tower embedding of the clip's caption, else the unit-norm audio-tower embedding of the second crop
    of the target clip (``uss_jax.models.soundfilter.SoundWordsFilter``). The SoundWords weights are copied into the
    model at initialisation (``initialize_state``) and never trained (``trainable`` = the generator). Captions are
    fixed, so their embeddings are computed once at ``prepare`` (the frozen text tower in eval mode, exactly what
    the step would compute) and fed with each example (``text_embedding``); the audio embedding of the random crop
    is computed inside the step.
  * ``'audio'``: the conditioning encoder of ref. [11] (Gfeller et al. 2021), a waveform encoder of the generator's
    family pooled over time to ``D`` numbers, trained jointly with the generator on the audio condition;
    ``config.data.text_rate`` must be 0 (no text tower).

Evaluation: a fixed set (``extraction.soundfilter_eval_set``: one example per test clip, generators seeded by
``(config.data.eval_seed, clip)``; ``config.data.eval_repeats`` = R > 1 appends R - 1 more per clip, seeded by
``(eval_seed + r, clip)``) built once and stored in ``<workdir>/soundfilter_eval_set.npz``, so every run and
every evaluation scores the same examples. Every example is separated twice in mode 'soundwords': with the audio
condition (the second crop) and with the text condition (its caption). Metrics (``summarize``): mean SI-SDR and
SI-SDRi (``uss_jax.metrics.si_sdr`` / Le Roux et al. 2019) of enhanced vs target and suppressed vs background, mean
SNR of enhanced + suppressed vs the mixture (``*_text``: the same with text queries), over the examples that are
mixtures of two sounds (``scored``: no silent mixture, target, background or condition; ``num_scored``). Artifacts:
``eval_step<N>_examples.csv`` (per example, NaN where not scored) and a few example WAVs.
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

from data_pipelines import extraction, mixing, pipelines
from uss_jax import io, losses, metrics
from uss_jax.models import registry
from uss_jax.models import soundfilter as soundfilter_lib
from uss_jax.tasks.tagging import LabeledAudioTask, data_source

MODES = ("audio", "soundwords")
EVAL_SET_FILE = "soundfilter_eval_set.npz"
NUM_EXAMPLE_WAVS = 2  # evaluation examples written as WAV files (mixture, target, condition, enhanced, suppressed)
MODEL_OPTIONS = soundfilter_lib.MODEL_OPTIONS
SILENCE_POWER = 1e-8  # mean square below which a waveform counts as silent (RMS 1e-4, -80 dBFS)
# Fields of the eval set that record how it was built (checked when a stored set is reused).
_META = ("meta_crop_samples", "meta_sample_rate", "meta_seed", "meta_gain_db", "meta_num_clips", "meta_repeats",
         "meta_gain_reference", "meta_crop_rule")


def active(x: jax.Array | np.ndarray, silence_power: float = SILENCE_POWER):
  """Whether each waveform ``(..., samples)`` is not silent: mean square >= ``silence_power`` (jnp or numpy)."""
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.mean(xp.square(x.astype(xp.float32)), axis=-1) >= silence_power


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def soundfilter_loss(mixture: jax.Array, target: jax.Array, background: jax.Array, enhanced: jax.Array,
                     suppressed: jax.Array, *, condition: jax.Array | None = None, clip_db: float = 30.0,
                     consistency_weight: float = 1.0, silence_power: float = SILENCE_POWER,
                     condition_is_text: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
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
    condition_is_text: ``(batch,)``, nonzero where the example is conditioned on its caption: its audio condition is
      then not used, so its silence does not leave the example out.

  Returns:
    ``(loss, aux)``: scalar loss and scalar logs ``loss_enhanced``, ``loss_suppressed``, ``loss_consistency``
    (the three terms), ``si_sdr_enhanced`` (mean over the examples of ``loss_enhanced``, dB), ``si_sdri_enhanced``
    (mean over the examples of both ``loss_enhanced`` and ``loss_suppressed``, dB) and ``scored_fraction`` (share
    of the batch in the consistency term).

  Raises:
    ValueError: shapes differ.
  """
  row = active(mixture, silence_power)
  if condition is not None:
    cond_ok = active(condition, silence_power)
    if condition_is_text is not None:
      cond_ok = cond_ok | (condition_is_text > 0)
    row = row & cond_ok
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
         # over the two-sound mixtures only (the evaluation's ``scored`` rows): with a silent background the
         # mixture is the target and its SI-SDR is unbounded, so one such row would swamp the mean
         "si_sdri_enhanced": _masked_mean(si_sdr_enh - losses.si_sdr(mixture, target), w_enh * w_sup),
         "scored_fraction": jnp.mean(w_con)}
  return enh + sup + consistency_weight * con, aux


model_options = soundfilter_lib.model_options


def build_model(config, rngs: nnx.Rngs) -> soundfilter_lib.SoundFilter:
  """The mode-'audio' ``SoundFilter`` of ``config.model`` (``size`` + overrides), computation dtype
  ``config.compute_dtype`` (no system interface; the task builds ``registry.build_system``)."""
  return soundfilter_lib.build_soundfilter(
      config.model.get("size", "paper"), overrides=model_options(config),
      dtype=jnp.dtype(config.get("compute_dtype", "float32")), rngs=rngs)


def check_condition(config) -> str:
  """The conditioning mode of ``config`` after the checks of the module docstring.

  Raises:
    ValueError: ``config.condition.mode`` unknown; mode ``'soundwords'`` without
      ``config.condition.soundwords_workdir``; ``config.data.text_rate`` outside [0, 1], or > 0 in mode ``'audio'``
      (text conditioning needs the SoundWords text tower).
  """
  mode = soundfilter_lib.condition_mode(config)
  if mode not in MODES:
    raise ValueError(f"config.condition.mode: unknown conditioning mode {mode!r}; expected one of {MODES}")
  text_rate = float(config.data.get("text_rate", 0.0) or 0.0)
  if not 0.0 <= text_rate <= 1.0:
    raise ValueError(f"config.data.text_rate={text_rate} must lie in [0, 1]")
  if mode == "soundwords" and not (config.condition.get("soundwords_workdir") or ""):
    raise ValueError("config.condition.mode='soundwords' needs config.condition.soundwords_workdir: the workdir of a "
                     "trained SoundWords run (uss-jax train --config=configs/soundwords.py:smoke --workdir=DIR)")
  if mode == "audio" and text_rate > 0:
    raise ValueError(f"config.data.text_rate={text_rate}: text conditioning needs the SoundWords text tower "
                     "(config.condition.mode='soundwords'); with mode 'audio' set config.data.text_rate=0")
  return mode


class SoundFilterTask(LabeledAudioTask):
  """Config: ``data`` (labeled audio + ``crop_seconds``, ``gain_db``, ``text_rate``, ``eval_seed``), ``condition``
  (``mode``, ``soundwords_workdir``, ``soundwords_step``), ``model`` (``name='soundfilter'``, ``size`` +
  ``MODEL_OPTIONS``), ``loss`` (``clip_db``, ``consistency_weight``, ``silence_power``).

  Raises (at construction):
    ValueError: ``check_condition``; a crop that is not a whole number of the generator's total stride
      (``config.data.crop_seconds``).
  Raises (at ``prepare``, mode 'soundwords'):
    FileNotFoundError / ValueError: the SoundWords workdir is missing, not a SoundWords run, at another sample rate,
      or of another embedding width than ``config.model.embedding_dim``.
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
    # the level the background gain is relative to (data_pipelines.mixing.soundfilter_example); configs written
    # before the key existed mixed at the clips' stored levels ('raw')
    self.gain_reference = str(d.get("gain_reference", "raw"))
    if self.gain_reference not in mixing.GAIN_REFERENCES:
      raise ValueError(f"config.data.gain_reference={self.gain_reference!r}: expected one of {mixing.GAIN_REFERENCES}")
    # where the crops are drawn (mixing.soundfilter_example): 'random' (the paper; configs without the key) or
    # 'audible' (no silent crop of a clip with sound)
    self.crop_rule = str(d.get("crop_rule", "random"))
    if self.crop_rule not in mixing.CROP_RULES:
      raise ValueError(f"config.data.crop_rule={self.crop_rule!r}: expected one of {mixing.CROP_RULES}")
    self.silence_power = float((config.get("loss", None) or {}).get("silence_power", SILENCE_POWER))
    self.context: dict | None = None
    self.soundwords = None  # the SoundWords run (uss_jax.retrieval.SoundWordsRun), mode 'soundwords'
    self.caption_embeddings: dict[str, np.ndarray] = {}

  # ---- data ----

  def prepare(self) -> None:
    super().prepare()
    if self.context is None:
      self.context = self._context()
      io.write_on_process0("system_context", lambda: registry.write_context(self.workdir, self.context))
    if self.eval_set is None:
      self.eval_set = self._eval_set()
      if self.mode == "soundwords":
        self.eval_set["text_embedding"] = self._caption_table(
            [extraction.decode_caption(c) for c in self.eval_set["caption"]])

  def _context(self) -> dict:
    """What the registry needs besides the config (``build_soundfilter_system``): in mode 'soundwords' the SoundWords
    run's architecture, tokenizer and weights digest (the condition space), read from the run."""
    if self.mode != "soundwords":
      return {"mode": self.mode}
    from uss_jax import retrieval  # pylint: disable=import-outside-toplevel
    from uss_jax.models import uss as uss_lib  # pylint: disable=import-outside-toplevel

    c = self.config.condition
    run = retrieval.load_soundwords(c.soundwords_workdir, int(c.get("soundwords_step", 0) or 0) or None)
    if run.sample_rate != int(self.config.data.sample_rate):
      raise ValueError(f"the SoundWords run {run.workdir} embeds {run.sample_rate} Hz audio, "
                       f"config.data.sample_rate={self.config.data.sample_rate}")
    dim = int(model_options(self.config).get("embedding_dim", run.embedding_dim))
    if dim != run.embedding_dim:
      raise ValueError(f"config.model.embedding_dim={dim} differs from the SoundWords run's embedding width "
                       f"{run.embedding_dim} ({run.workdir})")
    self.soundwords = run
    digest = uss_lib.weights_digest(nnx.to_pure_dict(run.state), name="soundwords")
    ctx = run.context
    return {"mode": self.mode, "soundwords": ctx["soundwords"], "tokenizer": ctx["tokenizer"],
            "max_tokens": int(ctx["max_tokens"]), "soundwords_workdir": run.workdir, "soundwords_step": run.step,
            "condition_space": digest}

  def _caption_table(self, captions: list[str]) -> np.ndarray:
    """Unit-norm SoundWords text embeddings ``(len(captions), D)`` float32 (cached per distinct caption)."""
    from uss_jax import retrieval  # pylint: disable=import-outside-toplevel

    missing = sorted({t for t in captions if t not in self.caption_embeddings})
    if any(not t.strip() for t in missing):
      raise ValueError("a clip has no caption: text conditioning (mode 'soundwords') needs a caption for every clip "
                       "(the CSV's caption column)")
    if missing:
      for t, e in zip(missing, retrieval.embed_texts(self.soundwords, missing)):
        self.caption_embeddings[t] = e
    return np.stack([self.caption_embeddings[t] for t in captions]).astype(np.float32)


  def _eval_meta(self, num_clips: int) -> dict[str, np.ndarray]:
    d = self.config.data
    return {"meta_crop_samples": np.int64(self.crop_samples), "meta_sample_rate": np.int64(d.sample_rate),
            "meta_seed": np.int64(d.get("eval_seed", 1234)), "meta_gain_db": np.float64(d.get("gain_db", 4.0)),
            "meta_num_clips": np.int64(num_clips), "meta_repeats": np.int64(self._eval_repeats()),
            # index into mixing.GAIN_REFERENCES (numeric, like every field of the npz)
            "meta_gain_reference": np.int64(mixing.GAIN_REFERENCES.index(self.gain_reference)),
            "meta_crop_rule": np.int64(mixing.CROP_RULES.index(self.crop_rule))}

  def _eval_repeats(self) -> int:
    r = int(self.config.data.get("eval_repeats", 1) or 1)
    if r < 1:
      raise ValueError(f"config.data.eval_repeats={r} must be >= 1")
    return r

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
      if got["meta_repeats"] is None:  # sets stored before eval_repeats existed hold one example per clip
        got["meta_repeats"] = np.int64(1)
      if got["meta_gain_reference"] is None:  # and sets stored before gain_reference existed used 'raw'
        got["meta_gain_reference"] = np.int64(mixing.GAIN_REFERENCES.index("raw"))
      if got["meta_crop_rule"] is None:  # and before crop_rule existed, random crops
        got["meta_crop_rule"] = np.int64(mixing.CROP_RULES.index("random"))
      diff = [f"{k[5:]}: stored {None if got[k] is None else got[k].item()} vs config {expected[k].item()}"
              for k in _META if got[k] is None or got[k].item() != expected[k].item()]
      if diff:
        raise ValueError(f"{path} was built for other settings ({'; '.join(diff)}): use a new workdir or delete the "
                         "file to score a new evaluation set")
      return stored
    d = self.config.data
    # Repeat r draws every clip's example again from generators seeded by (eval_seed + r, clip); r = 0 is the
    # one-example-per-clip set.
    parts = [extraction.soundfilter_eval_set(source, crop_samples=self.crop_samples,
                                             seed=int(d.get("eval_seed", 1234)) + r,
                                             gain_db=float(d.get("gain_db", 4.0)),
                                             gain_reference=self.gain_reference, crop_rule=self.crop_rule)
             for r in range(self._eval_repeats())]
    eval_set = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if jax.process_index() == 0 and "://" not in self.workdir:
      os.makedirs(self.workdir, exist_ok=True)
      tmp = path + ".tmp"
      pipelines.save_eval_set(tmp, {**eval_set, **expected})
      os.replace(tmp, path)
    return eval_set

  def train_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    d = self.config.data
    source = data_source(self.dataset, "train")
    text = None
    if self.mode == "soundwords":
      self._caption_table([extraction.decode_caption(extraction.encode_caption(source[i].get("caption", b"")))
                           for i in range(len(source))])  # every training caption, once, before the workers start
      text = _CaptionEmbeddings(dict(self.caption_embeddings))
    return extraction.soundfilter_train_iterator(
        source, crop_samples=self.crop_samples, global_batch=self.config.batch_size,
        seed=self.config.seed, process_index=process_index, process_count=process_count,
        num_workers=self.config.input.get("num_workers", 0), gain_db=float(d.get("gain_db", 4.0)),
        text_rate=float(d.get("text_rate", 0.0) or 0.0), gain_reference=self.gain_reference,
        crop_rule=self.crop_rule, tokenizer=text)

  def eval_iterator(self, process_index: int, process_count: int) -> Iterator[dict[str, np.ndarray]]:
    keep = ("mixture", "target", "background", "condition", "clip", "background_clip", "background_gain_db")
    if self.mode == "soundwords":
      keep += ("text_embedding",)
    return pipelines.eval_set_batches({k: self.eval_set[k] for k in keep},
                                      global_batch=self.config.get("eval_batch_size", self.config.batch_size),
                                      process_index=process_index, process_count=process_count)

  # ---- the recipe ----

  def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
    # Mode 'soundwords': a fresh (abstract) SoundWords inside; its weights are put in by initialize_state or restored
    # with the checkpoint.
    return registry.build_system(self.config, self.context or self._context(), rngs)

  @property
  def trainable(self):
    """The generator, and in mode 'audio' the jointly trained conditioning encoder; never the SoundWords model."""
    if self.mode == "soundwords":
      return nnx.All(nnx.Param, nnx.PathContains("generator"))
    return nnx.Param

  def initialize_state(self, state, shardings):
    """Mode 'soundwords': the SoundWords run's weights (both towers, BatchNorm statistics) into a fresh state."""
    if self.mode != "soundwords":
      return state
    trained = self.soundwords.state
    state["model"]["soundwords"] = jax.tree.map(lambda v, s: jax.device_put(np.asarray(v), s), trained,
                                                shardings["model"]["soundwords"])
    return state

  def condition_embedding(self, model, batch, use_text: jax.Array | None) -> jax.Array:
    """The SoundWords condition ``(batch, D)``: the caption's embedding where ``use_text`` > 0, else the audio
    tower's on the conditioning crop (eval mode, no gradient)."""
    model.soundwords.eval()
    audio = model.embed_audio(batch["condition"])
    if use_text is None:
      return audio
    return jnp.where(use_text[:, None] > 0, batch["text_embedding"].astype(jnp.float32), audio)

  def _forward(self, model, batch, use_text=None):
    if self.mode == "soundwords":
      return model.separate(batch["mixture"], self.condition_embedding(model, batch, use_text))
    return model(batch["mixture"], batch["condition"])

  def loss(self, model, batch, rngs):
    del rngs
    use_text = batch.get("use_text") if self.mode == "soundwords" else None
    out = self._forward(model, batch, use_text)
    lc = self.config.get("loss", None) or {}
    loss, aux = soundfilter_loss(batch["mixture"], batch["target"], batch["background"], out["enhanced"],
                                 out["suppressed"], condition=batch["condition"],
                                 clip_db=float(lc.get("clip_db", 30.0)),
                                 consistency_weight=float(lc.get("consistency_weight", 1.0)),
                                 silence_power=self.silence_power, condition_is_text=use_text)
    if use_text is not None:
      aux["text_fraction"] = jnp.mean(use_text.astype(jnp.float32))
    return loss, aux

  def eval_outputs(self, model, batch):
    out = self._forward(model, batch)
    result = {"enhanced": out["enhanced"], "suppressed": out["suppressed"], "mixture": batch["mixture"],
              "target": batch["target"], "background": batch["background"], "clip": batch["clip"],
              "background_clip": batch["background_clip"], "background_gain_db": batch["background_gain_db"],
              "condition_power": jnp.mean(jnp.square(batch["condition"]), axis=-1)}
    if self.mode == "soundwords":
      text = self._forward(model, batch, jnp.ones(batch["mixture"].shape[:1], jnp.float32))
      result["enhanced_text"], result["suppressed_text"] = text["enhanced"], text["suppressed"]
    return result

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
    ``snr_consistency`` (SNR of enhanced + suppressed vs the mixture); with text outputs (mode 'soundwords') the same
    names + ``_text`` for the caption-conditioned separation of the same mixtures. The trivial baselines of the same
    examples: ``si_sdr_mixture`` (the mixture as the estimate of the target; its SI-SDRi, and that of 0.5 x mixture,
    is 0 by definition: SI-SDR is scale-invariant) and ``baseline_si_sdri_silence`` (an all-zero estimate, scored
    with the metric's eps: SI-SDR 0 dB)."""
    ok = self.scored(outputs)
    mix = np.asarray(outputs["mixture"], np.float64)
    target = np.asarray(outputs["target"], np.float64)
    mix_sdr = metrics.si_sdr(mix, target)
    out = {"si_sdr_mixture": np.where(ok, mix_sdr, np.nan),
           "baseline_si_sdri_silence": np.where(ok, metrics.si_sdr(np.zeros_like(mix), target) - mix_sdr, np.nan)}
    for query in ("", "_text") if "enhanced_text" in outputs else ("",):
      for kind, ref in (("enhanced", "target"), ("suppressed", "background")):
        est, r = np.asarray(outputs[kind + query], np.float64), np.asarray(outputs[ref], np.float64)
        out[f"si_sdr_{kind}{query}"] = np.where(ok, metrics.si_sdr(est, r), np.nan)
        out[f"si_sdri_{kind}{query}"] = np.where(ok, out[f"si_sdr_{kind}{query}"] - metrics.si_sdr(mix, r), np.nan)
      total = (np.asarray(outputs["enhanced" + query], np.float64)
               + np.asarray(outputs["suppressed" + query], np.float64))
      out[f"snr_consistency{query}"] = np.where(ok, metrics.snr(total, mix), np.nan)
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


class _CaptionEmbeddings:
  """Picklable ``caption -> {'text_embedding': (D,) float32}`` of a precomputed table (the SoundFilter transform's
  per-example hook; grain workers receive it by pickling)."""

  def __init__(self, table: Mapping[str, np.ndarray]):
    self.table = {k: np.asarray(v, np.float32) for k, v in table.items()}

  def __call__(self, caption: str) -> dict[str, np.ndarray]:
    return {"text_embedding": self.table[extraction.decode_caption(extraction.encode_caption(caption))]}
