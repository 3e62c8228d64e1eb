r"""SupMAM pretraining: AudioMAE reconstruction + a supervised branch on the visible tokens (seed 004).

Quick start on the embedded demo corpus (CPU, a few minutes):
  uss-jax train --config=configs/supmam.py:smoke --workdir=/tmp/supmam_smoke
Paper scale (AudioSet-2M through a labeled folder + CSV at 16 kHz):
  uss-jax train --config=configs/supmam.py --workdir=/tmp/supmam \
    --config.data.audio_dir=/data/audioset/wav16k --config.data.csv_path=/data/audioset/train.csv \
    --config.compute_dtype=bfloat16

Variants (``get_config(arg)``) as configs/audiomae.py (same encoder, decoder, optimizer and schedule), with:
  mask ratio 0.4 (seed 004 Table 3), loss = masked-patch MSE + 0.01 * CE(p / tau, y) (Eqs. (2)-(3), Table 5), the
  branch = mean of the visible encoder tokens -> Linear(768, 3072) -> BatchNorm -> ReLU -> Linear(3072, classes),
  tau = 10 (tau and the hidden width are unstated in seed 004: SupMAE's defaults). Seed 004 trained with batch 128 on
  4 V100s ("learning rate 0.0002"); ``--config.batch_size=128`` gives that batch with lr = blr * 128 / 256.
"""

import ml_collections

from configs import audiomae


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in audiomae.VARIANTS:
    raise ValueError(f"configs/supmam.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  c = audiomae.mam_config(variant, objective="supmam")
  c.model.mask_ratio = 0.4
  return c
