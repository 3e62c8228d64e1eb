"""Public checkpoints -> runnable runs (``uss-jax convert``), proved on the parity fixtures.

The bytedance/uss Lightning state_dict (``ss_model.*``) and the PANNs Cnn14 ``.pth`` (``model.*``) are rebuilt from
the fixture manifests with the deterministic weight rule (``common.rule_state_dict``) and saved in pickle-free
containers (``.safetensors``, ``.npz``) with the public files' key layout. ``uss-jax convert --from bytedance-uss``
turns them into a separation run + its query-net run; that run is then used exactly as a trained one through the
library path of ``uss-jax separate`` (``Separator.from_workdir``): the separator's output on the fixture mixtures and
the query net's embedding of the fixture waveforms must equal the PyTorch reference outputs (same thresholds as the
converter parity tests: 5e-5 relative for the waveform, 1e-4 for the embedding).
"""

import json

import jax
import numpy as np
import pytest

from conftest import FIXTURES
from uss_jax import commands, inference, runs
from uss_jax.convert import common

USS = FIXTURES / "parity" / "uss_resunet30"
CNN14 = FIXTURES / "parity" / "cnn14"


def _rel(y, ref):
  y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
  assert y.shape == ref.shape, (y.shape, ref.shape)
  return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def public_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("public")
  uss_sd = common.rule_state_dict(USS / "manifest.json")
  common.write_safetensors(d / "resunet30.safetensors", {f"state_dict.ss_model.{k}": v for k, v in uss_sd.items()})
  cnn_sd = common.rule_state_dict(CNN14 / "manifest.json")
  np.savez(d / "Cnn14.npz", **{f"model.{k}": v for k, v in cnn_sd.items()})
  (d / "labels.txt").write_text("".join(f"class {i}\n" for i in range(527)))
  return d


@pytest.fixture(scope="session")
def converted(public_files, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "uss"
  summary = commands.COMMANDS["convert"]([
      "--from", "bytedance-uss", "--checkpoint", str(public_files / "resunet30.safetensors"),
      "--query-net", str(public_files / "Cnn14.npz"), "-o", str(out)])
  return out, summary


def test_convert_writes_a_separation_run_and_its_query_net_run(converted):
  out, summary = converted
  assert summary["task"] == "separation" and summary["condition"] == "embedding" and summary["condition_size"] == 2048
  assert runs.checkpoint_steps(out) == [0] and runs.checkpoint_steps(out / "query_net") == [0]
  info = commands.COMMANDS["info"](["--checkpoint", str(out)])
  assert info["model"] == "resunet30" and info["sample_rate"] == 32000 and "audio" in info["query_kinds"]
  assert info["condition_size"] == 2048 and info["steps"] == [0]
  tagger = json.loads((out / "query_net" / "checkpoints" / "0" / "config" / "metadata").read_text())
  assert tagger["task"] == "tagging" and tagger["converted_from"]["source"] == "panns"


def test_converted_run_separates_like_the_pytorch_reference(converted):
  out, _ = converted
  sep = inference.Separator.from_workdir(out)
  inputs, ref = np.load(USS / "inputs.npz"), np.load(USS / "outputs.npz")
  with jax.default_matmul_precision("highest"):
    got = np.concatenate([sep.process_chunks(m[None], c) for m, c in zip(inputs["mixture"][:, 0],
                                                                         inputs["condition"])])
  assert _rel(got, ref["waveform"][:, 0]) <= 5e-5


def test_converted_query_net_embeds_like_the_pytorch_reference(converted):
  out, _ = converted
  sep = inference.Separator.from_workdir(out)
  inputs, ref = np.load(CNN14 / "inputs.npz"), np.load(CNN14 / "outputs.npz")
  with jax.default_matmul_precision("highest"):
    got = sep.embed_segments(inputs["waveform"])  # whole 10 s clips, as the reference embedded them
  assert _rel(got, ref["embedding"]) <= 1e-4


def test_convert_refuses_bad_files_with_the_key_named(public_files, tmp_path):
  sd = dict(np.load(public_files / "Cnn14.npz"))
  sd["model.fc_extra.weight"] = np.zeros((2, 2), np.float32)
  np.savez(tmp_path / "bad.npz", **sd)
  with pytest.raises(ValueError, match="fc_extra"):
    commands.COMMANDS["convert"](["--from", "panns", "--checkpoint", str(tmp_path / "bad.npz"),
                                  "-o", str(tmp_path / "run")])
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    commands.COMMANDS["convert"](["--from", "panns", "--checkpoint", str(tmp_path / "missing.pth"),
                                  "-o", str(tmp_path / "run")])
