r"""Masked pretraining of a small M2D-style encoder: the ``m2d`` log-mel front end and 80 x 2 patches.

The encoder this recipe trains is what ``uss_jax.tasks.tse.m2d_from_mam_run`` turns into an
``uss_jax.models.m2d.M2D`` for the SoundBeam M2D rows (seed 002 Table I: MHFA enrollment encoder / AIE), e.g.
  uss-jax train --config=configs/m2d_small.py:smoke --workdir=/tmp/m2d_small
  uss-jax train --config=configs/soundbeam.py:cpu+m2d_enrollment --config.model.m2d.workdir=/tmp/m2d_small ...

What is M2D here and what is not:
  * front end = ``uss_jax.audio.frontends.M2DLogMel`` (name ``'m2d'``; nttcslab/m2d ``examples/portable_m2d.py``):
    16 kHz, n_fft / window 400, hop 160 (100 frames/s), 80 Slaney mels 50-8000 Hz, ``log(mel + eps)``, then
    ``(x - mean) / std`` with ``norm_stats``;
  * patches = M2D-AS 80 x 2 (all 80 bins x 2 frames), i.e. ``patch_size=(2, 80)`` in the ViT's (time, freq)
    convention: 50 tokens/s on a 1-wide frequency grid (seed 002 Sec. IV);
  * objective = this project's masked reconstruction (``task='mam'``, ``objective='audiomae'``: per-patch
    normalised MSE on the masked patches), not M2D's EMA teacher / online-network target; mask ratio 0.7 (M2D's).
  * decoder = ``kind='global'`` (MAE / AudioMAE decoder_mode 0: plain pre-LN ViT blocks over cls + all tokens; M2D's
    predictor is such a plain transformer too). The AudioMAE Swin preset is not used: on a 1-wide frequency grid
    its (4, 4) window collapses to (4, 1) (``mae.effective_window_and_shift``), so each token would attend to 3
    neighbours in time only, and the time grid would have to be a multiple of 4 (50 tokens/s gives 100 for 2 s,
    but 0.5 s / 1.5 s clips fail with "not divisible").
  * position embeddings = the ViT's fixed sin-cos (``'time_freq'``, generated per grid, no variable), which
    ``m2d_from_mam_run`` writes as the M2D's (f t) table for one unit of ``clip_seconds``.

Variants (``get_config(arg)``):
  "smoke" (also ``""``) = a small ViT (192-d, 4 blocks, 3 heads, mlp 4) and a 4-block 128-d global decoder on the
       embedded demo corpus, 2 s clips -> 201 frames -> 100 x 1 tokens (30 kept), batch 16, 400 steps AdamW 1e-3
       (warm-up 40, cosine): an estimated 3-6 min on 2 shared CPU cores (~13 GFLOP per step; not yet measured).
       ``norm_stats`` = the demo corpus log-mel mean / std (``M2DLogMel(norm_stats=None)`` over its 84 clips, first
       10 s each).
  "tiny" = test size (32-d, 1 block, 2 heads; 1-block 32-d decoder; 1 s clips -> 50 x 1 tokens; 4 steps of 8).
"""

import ml_collections

from configs import audiomae

VARIANTS = ("", "smoke", "tiny")
# Demo corpus M2D log-mel statistics (mean, std) of log(mel + eps), computed with M2DLogMel(norm_stats=None).
DEMO_NORM_STATS = (-8.73, 4.88)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "smoke"
  if variant not in VARIANTS:
    raise ValueError(f"configs/m2d_small.py: unknown variant {variant!r} (use 'smoke' or 'tiny')")
  c = audiomae.mam_config("smoke", objective="audiomae")  # optimiser, schedule, logging of the small recipes
  c.frontend = ml_collections.ConfigDict({
      "name": "m2d", "sample_rate": 16000, "n_fft": 400, "win_length": 400, "hop_length": 160, "n_mels": 80,
      "fmin": 50.0, "fmax": 8000.0, "norm_stats": DEMO_NORM_STATS})
  c.model.encoder = {"size": "small", "embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": (2, 80),
                     "pos_embed_layout": "time_freq", "attention": "einsum"}
  c.model.decoder = {"kind": "global", "embed_dim": 128, "depth": 4, "num_heads": 4}
  c.model.mask_ratio = 0.7
  c.data.clip_seconds = 2.0  # 201 frames -> 100 tokens (the trailing frame is dropped by the patch projection)
  c.data.eval_clip_seconds = 2.0
  if variant == "tiny":
    c.model.encoder = {"size": "small", "embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": (2, 80),
                       "pos_embed_layout": "time_freq", "attention": "einsum"}
    c.model.decoder = {"kind": "global", "embed_dim": 32, "depth": 1, "num_heads": 2}
    c.supmam.hidden = 32
    c.data.clip_seconds = 1.0  # 101 frames -> 50 tokens
    c.data.eval_clip_seconds = 1.0
    c.total_steps = 4
    c.schedule.warmup_steps = 1
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 2
  return c
