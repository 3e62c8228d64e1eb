r"""Clip-level audio tagging / sound event detection with HTS-AT (the MAM-CLAP teacher trained offline, later the
ST-SED-SEP / CaRE-SEP encoder).

Quick start on the embedded demo corpus (CPU, a few minutes):
  uss-jax train --config=configs/sed_htsat.py:smoke --workdir=/tmp/sed_htsat_smoke
On a labeled folder + CSV (e.g. the project's shared corpus at 32 kHz, the paper's front end and model):
  uss-jax train --config=configs/sed_htsat.py --workdir=/tmp/sed_htsat \
    --config.data.audio_dir=../shared/corpus/wav32k --config.data.csv_path=../shared/corpus/metadata.csv

Variants (``get_config(arg)``):
  "" = HTS-AT-tiny as released (RetroCirce/HTS-Audio-Transformer ``config.py`` / ``sed_model.py``): 32 kHz PANNs
       log-mel (1024 / 320, 64 mels 50-14000 Hz), 10 s clips (1001 frames stretched to 1024, folded 4x into a
       256 x 256 image), patch 4, window 8, embed 96, depths (2, 2, 6, 2), heads (4, 8, 16, 32), drop path 0.1,
       SpecAugment; batch 128, AdamW (0.9, 0.999, eps 1e-8, weight decay 0.05), lr 1e-3 scaled per epoch by
       0.02, 0.05, 0.1 (epochs 0-2), 0.1 (to 10), 0.05 (to 20), 0.02 (to 30), then 0.03 (``lr_foo``); epochs of
       ``train_clips / batch_size`` steps (set ``train_clips`` before the schedule: it is computed here).
  "smoke" = a narrow HTS-AT at 16 kHz (512 / 160, 64 mels 50-8000 Hz), 2.55 s clips (256 frames folded 2x into a
       128 x 128 image), embed 32, depths (2, 2, 2, 2), heads (2, 4, 8, 16), window 8 -> 8 time x 2 frequency tokens
       of 256-d; evaluated on 5.11 s (512 frames, 16 time tokens); trains on 2 CPU cores in minutes. It is the
       teacher of configs/mam_clap.py:smoke.
  "tiny" = test size (32 mels, 1.27 s -> 128 frames, a 64 x 64 image, patch 4, 3 stages of width 8 / 16 / 32 ->
       8 time x 2 frequency tokens); the teacher of configs/mam_clap.py:tiny.
"""

import ml_collections

from configs import common

VARIANTS = ("", "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/sed_htsat.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  c = common.base_config()
  c.task = "tagging"
  small = variant in ("smoke", "tiny")
  sr = 16000 if small else 32000

  c.data = common.labeled_audio_data(sr)
  c.frontend = ml_collections.ConfigDict({
      "name": "panns", "sample_rate": sr, "n_fft": 512 if small else 1024, "hop_length": 160 if small else 320,
      "n_mels": 64, "fmin": 50.0, "fmax": 8000.0 if small else 14000.0})
  c.model = ml_collections.ConfigDict({
      "name": "htsat", "size": "tiny", "embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (4, 8, 16, 32),
      "window_size": 8, "patch_size": 4, "freq_ratio": 4, "target_frames": 1024, "mlp_ratio": 4.0,
      "drop_path": 0.1, "dropout": 0.0, "spec_augment": True,
  })
  c.optimizer.update({"name": "adamw", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                      "weight_decay": 0.05})

  if not small:
    c.data.clip_seconds = 10.0
    c.data.eval_clip_seconds = 10.0
    c.batch_size = 128
    c.eval_batch_size = 128
    c.train_clips = 2_000_000  # AudioSet full train; the schedule below is in epochs of train_clips // batch_size
    c.epochs = 40
    steps_per_epoch = c.train_clips // c.batch_size
    c.schedule.name = "step"
    c.schedule.boundaries = [e * steps_per_epoch for e in (1, 2, 11, 21, 31)]
    c.schedule.factors = [0.02, 0.05, 0.1, 0.05, 0.02, 0.03]
    c.total_steps = c.epochs * steps_per_epoch
    c.log_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 5000
    return c

  # Small variants: a few hundred clips, a few minutes; like configs/sed_cnn14.py:smoke the regularisation is eased.
  c.model.update({"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (2, 4, 8, 16), "freq_ratio": 2,
                  "target_frames": 256, "drop_path": 0.0, "spec_augment": False})
  # 2.55 s = 40,800 samples -> 256 frames = the image width x freq_ratio (no stretch); evaluation on 5.11 s =
  # 512 frames = 2 x frame_multiple (twice the time tokens), so held-out clips are seen whole up to 5 s.
  c.data.clip_seconds = 2.55
  c.data.eval_clip_seconds = 5.11
  c.optimizer.weight_decay = 0.01
  c.schedule.name = "warmup_cosine"
  c.schedule.warmup_steps = 20
  c.schedule.end_factor = 0.2
  c.total_steps = 400
  c.batch_size = 16
  c.eval_batch_size = 16
  c.log_every = 25
  c.eval_every = 100
  c.checkpoint_every = 100
  if variant == "tiny":
    c.frontend.n_mels = 32
    c.model.update({"embed_dim": 8, "depths": (2, 1, 1), "num_heads": (1, 2, 4), "window_size": 4,
                    "freq_ratio": 2, "target_frames": 128})
    c.data.clip_seconds = 1.27  # 20,320 samples -> 128 frames (the configs/mam_clap.py:tiny clip)
    c.data.eval_clip_seconds = 1.27
    c.total_steps = 6
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 2
    c.schedule.warmup_steps = 2
  return c
