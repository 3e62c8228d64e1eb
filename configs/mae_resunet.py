r"""MAE-ResUNet (seed 000 Sec. III-B): A-MAE features concatenated with the STFT magnitude at the ResUNet30 input.

  uss-jax train --config=configs/audiomae.py:smoke --workdir=/tmp/amae                  # A-MAE pretrained here
  uss-jax train --config=configs/mae_resunet.py:smoke --workdir=/tmp/mae_uss \
      --config.query.workdir=/tmp/sed --config.model.mae.workdir=/tmp/amae
  (or --config.model.mae.checkpoint=pretrained.pth, a converted AudioMAE file)

Variants (comma-separated): ``frozen`` (default) / ``updated`` (the paper's two rows), with ``smoke`` or ``tiny`` for
the sizes of configs/uss_resunet30.py; e.g. ``updated,smoke``. Everything else (data, query net, loss, evaluation,
optimizer) is the ResUNet30 recipe's, so the three rows of Table I differ only in the separator.

``model.mae``: ``workdir`` (a configs/audiomae.py run) or ``checkpoint`` (an AudioMAE file), ``step``; ``mode``
``'frozen'`` (the encoder's last layer, not trained) or ``'updated'`` (a learnable softmax-weighted sum of all
transformer layer outputs, those layers trained at ``optimizer.lr_multipliers`` x the peak rate); ``pooling``
``'aligned'`` (the token grid avg-max pooled over frequency, each STFT frame takes the token covering it: any segment
length) or ``'paper'`` (the fbank padded to 1024 frames, 512 time tokens pooled 16 -> 32, repeated x7 to T = 224:
the paper's 10 s layout; for 2 s segments the same rule repeats each of the 32 pooled steps over 201 / 32 frames).
``data.normalize``: the amplitude normalisation of Eq. (2) (off as in the baseline; the switch of the pipeline).
"""

import ml_collections

from configs import uss_resunet30

VARIANTS = ("frozen", "updated", "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "").split(",") if p]
  unknown = [p for p in parts if p not in VARIANTS]
  if unknown or ("frozen" in parts and "updated" in parts) or ("smoke" in parts and "tiny" in parts):
    raise ValueError(f"configs/mae_resunet.py: bad variant {arg!r} (comma-separated, from {VARIANTS}; "
                     "one of frozen / updated, at most one of smoke / tiny)")
  size = "smoke" if "smoke" in parts else "tiny" if "tiny" in parts else ""
  mode = "updated" if "updated" in parts else "frozen"
  c = uss_resunet30.get_config(size)
  c.model.name = "mae_resunet"
  c.model.mae = ml_collections.ConfigDict({"workdir": "", "checkpoint": "", "mode": mode, "pooling": "aligned"})
  c.model.mae.step = ml_collections.FieldReference(None, field_type=int)
  if mode == "updated":
    c.optimizer.lr_multipliers = [("encoder", 0.1)]  # the A-MAE layers at a tenth of the separator's rate
  return c
