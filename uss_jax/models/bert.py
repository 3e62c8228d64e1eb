"""BERT (Devlin et al. 2019) in Flax NNX, and the SoundWords text tower (BERT -> pooling -> FC).

Sources: seed 003 Sec. 3.1 / 3.3.2 (Kilgour et al.: "the standard BERT-base transformer architecture, using [CLS]-token
pooling and a final fully-connected layer to map to the shared embedding space", output dimension 64); the layer
order, names and constants of huggingface/transformers ``models/bert/modeling_bert.py`` (``BertEmbeddings``,
``BertSelfAttention``, ``BertSelfOutput``, ``BertIntermediate``, ``BertOutput``, ``BertPooler``), so that any HF
BERT-family checkpoint loads by a key map (``uss_jax.convert.bert``); sentence-transformers ``models/Pooling.py``
(masked mean of the token states: the pooling of all-MiniLM-L6-v2).

Forward (post-LayerNorm BERT, ``D`` = hidden size, ``H`` heads, ``L`` tokens):
  x = LN(word[ids] + position[0..L-1] + token_type[0])                        (B, L, D)
  per layer:  a = softmax(q k^T / sqrt(D / H) + (1 - mask) * min_float) v    (per head)
              x = LN(x + Dense(a));   x = LN(x + Dense(gelu_erf(Dense(x))))   (LN eps from the config: 1e-12)
  pooler (optional, BERT's next-sentence head): tanh(Dense(x[:, 0]))
Dropout (hidden and attention probabilities, rate from the config) only in train mode.

Layout: token ids ``(batch, tokens)`` int32, attention mask ``(batch, tokens)`` (1 = real token, 0 = padding).
Logical axis names: embedding tables ``('vocab', 'embed')``, q / k / v kernels ``('embed', 'heads')``, attention
output ``('heads', 'embed')``, MLP ``('embed', 'mlp')`` / ``('mlp', 'embed')``, LayerNorm ``('embed',)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture fields of an HF ``BertConfig`` (``config.json``) that this implementation reads.

  Attributes mirror HF: ``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
  ``intermediate_size``, ``max_position_embeddings``, ``type_vocab_size``, ``layer_norm_eps``,
  ``hidden_dropout_prob``, ``attention_probs_dropout_prob``; ``pooler``: build BERT's pooler (``pooler.dense``),
  which HF ``BertModel`` checkpoints carry.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  pooler: bool = True

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"BERT hidden_size={self.hidden_size} is not a multiple of num_attention_heads="
                       f"{self.num_attention_heads}")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
    """From a dict holding (at least) the fields; unknown keys (HF extras) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(d).items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# The size of the paper's text tower (BERT-base uncased) and the unit-test size.
BERT_BASE = BertConfig()
BERT_TINY = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)


def _dense(din: int, dout: int, names: tuple[str, str], rngs: nnx.Rngs, dtype: Any) -> nnx.Linear:
  init = nnx.initializers.truncated_normal(0.02)  # HF BertPreTrainedModel._init_weights: normal(0, 0.02)
  return nnx.Linear(din, dout, dtype=dtype, kernel_init=nnx.with_partitioning(init, names),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (names[1],)), rngs=rngs)


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs, dtype: Any) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, dtype=dtype,
                       scale_metadata={"out_sharding": ("embed",)}, bias_metadata={"out_sharding": ("embed",)},
                       rngs=rngs)


def _drop(dropout: nnx.Dropout, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
  # Dropout only with an RNG in train mode: no ``rngs`` (inference, parity) means deterministic.
  return dropout(x, rngs=rngs, deterministic=True if rngs is None else None)


def _embed(num: int, dim: int, rngs: nnx.Rngs, dtype: Any) -> nnx.Embed:
  init = nnx.with_partitioning(nnx.initializers.truncated_normal(0.02), ("vocab", "embed"))
  return nnx.Embed(num, dim, dtype=dtype, embedding_init=init, rngs=rngs)


class BertEmbeddings(nnx.Module):
  """``LN(word[ids] + position[arange(L)] + token_type[type_ids])`` -> dropout. ``(B, L)`` int -> ``(B, L, D)``."""

  def __init__(self, cfg: BertConfig, *, dtype: Any = None, rngs: nnx.Rngs):
    self.word_embeddings = _embed(cfg.vocab_size, cfg.hidden_size, rngs, dtype)
    self.position_embeddings = _embed(cfg.max_position_embeddings, cfg.hidden_size, rngs, dtype)
    self.token_type_embeddings = _embed(cfg.type_vocab_size, cfg.hidden_size, rngs, dtype)
    self.norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs, dtype)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)
    self.max_positions = cfg.max_position_embeddings

  def __call__(self, ids: jax.Array, token_type_ids: jax.Array | None, rngs: nnx.Rngs | None) -> jax.Array:
    length = ids.shape[1]
    if length > self.max_positions:
      raise ValueError(f"{length} tokens exceed the {self.max_positions} position embeddings of this BERT")
    types = jnp.zeros_like(ids) if token_type_ids is None else token_type_ids
    x = (self.word_embeddings(ids) + self.position_embeddings(jnp.arange(length))[None]
         + self.token_type_embeddings(types))
    return _drop(self.dropout, self.norm(x), rngs)


class BertLayer(nnx.Module):
  """One post-LN transformer layer (``BertAttention`` + ``BertIntermediate`` + ``BertOutput``)."""

  def __init__(self, cfg: BertConfig, *, dtype: Any = None, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.num_heads = cfg.num_attention_heads
    self.query = _dense(d, d, ("embed", "heads"), rngs, dtype)
    self.key = _dense(d, d, ("embed", "heads"), rngs, dtype)
    self.value = _dense(d, d, ("embed", "heads"), rngs, dtype)
    self.attention_output = _dense(d, d, ("heads", "embed"), rngs, dtype)
    self.attention_norm = _layer_norm(d, cfg.layer_norm_eps, rngs, dtype)
    self.intermediate = _dense(d, cfg.intermediate_size, ("embed", "mlp"), rngs, dtype)
    self.output = _dense(cfg.intermediate_size, d, ("mlp", "embed"), rngs, dtype)
    self.output_norm = _layer_norm(d, cfg.layer_norm_eps, rngs, dtype)
    self.attention_dropout = nnx.Dropout(cfg.attention_probs_dropout_prob)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, x: jax.Array, bias: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    """``x`` (B, L, D), ``bias`` (B, 1, 1, L) additive attention bias -> (B, L, D)."""
    b, length, d = x.shape
    hd = d // self.num_heads

    def heads(t):
      return t.reshape(b, length, self.num_heads, hd)

    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(hd)) + bias
    probs = _drop(self.attention_dropout, jax.nn.softmax(scores, axis=-1), rngs).astype(v.dtype)
    a = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, d)
    x = self.attention_norm(x + _drop(self.dropout, self.attention_output(a), rngs))
    h = self.output(jax.nn.gelu(self.intermediate(x), approximate=False))  # HF "gelu" is the exact erf form
    return self.output_norm(x + _drop(self.dropout, h, rngs))


class Bert(nnx.Module):
  """HF ``BertModel``: embeddings, ``num_hidden_layers`` layers, optional pooler.

  Args:
    cfg: the architecture (``BertConfig``).
    dtype: computation dtype (None = float32; parameters float32; softmax in float32).
    rngs: initialisation RNG streams (truncated normal 0.02, as HF initialises).
  """

  def __init__(self, cfg: BertConfig, *, dtype: Any = None, rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = BertEmbeddings(cfg, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([BertLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
    self.pooler = nnx.data(_dense(cfg.hidden_size, cfg.hidden_size, ("embed", "embed"), rngs, dtype)
                           if cfg.pooler else None)

  def __call__(self, token_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None, *,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """Token states of ``token_ids`` (batch, tokens) int under ``attention_mask`` (batch, tokens).

    Returns:
      ``{'last_hidden_state': (batch, tokens, D), 'pooler_output': (batch, D)}`` (the latter only with a pooler),
      float32.

    Raises:
      ValueError: ids / mask shapes differ, or more tokens than position embeddings.
    """
    if token_ids.ndim != 2 or attention_mask.shape != token_ids.shape:
      raise ValueError(f"token_ids and attention_mask must both be (batch, tokens), got {token_ids.shape} and "
                       f"{attention_mask.shape}")
    bias = (1.0 - attention_mask.astype(jnp.float32))[:, None, None, :] * jnp.finfo(jnp.float32).min
    x = self.embeddings(token_ids.astype(jnp.int32), token_type_ids, rngs)
    for layer in self.layers:
      x = layer(x, bias, rngs)
    out = {"last_hidden_state": x.astype(jnp.float32)}
    if self.pooler is not None:
      out["pooler_output"] = jnp.tanh(self.pooler(x[:, 0])).astype(jnp.float32)
    return out


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """Sentence vector of token states ``hidden`` (batch, tokens, D): ``'cls'`` = ``hidden[:, 0]`` (the [CLS] token,
  seed 003); ``'mean'`` = mean over the real tokens (sentence-transformers ``Pooling``: ``sum(h * m) / max(sum(m),
  1e-9)``).

  Raises:
    ValueError: unknown pooling.
  """
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    m = attention_mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
  raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")


class BertTextEncoder(nnx.Module):
  """The SoundWords text tower: ``Bert`` -> ``pool`` -> FC to ``embedding_dim``.

  Args:
    cfg: the BERT architecture.
    embedding_dim: output width (64 in seed 003); 0 = no FC (the pooled BERT vector itself).
    pooling: ``'cls'`` (the paper) or ``'mean'`` (sentence-transformers, e.g. all-MiniLM-L6-v2).
    dtype, rngs: as ``Bert``.
  """

  def __init__(self, cfg: BertConfig, embedding_dim: int = 64, *, pooling: str = "cls", dtype: Any = None,
               rngs: nnx.Rngs):
    if pooling not in POOLINGS:
      raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
    self.bert = Bert(cfg, dtype=dtype, rngs=rngs)
    self.pooling = pooling
    self.embedding_dim = int(embedding_dim) or cfg.hidden_size
    self.projection = nnx.data(nnx.Linear(cfg.hidden_size, self.embedding_dim, kernel_init=nnx.with_partitioning(
        nnx.initializers.lecun_normal(), ("embed", None)), bias_init=nnx.with_partitioning(
            nnx.initializers.zeros_init(), (None,)), rngs=rngs) if embedding_dim else None)

  def sentence_embedding(self, token_ids: jax.Array, attention_mask: jax.Array, *,
                         rngs: nnx.Rngs | None = None) -> jax.Array:
    """The pooled BERT vector (batch, D) before the FC (sentence-transformers' output before ``Normalize``)."""
    hidden = self.bert(token_ids, attention_mask, rngs=rngs)["last_hidden_state"]
    return pool(hidden, attention_mask, self.pooling)

  def __call__(self, token_ids: jax.Array, attention_mask: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
    """``(batch, tokens)`` ids + mask -> ``(batch, embedding_dim)`` float32."""
    x = self.sentence_embedding(token_ids, attention_mask, rngs=rngs)
    return x if self.projection is None else self.projection(x).astype(jnp.float32)
