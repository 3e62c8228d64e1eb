r"""Fine-tuning / linear probing a masked-audio-pretrained ViT for tagging (AudioMAE recipe; seed 004's downstream).

Quick start on the embedded demo corpus (CPU): pretrain, then fine-tune from that run, or from scratch, or probe:
  uss-jax train --config=configs/audiomae.py:smoke --workdir=/tmp/mae_smoke
  uss-jax train --config=configs/audiomae_finetune.py:smoke --workdir=/tmp/ft_smoke \
    --config.init.workdir=/tmp/mae_smoke
  uss-jax train --config=configs/audiomae_finetune.py:smoke --workdir=/tmp/ft_scratch
  uss-jax train --config=configs/audiomae_finetune.py:smoke --workdir=/tmp/lp_smoke \
    --config.init.workdir=/tmp/mae_smoke --config.init.linear_probe=True
From a released AudioMAE checkpoint (``pretrained.pth``; torch needed to read it, or a .safetensors / .npz copy):
  uss-jax train --config=configs/audiomae_finetune.py --workdir=/tmp/as_ft --config.init.checkpoint=pretrained.pth \
    --config.data.audio_dir=/data/audioset/wav16k --config.data.csv_path=/data/audioset/train_and_eval.csv
ESC-50 5-fold cross-validation (accuracy = the mean of the five runs' final ``eval/accuracy``):
  for k in 1 2 3 4 5; do uss-jax train --config=configs/audiomae_finetune.py:esc50 --workdir=/tmp/esc50_fold$k \
    --config.data.test_fold=$k --config.data.tfds_dir=/tmp/esc50_tfds --config.init.checkpoint=pretrained.pth; done

Variants (``get_config(arg)``):
  "" = AudioMAE AudioSet-2M fine-tuning (facebookresearch/AudioMAE ``main_finetune_as.py`` with
       ``submit_ft_mask_bal.sh`` / ``ft_as.sh``): 10 s -> 1024 x 128 fbank (AudioSet stats), ViT-B/16 with global
       pool, drop path 0.1, 2-D token masking in training 0.2 time / 0.2 freq (``mask_t_prob`` / ``mask_f_prob``;
       seed 004's "SpecAugment 0.2 / 0.2"), fbank SpecAugment freqm 48 / timem 192 (``dataset.py``, one stripe each),
       mixup p 0.5 with λ ~ Beta(10, 10), BCE; AdamW (0.9, 0.999), weight decay 5e-4 (not on 1-D / cls / pos),
       layer decay 0.75, lr = blr * batch / 256 with blr 1e-3, batch 256, 100 epochs of 200 k clips (the reference's
       weighted-sampler epoch), 10 warm-up epochs, half-cycle cosine to min_lr 1e-6; the label-frequency weighted
       sampler (``data.weighted_sampler``: AudioMAE ``gen_weight.py`` weights, epochs of ``train_clips`` draws) and
       ``roll_mag_aug`` (random circular shift + Beta(10, 10) + 0.5 gain of each waveform, ``data.roll_mag_aug``).
  "esc50" = ESC-50 fold fine-tuning (``main_finetune_esc.py``): 5 s -> 512 frames (ESC-50 stats), the position table
       of the 1024-frame pretraining grid cropped to the first 32 time rows (``interpolate_pos_embed_audio``),
       SpecAugment freqm 96 / timem 24, no mixup, batch 64, blr 1e-3, weight decay 0.05, layer decay 0.75, 50 epochs
       of 1600 clips, 5 warm-up; 2-D masking 0.2 / 0.2 as seed 004. Loss BCE (the reference uses label-smoothed
       softmax CE here). ``data.test_fold`` picks the held-out fold (1..5).
  "smoke" = the encoder of ``configs/audiomae.py:smoke`` (192-d, 4 blocks, 2 s clips -> 192 frames) on the demo
       corpus, batch 16, so a smoke pretraining run initialises it (``init.workdir``).
  "tiny" = the encoder of ``configs/audiomae.py:tiny`` (test size).

``config.init``: ``workdir`` (a ``configs/audiomae.py`` / ``supmam.py`` run of the same encoder; latest checkpoint
unless ``step`` >= 0), ``checkpoint`` (an AudioMAE file, ``uss_jax.convert.audiomae``), ``linear_probe`` (train only
``fc_norm`` + head; set ``model.drop_path=0``, ``model.mask_t_prob=model.mask_f_prob=0`` and no SpecAugment / mixup for
MAE's linear-probe protocol).
"""

import ml_collections

from configs import audiomae, common

VARIANTS = ("", "esc50", "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/audiomae_finetune.py: unknown variant {variant!r} (use '', 'esc50', 'smoke' or "
                     "'tiny')")
  pre = audiomae.get_config("" if variant == "esc50" else variant)  # the pretraining run this one starts from
  c = common.base_config()
  c.task = "tagging"

  c.data = pre.data
  c.data.dataset = "labeled_audio"  # or "esc50" (data_pipelines/builders/esc50.py)
  c.data.esc50_dir = ""  # local ESC-50-master copy; "" = download
  c.data.test_fold = 0  # held-out fold (1..5 for ESC-50); 0 = the dataset's own train / test split
  c.data.mixup_alpha = 10.0
  c.data.mixup_prob = 0.5
  # AudioSet-2M fine-tuning (AudioMAE submit_ft_mask_bal.sh): roll + gain augmentation of each waveform and the
  # label-frequency weighted sampler (epochs of ``train_clips`` draws; weights from ``weight_csv`` if given, else
  # computed from the train split's labels once and cached in the workdir).
  c.data.roll_mag_aug = True
  c.data.weighted_sampler = True
  c.data.sampler_replacement = True  # the released script's effective value (see pretraining.WeightedEpochSampler)
  c.data.weight_csv = ""
  c.frontend = pre.frontend
  c.model = ml_collections.ConfigDict({
      "name": "vit",
      "encoder": dict(pre.model.encoder),
      "drop_path": 0.1,
      "mask_t_prob": 0.2,
      "mask_f_prob": 0.2,
      # fbank SpecAugment (frontends.spec_augment arguments); mask_value defaults to a log-fbank 0 after normalising.
      "spec_augment": {"freq_mask_width": 48, "time_mask_width": 192, "num_freq_masks": 1, "num_time_masks": 1},
  })
  c.init = ml_collections.ConfigDict({"workdir": "", "step": -1, "checkpoint": "", "linear_probe": False})

  c.batch_size = 256
  c.eval_batch_size = 256
  c.blr = 1e-3
  c.min_lr = 1e-6
  c.epochs = 100
  c.warmup_epochs = 10
  c.train_clips = 200_000  # AudioMAE's epoch_len with the weighted sampler
  c.optimizer.name = "adamw"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999
  c.optimizer.weight_decay = 5e-4
  c.optimizer.layer_decay = 0.75
  c.optimizer.learning_rate = c.get_ref("blr") * c.get_ref("batch_size") / 256
  c.schedule.name = "warmup_cosine"
  c.schedule.end_factor = c.get_ref("min_lr") / c.optimizer.get_ref("learning_rate")
  c.total_steps = c.get_ref("epochs") * c.get_ref("train_clips") // c.get_ref("batch_size")
  c.schedule.warmup_steps = c.get_ref("warmup_epochs") * c.get_ref("train_clips") // c.get_ref("batch_size")
  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint_every = 5000

  if variant == "esc50":
    c.data.dataset = "esc50"
    c.data.test_fold = 1
    c.data.clip_seconds = 5.0
    c.data.eval_clip_seconds = 5.0
    c.data.mixup_alpha = 0.0
    c.data.roll_mag_aug = False  # main_finetune_esc.py: plain shuffled epochs, no roll / gain
    c.data.weighted_sampler = False
    c.frontend.target_frames = 512
    c.frontend.norm_stats = "esc50"
    # The released pretraining table (1024 frames, swapped 'audiomae' layout), cropped to 32 time rows.
    c.model.encoder["pos_embed"] = "table"
    c.model.encoder["img_size"] = (1024, 128)
    c.model.spec_augment = {"freq_mask_width": 96, "time_mask_width": 24, "num_freq_masks": 1, "num_time_masks": 1}
    c.batch_size = 64
    c.eval_batch_size = 64
    c.optimizer.weight_decay = 0.05
    c.epochs = 50
    c.warmup_epochs = 5
    c.train_clips = 1600
    c.log_every = 25
    c.eval_every = 250
    c.checkpoint_every = 250
  elif variant == "":
    c.model.encoder["pos_embed"] = "table"  # filled from the checkpoint's pos_embed (AudioMAE: requires_grad=False)
  elif variant in ("smoke", "tiny"):
    # Shuffled epochs and no roll / gain, so the corpus figures of the small runs stay comparable.
    c.data.weighted_sampler = False
    c.data.roll_mag_aug = False
    c.model.spec_augment = {"freq_mask_width": 24, "time_mask_width": 48, "num_freq_masks": 1, "num_time_masks": 1}
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.05
    c.schedule.end_factor = 0.01
    c.batch_size = 16
    c.eval_batch_size = 16
    c.total_steps = 300
    c.schedule.warmup_steps = 30
    c.log_every = 25
    c.eval_every = 150
    c.checkpoint_every = 150
  if variant == "tiny":
    c.model.spec_augment = {"freq_mask_width": 16, "time_mask_width": 16, "num_freq_masks": 1, "num_time_masks": 1}
    c.batch_size = 8
    c.eval_batch_size = 8
    c.total_steps = 4
    c.schedule.warmup_steps = 1
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 2
  return c
