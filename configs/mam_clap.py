r"""MAM-CLAP pretraining: a ViT student predicts a frozen CLAP audio encoder's token map on visible AND masked
patches (seed 004, Sec. 2.1, Eq. (1)); SupMAM-CLAP (configs/supmam_clap.py) adds the classification branch.

Paper scale (AudioSet-2M at 16 kHz through a labeled folder + CSV; the teacher is a LAION-CLAP audio checkpoint,
e.g. 630k-audioset-best.pt converted once to .safetensors where torch is installed, see uss_jax/convert/clap.py):
  uss-jax train --config=configs/mam_clap.py --workdir=/tmp/mam_clap \
    --config.teacher.checkpoint=/ckpt/630k-audioset-best.safetensors \
    --config.data.audio_dir=/data/audioset/wav16k --config.data.csv_path=/data/audioset/train.csv
Smoke run (CPU, a few minutes): the teacher is an HTS-AT tagging run of this project, trained first:
  uss-jax train --config=configs/sed_htsat.py:smoke --workdir=/tmp/sed_htsat_smoke
  uss-jax train --config=configs/mam_clap.py:smoke --workdir=/tmp/mam_clap_smoke \
    --config.teacher.workdir=/tmp/sed_htsat_smoke

Variants (``get_config(arg)``), built on configs/audiomae.py (same encoder, front end, optimizer, schedule):
  "" = ViT-B/16 on 10 s of 16 kHz Kaldi fbank (1024 x 128 -> 64 x 8 tokens), mask 0.2 unstructured (Table 2), the
       decoder a single Swin-V2-style block with shifted local attention (512-d, 16 heads, window (4, 4), shift
       (2, 0)) whose head is Linear + LayerNorm (``mae.DECODER_PRESETS['mam_clap_local']``), no augmentation.
       Teacher: LAION-CLAP HTSAT-tiny (48 kHz, 1024 / 480, 64 mels 50-14000 Hz; the 16 kHz batch is resampled 3x
       inside the step); target = its final 768-d token map (32 time x 2 frequency for 10 s), area-mapped onto the
       64 x 8 student grid (``config.teacher.target='projected'`` uses CLAP's 512-d projection of each token).
       Seed 004 trained with batch 128 ("learning rate 0.0002"); as in configs/supmam.py the learning rate is
       ``blr * batch / 256`` with AudioMAE's blr 2e-4 and batch 512 by default (``--config.batch_size=128``).
  "smoke" = the audiomae smoke student (192-d ViT, 4 blocks) on 2.55 s clips (253 fbank frames padded to 256 =
       16 x 8 tokens, demo corpus) with the one-block decoder at 128-d; teacher from ``--config.teacher.workdir``
       (configs/sed_htsat.py:smoke: 16 kHz, the same 2.55 s clip -> 8 x 2 tokens of 256-d).
  "tiny" = test size (the audiomae tiny student; teacher = a configs/sed_htsat.py:tiny run).
"""

import ml_collections

from configs import audiomae

VARIANTS = audiomae.VARIANTS


def clap_config(variant: str, objective: str) -> ml_collections.ConfigDict:
  """The config shared by configs/mam_clap.py and configs/supmam_clap.py."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  c = audiomae.mam_config(variant, objective=objective)
  c.model.mask_ratio = 0.2
  c.model.norm_pix_loss = False  # unused by the CLAP target loss
  decoder = {"preset": "mam_clap_local"}
  if variant == "smoke":
    decoder.update({"embed_dim": 128, "num_heads": 4, "meta_hidden": 64})
    # The configs/sed_htsat.py:smoke teacher's clip: 2.55 s -> 253 fbank frames padded to 256 = 16 x 8 tokens.
    c.data.clip_seconds = c.data.eval_clip_seconds = 2.55
    c.frontend.target_frames = 256
  elif variant == "tiny":
    decoder.update({"embed_dim": 32, "num_heads": 2, "meta_hidden": 16})
    c.data.clip_seconds = c.data.eval_clip_seconds = 1.27  # 125 fbank frames (padded to 128); the teacher's clip
  c.model.decoder = decoder
  c.data.mixup_alpha = 0.0  # seed 004: no augmentation during pretraining
  c.teacher = ml_collections.ConfigDict({
      "checkpoint": "",  # a LAION-CLAP audio checkpoint (.safetensors / .npz, or .pt with torch installed)
      "workdir": "",  # or an HTS-AT tagging run of this project (configs/sed_htsat.py)
      "step": -1,  # checkpoint step of the tagging run (-1 = latest)
      "target": "tokens",  # 'tokens' (final HTS-AT token map) | 'projected' (CLAP audio_projection per token)
      "grid_map": "area",  # 'area' | 'bilinear' | 'nearest' onto the student's patch grid
      "resample": True,  # resample the batch to the teacher's rate inside the step (else equal rates required)
      # Checkpoint teachers only: the LAION-CLAP front end and the image layout not stored in the weights.
      "frontend": {"name": "panns", "sample_rate": 48000, "n_fft": 1024, "hop_length": 480, "n_mels": 64,
                   "fmin": 50.0, "fmax": 14000.0},
      "freq_ratio": 4,
      "target_frames": 1024,
  })
  c.mam_clap = ml_collections.ConfigDict({"norm_target": False})
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/mam_clap.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  return clap_config(variant, objective="mam_clap")
