r"""SoundBeam target sound extraction with class-label and enrollment clues (seed 002, baseline SoundBeam).

Quick start on the embedded demo corpus (CPU, a few minutes):
  uss-jax train --config=configs/soundbeam.py:smoke --workdir=/tmp/tse_smoke

Variants:
  ""      the paper (seed 002 Sec. VI): 16 kHz, 6 s mixtures of 3-4 events with 2 targets, Conv-TasNet N=512, kernel
          16 / stride 8, B=Sc=128, H=512, X=8, R=3, gLN, D=256, enrollment encoder kernel 40 / stride 20; loss
          0.5 L(class) + 0.5 L(enrollment), L = -0.9 SNR - 0.1 SI-SNR; batch 24; 80 epochs of 100K mixtures
          (333,334 steps). Optimiser: Adam 1e-3 with gradient clipping at norm 5 (Conv-TasNet / TD-SpeakerBeam
          training; seed 002 does not state it). Eval: 1,000 fixed mixtures (the paper's validation-set size; its
          10K test set is 19 GB of float32 audio), every epoch.
  "smoke" 1.5 s mixtures, a narrow model (N=64, B=Sc=32, H=64, X=5, R=2, D=64), 240 steps of 4 mixtures
          (8 extractions per clue) on the demo corpus: a few CPU minutes.
  "tiny"  test size (0.5 s mixtures, N=16, a couple of steps).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in ("", "smoke", "tiny"):
    raise ValueError(f"configs/soundbeam.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  small = variant in ("smoke", "tiny")
  c = common.base_config()
  c.task = "tse"
  c.data = common.labeled_audio_data(16000)
  c.data.mixture_seconds = 6.0
  c.data.enrollment_seconds = 6.0  # enrollment crop (zero-padded when the clip is shorter)
  c.data.num_events = (3, 4)  # foreground events per mixture, inclusive (Semantic Hearing / seed 002)
  c.data.snr_db = (5.0, 15.0)  # event-to-background SNR range (data_pipelines.mixing.scaper_mix)
  c.data.normalize = True  # mixture and targets divided by the mixture's peak
  c.data.eval_mixtures = 1000
  c.data.eval_seed = 1234
  c.model = ml_collections.ConfigDict({
      "size": "paper",  # uss_jax.models.soundbeam.SIZES; any SoundBeam argument below overrides it
      "mask_activation": "relu",
      "encoder_activation": "relu",
  })
  # min_target_db: extractions whose target is quieter than this relative to the mixture (a window cut from the
  # silent part of a sparse clip) are left out of the loss and the metrics (uss_jax.tasks.tse.audible_targets).
  c.loss = ml_collections.ConfigDict({"alpha": 0.5, "snr_weight": 0.9, "si_snr_weight": 0.1, "min_target_db": -30.0})
  c.optimizer.update(name="adam", learning_rate=1e-3, grad_clip_norm=5.0)
  c.schedule.update(name="constant")
  c.batch_size = 24
  c.eval_batch_size = 24
  c.total_steps = 333_334
  c.log_every = 100
  c.eval_every = 4_167  # one epoch of 100K mixtures
  c.checkpoint_every = 4_167
  if small:
    c.model.size = "smoke"
    c.data.mixture_seconds = 1.5
    c.data.enrollment_seconds = 1.5
    c.data.eval_mixtures = 32
    c.schedule.update(name="warmup_cosine", warmup_steps=20, end_factor=0.1)
    c.total_steps = 240
    c.batch_size = 4
    c.eval_batch_size = 8
    c.log_every = 25
    c.eval_every = 240
    c.checkpoint_every = 120
  if variant == "tiny":
    c.model.size = "tiny"
    c.data.mixture_seconds = 0.5
    c.data.enrollment_seconds = 0.5
    c.data.eval_mixtures = 10
    c.batch_size = 8
    c.eval_batch_size = 8
    c.total_steps = 2
    c.log_every = 1
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
