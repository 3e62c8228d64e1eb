r"""Waveformer online target sound extraction with class-label and enrollment clues, with or without M2D (seed 002,
Table II).

Quick start on the embedded demo corpus:
  uss-jax train --config=configs/waveformer.py:smoke --workdir=/tmp/waveformer_smoke
The CPU run on the project corpus (held-out source groups):
  uss-jax train --config=configs/waveformer.py:cpu --workdir=/work/runs/tse/waveformer_cpu \
    --config.data.audio_dir=/work/shared/corpus/wav16k --config.data.csv_path=/work/shared/corpus/metadata.csv
Table II rows: ``+m2d_enrollment`` (non-causal M2D + MHFA for the enrollment, processed offline) and ``+m2d_both``
(also the causal M2D over the mixture through the AIE and a 1x1 bottleneck), with the M2D weights from
``--config.model.m2d.checkpoint=...`` or ``--config.model.m2d.workdir=...`` (configs/soundbeam.py explains).

Variants:
  ""      seed 002 Sec. VI-B.3: stride L = 32, kernel 96, 10 DCC layers (k = 3, dilations 1..512), one MHA layer of 8
          heads, E = 256 / D = 128 (the reference's E256 / D128 configuration), decoder chunk and context 13 frames,
          output buffer 4 frames; the clue networks of SoundBeam; data, loss (0.5 L(class) + 0.5 L(enrollment),
          L = -0.9 SNR - 0.1 SI-SNR), batch and epochs as configs/soundbeam.py; Adam 5e-4 (Waveformer) with clipping
          at norm 5. With the M2D over the mixture the decoder chunk and context are 10 frames (320 samples = one M2D
          token), so that a streaming chunk is one token (seed 002 does not state them).
  "cpu"   the SoundBeam CPU recipe's data and schedule (1.5 s mixtures of 2 events, Adam 3e-3 warm-up cosine, 2,400
          steps of 4 mixtures) with the smoke-size Waveformer (E = 64, D = 32).
  "smoke" the smoke-size model (E = 64, D = 32), 240 steps on the demo corpus.
  "tiny"  test size.
Streaming: ``uss_jax.models.waveformer.stream_waveform`` (chunks of ``model.chunk_samples``; equals the offline
forward), e.g. through ``uss-jax extract ... --stream``.
"""

import ml_collections

from configs import soundbeam as soundbeam_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, row = soundbeam_config.parse_variant(arg, "configs/waveformer.py")
  c = soundbeam_config.get_config(f"{variant}+{row}" if row else variant)
  m2d = c.model.m2d
  c.model = ml_collections.ConfigDict({
      "name": "waveformer",
      "size": "paper" if variant == "" else ("tiny" if variant == "tiny" else "smoke"),
      "dec_chunk_size": 13, "dec_buf_len": 13,
      "aie_kernels": (2, 5), "aie_strides": (2, 5),  # x10: 320-sample M2D tokens onto 32-sample frames
      "remat": False,  # rematerialise the DCC layers
      "m2d": m2d,
  })
  if row == "m2d_both":
    c.model.dec_chunk_size, c.model.dec_buf_len = 10, 10  # one streaming chunk = one M2D token (320 samples)
  if variant == "tiny":
    c.model.dec_chunk_size, c.model.dec_buf_len = (10, 10) if row == "m2d_both" else (3, 3)
  if variant == "":
    c.optimizer.learning_rate = 5e-4  # Waveformer's Adam
  return c
