r"""SoundFilter (seed 003, Kilgour et al.): FiLM-conditioned waveform U-Net, enhanced + suppressed outputs.

  uss-jax train --config=configs/soundfilter.py:smoke --workdir=/tmp/soundfilter

Conditioning: mode 'soundwords' (the paper; '' and 'smoke'): the FROZEN SoundWords co-embedding of a SoundWords run
of this project, ``--config.condition.soundwords_workdir=DIR`` (train it first:
``uss-jax train --config=configs/soundwords.py:smoke --workdir=DIR``), of the caption (text) or of a second,
non-overlapping crop of the target clip (audio), drawn per example with the training text rate
``data.text_rate`` (0.3). Mode 'audio' ('tiny'): a conditioning encoder trained jointly with the generator (ref. [11]
Gfeller et al. 2021), audio queries only, ``data.text_rate = 0``.

Variants:
  ''      the paper: 16 kHz, 2 s random crops, background gain +-4 dB, SEANet-size generator (32 base channels, strides
          (2, 2, 8, 8), 64-d embedding; 15.2 M parameters with the conditioning encoder), batch 512, 1 M steps,
          evaluation / checkpoint every 50k steps. The optimizer is not given in the paper: Adam 1e-4 here.
  'cpu'   the corpus proof (``--config.data.audio_dir=$USS_JAX_CORPUS/wav16k --config.data.csv_path=...``): the
          smoke model and crops, batch 4, 6,000 steps (33 min at 0.33 s/step on 2 cores), the condition scaled to
          sqrt(D) = 8, 'audible' crops, 4 evaluation examples per held-out clip. SI-SDRi on the corpus's held-out
          clips +3.24 dB with audio queries, +0.96 dB with captions, silence -0.15 dB (README, SoundFilter).
  'smoke' a CPU run in a few minutes: 1 s crops, 'small' model (8 base channels, strides (2, 4, 5, 8), FiLM
          width 64 = the SoundWords space, output_skip: the untrained model returns half the mixture twice), batch
          8, 200 steps, Adam 1e-3 with warm-up + cosine: an end-to-end check, too short to extract.
  'tiny'  tests: 'tiny' model (4 base channels, strides (2, 4), one residual unit per block), 0.5 s crops, two
          steps.
"""

import ml_collections

from configs import common

VARIANTS = ("", "cpu", "smoke", "tiny")
MODEL_SIZES = {"": "paper", "cpu": "small", "smoke": "small", "tiny": "tiny"}
# The sizes of uss_jax.models.soundfilter.SIZES, repeated so that each can be overridden on the command line.
_SIZES = {
    "paper": {"channels": 32, "strides": (2, 2, 8, 8), "embedding_dim": 64},
    "small": {"channels": 8, "strides": (2, 4, 5, 8), "embedding_dim": 32},
    "tiny": {"channels": 4, "strides": (2, 4), "embedding_dim": 8, "dilations": (1,)},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/soundfilter.py: unknown variant {variant!r} (use '', 'cpu', 'smoke' or 'tiny')")
  size = MODEL_SIZES[variant]
  c = common.base_config()
  c.task = "soundfilter"
  c.data = common.labeled_audio_data(16000)
  c.data.crop_seconds = {"": 2.0, "cpu": 1.0, "smoke": 1.0, "tiny": 0.5}[variant]
  c.data.gain_db = 4.0  # background gain uniform in [-4, +4] dB (Sec. 3.3.1)
  # ... relative to the target crop's level (input SNR uniform in [-4, +4] dB); 'raw' = relative to the clip as stored
  # (data_pipelines.mixing.soundfilter_example)
  c.data.gain_reference = "target"
  # crops: 'random' (the paper) or 'audible': no silent target / condition / background crop of a clip with sound
  # (data_pipelines.mixing.audible_pair_starts; a third of the random 1-s crops of the corpus's 2-s clips are silent)
  c.data.crop_rule = "random" if variant == "" else "audible"
  # training text rate: share of examples conditioned on the caption instead of the audio crop (paper default 0.3)
  c.data.text_rate = 0.0 if variant == "tiny" else 0.3
  c.data.eval_seed = 1234
  c.data.eval_repeats = 1  # examples per test clip (each with its own crops, gain and background)
  # 'soundwords': the frozen SoundWords run of soundwords_workdir (step 0 = its latest); 'audio': a jointly trained
  # conditioning encoder (ref. [11]; audio queries only, text_rate 0).
  c.condition = ml_collections.ConfigDict({"mode": "audio" if variant == "tiny" else "soundwords",
                                           "soundwords_workdir": "", "soundwords_step": 0,
                                           # FiLM input = scale x the unit-norm SoundWords embedding
                                           "scale": 1.0})
  c.model = ml_collections.ConfigDict({
      "name": "soundfilter", "size": size, "dilations": (1, 3, 9), **_SIZES[size], "residual_kernel": 3, "io_kernel": 7,
      "bottleneck_kernel": 7, "num_groups": 16,
      # the mixture divided by its RMS, the outputs multiplied by it (not in the papers; see the model docstring)
      "normalize_input": True,
      # 0.5 * mixture added to both outputs (not in the papers; uss_jax.models.soundfilter.SoundFilterUNet)
      "output_skip": variant in ("cpu", "smoke")})
  if c.condition.mode == "soundwords":
    c.model.embedding_dim = 64  # the SoundWords width (configs/soundwords.py embedding_dim)
  # silence_power: mean square under which a reference / mixture / condition counts as silent and is not scored.
  c.loss = ml_collections.ConfigDict({"clip_db": 30.0, "consistency_weight": 1.0, "silence_power": 1e-8})
  c.optimizer.update(name="adamw", learning_rate=1e-4, weight_decay=0.0)
  if variant == "":
    c.schedule.update(name="warmup_cosine", warmup_steps=5000, end_factor=0.0)
    c.total_steps = 1_000_000
    c.batch_size = 512
    c.eval_batch_size = 64
    c.log_every = 500
    c.eval_every = 50_000
    c.checkpoint_every = 50_000
  else:
    c.optimizer.learning_rate = 1e-3
    c.schedule.update(name="warmup_cosine", warmup_steps=20, end_factor=0.1)
    c.total_steps = 200
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 20
    c.eval_every = 100
    c.checkpoint_every = 100
  if variant == "cpu":
    c.condition.scale = 8.0  # sqrt(D): the unit-norm condition at unit mean square per component (FiLM init scale)
    c.data.eval_repeats = 4  # 4 examples per held-out clip (188, 131 of them two-sound mixtures on the corpus)
    c.batch_size = 4
    c.total_steps = 6000
    c.log_every = 200
    c.eval_every = 2000
    c.checkpoint_every = 2000
  if variant == "tiny":
    c.total_steps = 2
    c.log_every = 1
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
