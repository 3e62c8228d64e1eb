"""Pieces shared by every recipe config: mesh, sharding rules, optimizer, loop cadence, data locations.

Any field can be overridden on the command line, e.g. ``--config.mesh.fsdp=4 --config.batch_size=256``.
"""

import pathlib

import ml_collections

from uss_jax.train import sharding

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The embedded default corpus: a CC0 / MIT / CC-BY-SA subset of the project's real-audio corpus, 16 kHz FLAC
# (data/demo/ATTRIBUTION.md lists every clip's source and licence).
DEMO_AUDIO_DIR = str(REPO_ROOT / "data" / "demo" / "audio")
DEMO_CSV = str(REPO_ROOT / "data" / "demo" / "metadata.csv")


def base_config() -> ml_collections.ConfigDict:
  """Defaults for the trainer (``uss_jax.train.trainer``); recipes fill in task / model / data."""
  c = ml_collections.ConfigDict()
  c.task = ""
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32  # global, over all devices and processes
  c.eval_batch_size = 32
  c.log_every = 50
  c.eval_every = 500  # 0 = only at the end
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.profile = False
  c.compute_dtype = "float32"  # "bfloat16" for mixed precision on accelerators (parameters stay float32)

  # Mesh axes (data, fsdp, tensor); -1 takes the remaining devices. See uss_jax/train/sharding.py.
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Logical axis name -> mesh axes (None = replicated): THE table, uss_jax.train.sharding.DEFAULT_RULES (see there);
  # override entries here or on the command line. Names the table lacks are an error.
  c.sharding_rules = [tuple(rule) for rule in sharding.DEFAULT_RULES]
  # Activation memory: rematerialise each transformer block in the backward pass ('none' = keep activations; 'full'
  # = save only block inputs; 'dots' = also save matmul outputs without batch dims; 'dots_with_batch' = all matmul
  # outputs); see uss_jax/nn/partitioning.py.
  c.remat = "none"
  # Run runs of identical blocks (the ViT encoder) as one scanned block: shorter compile time, same results.
  c.scan_layers = False

  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
      "amsgrad": False, "grad_clip_norm": 0.0})
  c.schedule = ml_collections.ConfigDict({
      "name": "warmup_cosine", "warmup_steps": 100, "decay_steps": 0, "init_factor": 0.0, "end_factor": 0.0,
      "boundaries": [], "factors": []})

  c.input = ml_collections.ConfigDict({"num_workers": 0})
  return c


def labeled_audio_data(sample_rate: int) -> ml_collections.ConfigDict:
  """A labeled folder + CSV dataset (data_pipelines/builders/labeled_audio.py); default: the embedded demo corpus."""
  return ml_collections.ConfigDict({
      "audio_dir": DEMO_AUDIO_DIR,
      "csv_path": DEMO_CSV,
      "sample_rate": sample_rate,
      "tfds_dir": "",  # "" = <workdir>/tfds
      "holdout_fraction": 0.25,
      "clip_seconds": 2.0,
      "eval_clip_seconds": 5.0,
  })
