r"""ST-SED-SEP (seed 001's baseline, Chen et al. AAAI 2022): the ZS-ASP ResUNet conditioned on an HTS-AT embedding.

  uss-jax train --config=configs/sed_cnn14.py:smoke --workdir=/tmp/sed          # anchor detector + evaluation set
  uss-jax train --config=configs/sed_htsat.py:smoke --workdir=/tmp/sed_htsat    # the query encoder (Init)
  uss-jax train --config=configs/st_sed_sep.py:smoke --workdir=/tmp/stsed --config.query.workdir=/tmp/sed \
    --config.ablation.init=True --config.init.workdir=/tmp/sed_htsat

Variants: "" = the reference: 32 kHz, ZS-ASP STFT 2048 / 320, encoder 32..1024, centre 2048, the 2048-d HTS-AT
(htsat_dim 256) frozen (Table 2 model A: grad off, init on), 10 s segments; batch, optimizer and schedule as
configs/care_sep.py (the paper trains both alike). "smoke" = 16 kHz, STFT 1024 / 160, a narrow U-Net and the
configs/sed_htsat.py:smoke HTS-AT (256-d query); "tiny" = test size. ``--config.ablation.grad=True`` is Table 2's
model B (the query HTS-AT trained); ``init=False`` a random query encoder.
"""

import ml_collections

from configs import care_sep, sed_htsat


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in ("", "smoke", "tiny"):
    raise ValueError(f"configs/st_sed_sep.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  small = variant in ("smoke", "tiny")
  c = care_sep.joint_separation_base(small, variant)
  c.ablation.update(grad=False, init=not small)
  c.model = ml_collections.ConfigDict({
      "name": "st_sed_sep",
      "channels": (8, 16, 32, 32, 64, 64) if small else (32, 64, 128, 256, 512, 1024),
      "n_fft": 1024 if small else 2048,
      "hop_length": 160 if small else 320,
      "bn_momentum": 0.1 if small else 0.01,
      "query_grad": c.ablation.get_ref("grad"),
  })
  tagger = sed_htsat.get_config(variant)
  c.query_model = ml_collections.ConfigDict({"frontend": tagger.frontend.to_dict(), "model": tagger.model.to_dict()})
  if not small:
    c.query_model.model.embed_dim = 256  # htsat_dim 256 -> the 2048-d latent of the released ZS-ASP
  c.query_model.model.spec_augment = False
  if variant == "tiny":
    c.model.channels = (4, 4, 8, 8, 8, 8)
    c.query_model.model.target_frames = 256  # 2 s queries (201 frames) are stretched, as the reference does
  return c
