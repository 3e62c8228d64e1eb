r"""SupMAM-CLAP pretraining: MAM-CLAP's CLAP-target loss (Eq. (1)) + 1e-4 * CE(p / tau, y) of the classification
branch on the visible tokens (seed 004, Eqs. (2)-(3), Sec. 3.2: lambda_cls 0.0001, mask 0.2).

Paper scale / smoke run: as configs/mam_clap.py, e.g.
  uss-jax train --config=configs/supmam_clap.py:smoke --workdir=/tmp/supmam_clap_smoke \
    --config.teacher.workdir=/tmp/sed_htsat_smoke

Variants (``get_config(arg)``) as configs/mam_clap.py, with the SupMAM branch of configs/supmam.py (mean of the
visible encoder tokens -> Linear -> BatchNorm -> ReLU -> Linear, tau = 10, hidden 3072; smoke 256, tiny 32).
"""

import ml_collections

from configs import mam_clap


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in mam_clap.VARIANTS:
    raise ValueError(f"configs/supmam_clap.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  c = mam_clap.clap_config(variant, objective="supmam_clap")
  c.supmam.cls_weight = 1e-4
  return c
