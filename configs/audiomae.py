r"""AudioMAE pretraining: ViT-B encoder on Kaldi fbank patches, 80 % masking, 16-block Swin-V2-style decoder.

Quick start on the embedded demo corpus (CPU, a few minutes):
  uss-jax train --config=configs/audiomae.py:smoke --workdir=/tmp/audiomae_smoke
Paper scale (AudioSet-2M through a labeled folder + CSV at 16 kHz; 8 GPUs, data parallel):
  uss-jax train --config=configs/audiomae.py --workdir=/tmp/audiomae \
    --config.data.audio_dir=/data/audioset/wav16k --config.data.csv_path=/data/audioset/train.csv \
    --config.compute_dtype=bfloat16

Variants (``get_config(arg)``):
  "" = the paper / released configuration (Huang et al. 2022; facebookresearch/AudioMAE ``models_mae.py``,
       ``submit_pretrain_audioset2M.sh``): 10 s at 16 kHz -> 1024 frames x 128 mel bins (AudioSet fbank stats),
       ViT-B/16 (512 tokens), mask 0.8 (102 kept), decoder_mode 1 (16 Swin blocks, 512-d, 16 heads, window (4, 4),
       shift (2, 0) on odd blocks), norm_pix_loss; batch 512, AdamW (0.9, 0.95), weight decay 1e-4 (not on 1-D
       parameters), lr = blr * batch / 256 with blr 2e-4, 33 epochs with 3 warm-up epochs then half-cycle cosine.
       Steps follow ``epochs * train_clips // batch_size`` (references: overriding ``--config.batch_size`` rescales
       the learning rate and the step counts; ``train_clips`` ~2 M for AS-2M). The released position tables use
       the swapped-grid ``'audiomae'`` sin-cos layout (uss_jax.models.vit), kept here for checkpoint compatibility.
  "smoke" = a tiny ViT (192-d, 4 blocks) and a 4-block Swin decoder (128-d) on the demo corpus, 2 s clips -> 192
       frames (12 x 8 tokens), batch 16; trains on 2 CPU cores in a few minutes.
  "tiny" = test size (32-d, 1 block encoder, 2-block decoder, 1.3 s -> 128 frames = 8 x 8 tokens).
"""

import ml_collections

from configs import common

VARIANTS = ("", "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/audiomae.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  return mam_config(variant, objective="audiomae")


def mam_config(variant: str, objective: str) -> ml_collections.ConfigDict:
  """The masked-audio-modelling config shared by configs/audiomae.py and configs/supmam.py."""
  c = common.base_config()
  c.task = "mam"
  c.objective = objective
  c.eval_seed = 0  # masking key of the evaluation (same masks at every evaluation)
  small = variant in ("smoke", "tiny")

  c.data = common.labeled_audio_data(16000)
  c.data.clip_seconds = 10.0
  c.data.eval_clip_seconds = 10.0
  c.frontend = ml_collections.ConfigDict({
      "name": "audiomae", "sample_rate": 16000, "num_mel_bins": 128, "target_frames": 1024,
      "norm_stats": "audioset"})
  c.model = ml_collections.ConfigDict({
      "encoder": {"size": "base", "patch_size": 16, "pos_embed_layout": "audiomae", "attention": "einsum"},
      "decoder": {"preset": "audiomae_swin"},
      "mask_ratio": 0.8,
      "norm_pix_loss": True,
  })
  # SupMAM branch (used when objective == 'supmam'; seed 004 + SupMAE defaults, see uss_jax/tasks/mam.py).
  c.supmam = ml_collections.ConfigDict({"cls_weight": 0.01, "temperature": 10.0, "hidden": 3072,
                                        "target": "multi_hot"})

  c.batch_size = 512
  c.eval_batch_size = 512
  c.blr = 2e-4
  c.epochs = 33
  c.warmup_epochs = 3
  c.train_clips = 2_000_000
  c.optimizer.name = "adamw"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.weight_decay = 1e-4
  c.optimizer.learning_rate = c.get_ref("blr") * c.get_ref("batch_size") / 256
  c.schedule.name = "warmup_cosine"
  c.total_steps = c.get_ref("epochs") * c.get_ref("train_clips") // c.get_ref("batch_size")
  c.schedule.warmup_steps = c.get_ref("warmup_epochs") * c.get_ref("train_clips") // c.get_ref("batch_size")
  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint_every = 5000

  if small:
    c.model.encoder = {"size": "small", "embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": 16,
                       "pos_embed_layout": "time_freq", "attention": "einsum"}
    c.model.decoder = {"preset": "audiomae_swin", "embed_dim": 128, "depth": 4, "num_heads": 4,
                       "meta_hidden": 64}
    c.supmam.hidden = 256
    c.data.clip_seconds = 2.0  # 198 Kaldi frames, cut to 192 = 12 x 16
    c.data.eval_clip_seconds = 2.0
    c.frontend.target_frames = 192
    c.frontend.norm_stats = "esc50"  # demo corpus fbank: mean -6.75, std 5.56 (ESC-50: -6.63 / 5.36)
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.05
    c.total_steps = 400
    c.schedule.warmup_steps = 40
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every = 25
    c.eval_every = 200
    c.checkpoint_every = 200
  if variant == "tiny":
    c.model.encoder = {"size": "small", "embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 16,
                       "pos_embed_layout": "time_freq", "attention": "einsum"}
    c.model.decoder = {"preset": "audiomae_swin", "embed_dim": 32, "depth": 2, "num_heads": 2, "meta_hidden": 16}
    c.supmam.hidden = 32
    c.data.clip_seconds = 1.3  # 128 Kaldi frames = 8 x 16
    c.data.eval_clip_seconds = 1.3
    c.frontend.target_frames = 128
    c.total_steps = 4
    c.schedule.warmup_steps = 1
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 2
  return c
