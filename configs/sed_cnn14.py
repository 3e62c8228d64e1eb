r"""Clip-level audio tagging / sound event detection with a PANNs Cnn14 (the SED that mines anchor segments).

Quick start on the embedded demo corpus (CPU, a few minutes):
  uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=/tmp/sed_smoke
On a labeled folder + CSV (e.g. the project's shared corpus at 32 kHz, full PANNs front end):
  uss-jax train --config=configs/sed_cnn14.py --workdir=/tmp/sed \
    --config.data.audio_dir=../shared/corpus/wav32k --config.data.csv_path=../shared/corpus/metadata.csv

Variants (``get_config(arg)``): "" = full Cnn14 at 32 kHz (PANNs front end: 1024/320, 64 mels 50-14000 Hz);
"smoke" = a narrow Cnn14 at 16 kHz (512/160, 64 mels 50-8000 Hz) that trains on 2 CPU cores in minutes;
"tiny" = the smoke layout at test size (what the test suite trains: a few steps in seconds).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in ("", "smoke", "tiny"):
    raise ValueError(f"configs/sed_cnn14.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  c = common.base_config()
  c.task = "tagging"
  smoke = variant in ("smoke", "tiny")
  sr = 16000 if smoke else 32000

  c.data = common.labeled_audio_data(sr)
  c.frontend = ml_collections.ConfigDict({
      "name": "panns", "sample_rate": sr, "n_fft": 512 if smoke else 1024, "hop_length": 160 if smoke else 320,
      "n_mels": 64, "fmin": 50.0, "fmax": 8000.0 if smoke else 14000.0})
  c.model = ml_collections.ConfigDict({
      "name": "cnn14",
      "channels": (16, 32, 64, 128, 128, 256) if smoke else (64, 128, 256, 512, 1024, 2048),
      "head": "decision_max",  # framewise output for anchor mining
      "dropout": 0.2,
      "spec_augment": True,
  })
  if smoke:
    # A few hundred clips: PANNs' regularisation (SpecAugment, dropout 0.2) keeps the model at the label prior for
    # the few minutes a smoke run has (measured on the dev corpus: mAP 0.18 with it, 0.40 without, 200 steps).
    c.model.spec_augment = False
    c.model.dropout = 0.1
    c.schedule.end_factor = 0.2
  c.optimizer.learning_rate = 1e-3
  c.schedule.warmup_steps = 20 if smoke else 1000
  if smoke:
    c.total_steps = 400
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every = 25
    c.eval_every = 100
    c.checkpoint_every = 100
  if variant == "tiny":
    c.model.channels = (4, 8, 8, 16, 16, 16)
    c.data.clip_seconds = 0.5
    c.data.eval_clip_seconds = 0.5
    c.total_steps = 6
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 2
    c.schedule.warmup_steps = 2
  elif not smoke:
    c.total_steps = 100_000
    c.log_every = 100
    c.eval_every = 5000
    c.checkpoint_every = 5000
  return c
