r"""Query-based universal sound separation: ResUNet30 conditioned on a frozen Cnn14's latent source embedding.

(Kong et al., bytedance/uss; the baseline of seed 000.) The query net is the Cnn14 of a tagging run of this project
(``--config.query.workdir``): train it first with configs/sed_cnn14.py on the same data and sample rate.

Quick start on the embedded demo corpus (CPU):
  uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=/tmp/sed
  uss-jax train --config=configs/uss_resunet30.py:smoke --workdir=/tmp/uss --config.query.workdir=/tmp/sed

Variants: "" = the reference (32 kHz, 2 s segments, ResUNet30 32..384 channels, STFT 2048/320, AdamW amsgrad 1e-3 with
the x0.001 / x0.01 / x0.1 warm-up to 30k steps, 16 per device); "smoke" = 16 kHz, STFT 1024/160, a narrow U-Net;
"tiny" = test size.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in ("", "smoke", "tiny"):
    raise ValueError(f"configs/uss_resunet30.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  small = variant in ("smoke", "tiny")
  sr = 16000 if small else 32000
  c = common.base_config()
  c.task = "separation"
  c.data = common.labeled_audio_data(sr)
  c.data.segment_seconds = 2.0
  # 'offline': anchor segments mined once over the dataset; 'online': the query net cuts them from whole clips of
  # data.clip_seconds inside the train step (bytedance/uss: 10 s AudioSet clips).
  c.data.anchors = "offline"
  c.data.clip_seconds = 5.0 if small else 10.0
  c.data.normalize = False  # bytedance/uss baseline; True = seed 000 Eq. (2) (each of mixture and target / its peak)
  c.data.eval_pairs_per_class = 4 if small else 100
  c.data.eval_seed = 1234
  c.data.mining_batch_size = 8
  # output: the query net's output that conditions the separator ('embedding', the latent source embedding; or
  # 'clipwise_output', the class probabilities of bytedance/uss's released querynet=at_soft checkpoint).
  c.query = ml_collections.ConfigDict({"workdir": "", "step": None, "output": "embedding"})
  c.query.step = ml_collections.FieldReference(None, field_type=int)
  c.model = ml_collections.ConfigDict({
      "name": "resunet30",
      "channels": (8, 16, 32, 64, 64, 64) if small else (32, 64, 128, 256, 384, 384),
      "n_fft": 1024 if small else 2048,
      "hop_length": 160 if small else 320,
      # 'reference' = bytedance/uss init_layer; 'identity' = the untrained model outputs 0.5 * mixture (see
      # uss_jax.models.resunet.ResUNet30: short runs without the 10k-step x0.001 warm-up stall otherwise).
      "output_init": "identity" if small else "reference",
      # PyTorch-convention BatchNorm momentum: the reference's 0.01 leaves the running statistics ~37 % at their
      # initial values after 100 steps, so a short run evaluates (eval mode) with unadapted statistics.
      "bn_momentum": 0.1 if small else 0.01,
  })
  c.optimizer.update(name="adamw", learning_rate=1e-3, amsgrad=True, weight_decay=0.0)
  if small:
    c.schedule.update(name="warmup_cosine", warmup_steps=20, end_factor=0.2)
    # Generalisation to recordings never seen (benchmarks/heldout_separation.py): with 300 steps of 8 on 75 % of the
    # demo's recordings the separator scored SDRi +3.4 dB mean / +2.3 dB median on unseen recordings (0.5 x mixture:
    # +3.0); it over-fits its recordings (+5.8 dB on theirs). 90 % of the recordings and 400 steps of 12: +4.2 / +3.2.
    c.data.holdout_fraction = 0.1 if variant == "smoke" else 0.25
    c.total_steps = 400
    c.batch_size = 12 if variant == "smoke" else 8
    c.eval_batch_size = 8
    c.log_every = 25
    c.eval_every = 400
    c.checkpoint_every = 200
  else:
    c.schedule.update(name="step", boundaries=[10_000, 20_000, 30_000], factors=[0.001, 0.01, 0.1, 1.0])
    c.total_steps = 1_000_000
    c.batch_size = 16
    c.eval_batch_size = 16
    c.log_every = 100
    c.eval_every = 20_000
    c.checkpoint_every = 20_000
  if variant == "tiny":
    c.model.channels = (4, 8, 8, 16, 16, 16)
    c.data.eval_pairs_per_class = 1
    c.total_steps = 4
    c.log_every = 1
    c.eval_every = 4
    c.checkpoint_every = 2
  return c
