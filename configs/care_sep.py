r"""CaRE-SEP (seed 001): a Swin-UNet whose shared encoder embeds the query and separates the mixture.

Train an anchor detector first (the Cnn14 whose SED anchors and fixed evaluation mixtures every separation recipe of
this project shares), optionally an HTS-AT tagger for the paper's "Init", then:
  uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=/tmp/sed
  uss-jax train --config=configs/sed_htsat.py:smoke --workdir=/tmp/sed_htsat
  uss-jax train --config=configs/care_sep.py:smoke --workdir=/tmp/care --config.query.workdir=/tmp/sed \
    --config.ablation.init=True --config.init.workdir=/tmp/sed_htsat
  uss-jax separate --checkpoint /tmp/care --mixture mix.wav --query-audio dog.wav -o dog.wav

Variants (``get_config(arg)``, comma-separated):
  "" = the paper (Sec. 3.2): 32 kHz, STFT 1024 / 320, 64 mel bands, the HTS-AT Swin (D = 96, depths (2, 2, 6, 2),
       heads (4, 8, 16, 32), window 8, patch 4, folded 4x: 10 s segments = a 256 x 256 image), 768-d query; AdamW
       (0.9, 0.999, 1e-8, weight decay 5e-4), batch 96, lr factors 0.05 / 0.1 / 0.2 for the first three epochs then
       halved every ten epochs down to 0.05 (base lr 1e-3: the paper gives only the factors).
  "2048" = D = 256 (2048-d query).
  "cls" = CLS+SEP: + the tagging BCE on the shared encoder's token-semantic head (``loss.cls_weight``).
  "smoke" = 16 kHz, STFT 512 / 160, 64 bands, the configs/sed_htsat.py:smoke Swin (D = 32, depths (2, 2, 2, 2),
       heads (2, 4, 8, 16), window 8, folded 2x), 2 s segments; CPU minutes. "tiny" = test size.
Table 2's switches: ``--config.ablation.grad`` / ``.init`` / ``.shared_encoder`` (``init`` needs
``--config.init.workdir``, an HTS-AT tagging run of the same Swin sizes).
"""

import ml_collections

from configs import common


def joint_separation_base(small: bool, variant: str) -> ml_collections.ConfigDict:
  """What CaRE-SEP and ST-SED-SEP share: the separation pipeline (the Cnn14 detector's anchors and evaluation set),
  the Eq. (1) loss on both sources, the optimizer, Table 2's switches and the init run."""
  sr = 16000 if small else 32000
  c = common.base_config()
  c.task = "joint_separation"
  c.data = common.labeled_audio_data(sr)
  c.data.segment_seconds = 2.0 if small else 10.0
  c.data.anchors = "offline"
  c.data.normalize = False  # mixture = a_1 + a_2 exactly: both sources are targets
  c.data.eval_pairs_per_class = 4 if small else 100
  c.data.eval_seed = 1234
  c.data.mining_batch_size = 8
  # The anchor detector (a configs/sed_cnn14.py run): anchor segments and the fixed evaluation mixtures.
  c.query = ml_collections.ConfigDict({"workdir": "", "step": None, "output": "embedding"})
  c.query.step = ml_collections.FieldReference(None, field_type=int)
  c.loss = ml_collections.ConfigDict({"mae_weight": 1.0, "sdr_weight": 1.0, "cls_weight": 0.0})
  c.ablation = ml_collections.ConfigDict({"grad": True, "init": False, "shared_encoder": True})
  c.init = ml_collections.ConfigDict({"workdir": "", "step": None})
  c.init.step = ml_collections.FieldReference(None, field_type=int)
  c.optimizer.update(name="adamw", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-4)
  if small:
    c.data.holdout_fraction = 0.1 if "smoke" in variant else 0.25
    c.schedule.update(name="warmup_cosine", warmup_steps=20, end_factor=0.2)
    c.total_steps = 400
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 25
    c.eval_every = 400
    c.checkpoint_every = 200
  else:
    c.batch_size = 96
    c.eval_batch_size = 32
    c.train_clips = 2_000_000  # AudioSet full train; epochs of train_clips // batch_size steps
    steps_per_epoch = c.train_clips // c.batch_size
    c.schedule.update(name="step", boundaries=[e * steps_per_epoch for e in (1, 2, 12, 22)],
                      factors=[0.05, 0.1, 0.2, 0.1, 0.05])
    c.total_steps = 40 * steps_per_epoch
    c.log_every = 100
    c.eval_every = 20_000
    c.checkpoint_every = 20_000
  if "tiny" in variant:
    c.data.eval_pairs_per_class = 1
    c.total_steps = 4
    c.batch_size = 8  # divisible by the tests' 8 fake devices
    c.eval_batch_size = 8
    c.log_every = 1
    c.eval_every = 4
    c.checkpoint_every = 2
    c.schedule.warmup_steps = 1
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  flags = [f for f in (arg or "").split(",") if f]
  unknown = set(flags) - {"smoke", "tiny", "2048", "cls"}
  if unknown or ("smoke" in flags and "tiny" in flags):
    raise ValueError(f"configs/care_sep.py: unknown variant {arg!r} (flags: smoke | tiny, 2048, cls)")
  small = "smoke" in flags or "tiny" in flags
  c = joint_separation_base(small, ",".join(flags))
  c.model = ml_collections.ConfigDict({
      "name": "care_sep",
      "mask": "magnitude",  # 'magnitude' (sigmoid, mixture phase) | 'complex' (complex ratio mask)
      "shared_encoder": c.ablation.get_ref("shared_encoder"),
      "query_grad": c.ablation.get_ref("grad"),
      "bands": {"n_fft": 512 if small else 1024, "hop_length": 160 if small else 320, "n_bands": 64,
                "in_channels": 1},
      "swin": {"freq_ratio": 2 if small else 4, "patch_size": 4, "embed_dim": 256 if "2048" in flags else 96,
               "depths": (2, 2, 6, 2), "num_heads": (4, 8, 16, 32), "window_size": 8, "mlp_ratio": 4.0,
               "drop_path": 0.1, "min_frames": 0 if small else 1024},
  })
  if small:
    c.model.swin.update({"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (2, 4, 8, 16), "drop_path": 0.0})
  if "tiny" in flags:
    c.model.bands.n_bands = 32
    c.model.swin.update({"embed_dim": 8, "depths": (2, 1, 1), "num_heads": (1, 2, 4), "window_size": 4})
  if "cls" in flags:
    c.loss.cls_weight = 1.0
  return c
