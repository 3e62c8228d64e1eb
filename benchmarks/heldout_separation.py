r"""Held-out separation of a trained run on recordings it never saw, beside the trivial baselines (issue 15).

The separator is driven through the library path of ``uss-jax separate`` (``uss_jax.runs.load_system`` ->
``uss_jax.inference.Separator``: the query embedded by the run's own query encoder, chunking, overlap-add). Mixtures
are built from the clips of a labeled corpus (``metadata.csv`` with ``filename, class_label, source_group``) whose
``source_group`` does not occur in the run's own training CSV (``config.data.csv_path``, its held-out part included):
for each such target clip, the most energetic ``--seconds`` window, plus the most energetic window of another such clip
of a different class scaled to equal energy (0 dB); the query is the target window itself. Two pools are reported:
``seen classes`` (unseen recordings of classes the run trained on) and ``unseen classes`` (classes it never saw).

  .venv/bin/python benchmarks/heldout_separation.py --checkpoint workdirs/quickstart/separation \
      --corpus ../shared/corpus [--pairs-per-target 2] [--json out.json]
  .venv/bin/python benchmarks/heldout_separation.py --checkpoint RUN --esc50 ESC-50-master [--esc50-folds 5] --seed001

``--esc50 DIR`` (seed 001's zero-shot evaluation) takes the clips of a local ESC-50 copy instead, read through
``data_pipelines.builders.esc50.plan_esc50`` (checked CSV; class = the ESC-50 category, source group = ``src_file``),
optionally only some folds; ESC-50 recordings are never in a run's training CSV, and its categories that the run
trained on (by name) form the ``seen classes`` pool.

Prints one table: SDR and SDRi (dB; bytedance/uss ``calculate_sdr``, ``uss_jax.metrics.sdr``), mean and median, for
the system and for returning the mixture, 0.5 x mixture and silence on the same mixtures.

``--seed001`` adds seed 001's (CaRE-SEP / ST-SED-SEP) evaluation on the same mixtures, for any separation run
(issue 11): mixture-SDR ``S(c_1 + c_2, e_1) -> c_1``, clean-SDR ``S(c_1, e_1) -> c_1``, silence-SDR ``S(c_2, e_1)
-> 0`` (``uss_jax.metrics``: single-window BSS Eval v4 and RetroCirce's energy ratio; means over mixtures, NaN
pairs skipped), and the tagging mAP of the run's query encoder on the target windows (CaRE-SEP's token-semantic head,
ST-SED-SEP's HTS-AT, the Cnn14 query net of ResUNet30 / MAE-ResUNet) over the run's classes. The trivial rows apply
each baseline to each input (return the input, half of it, or silence).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from uss_jax import inference, metrics, runs  # noqa: E402
from uss_jax.models import registry  # noqa: E402


def _read_csv(path: str) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _audio_dir(corpus: str, sample_rate: int) -> str:
  """The corpus folder at the model's rate when there is one (``wav16k`` / ``wav32k``), else the corpus itself."""
  d = os.path.join(corpus, f"wav{sample_rate // 1000}k")
  return d if os.path.isdir(d) else corpus


def loudest_window(x: np.ndarray, n: int, hop: int) -> np.ndarray:
  """The ``n``-sample window of ``x`` with the most energy (starts every ``hop`` samples); ``x`` tiled if short."""
  if len(x) < n:
    return np.resize(x, n)
  starts = np.arange(0, len(x) - n + 1, hop)
  c = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
  energy = c[starts + n] - c[starts]
  s = int(starts[int(np.argmax(energy))])
  return x[s:s + n]


def build_mixtures(rows, audio_dir: str, sample_rate: int, samples: int, pairs_per_target: int, seed: int):
  """``(targets, interferers, target_rows)``: ``(M, samples)`` float32 arrays at 0 dB target-to-interferer ratio and
  the index into ``rows`` of each mixture's target clip."""
  import soxr  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  windows = []
  for r in rows:
    x, sr = sf.read(os.path.join(audio_dir, r["filename"]), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != sample_rate:
      x = soxr.resample(x, sr, sample_rate).astype(np.float32)
    windows.append(loudest_window(x, samples, samples // 8))
  targets, interferers, target_rows = [], [], []
  for i, r in enumerate(rows):
    others = [j for j, o in enumerate(rows) if o["class_label"] != r["class_label"]]
    for j in rng.choice(others, size=min(pairs_per_target, len(others)), replace=False):
      t, n = windows[i], windows[int(j)]
      n = n * np.sqrt(np.sum(t.astype(np.float64) ** 2) / max(np.sum(n.astype(np.float64) ** 2), 1e-12))
      targets.append(t)
      interferers.append(n.astype(np.float32))
      target_rows.append(i)
  return np.stack(targets), np.stack(interferers), np.asarray(target_rows)


def evaluate(sep: inference.Separator, targets: np.ndarray, interferers: np.ndarray,
             classes: list[str] | None = None) -> dict[str, dict[str, float]]:
  """Per-system SDR / SDRi (mean, median over mixtures) for the separator and the trivial baselines; with
  ``classes`` (the target's class per mixture) the condition is the run's class-average condition."""
  mixtures = targets + interferers
  estimates = []
  for i, (t, m) in enumerate(zip(targets, mixtures)):
    cond = sep.class_condition(classes[i]) if classes else sep.embed_query_audio(t)
    estimates.append(sep.separate(m, sep.sample_rate, cond))
  systems = {"system": np.stack(estimates), "mixture": mixtures, "0.5 x mixture": 0.5 * mixtures,
             "silence": np.zeros_like(mixtures)}
  out = {}
  for name, est in systems.items():
    sdr = metrics.sdr(est, targets)
    sdri = metrics.sdri(est, targets, mixtures)
    out[name] = {"sdr_mean": float(np.mean(sdr)), "sdr_median": float(np.median(sdr)),
                 "sdri_mean": float(np.mean(sdri)), "sdri_median": float(np.median(sdri))}
  return out


def esc50_rows(folder: str, folds: str = "") -> list[dict[str, str]]:
  """The clips of a local ESC-50 copy as corpus rows ``{filename (absolute path), class_label, source_group}``.

  Args:
    folder: ESC-50-master or a folder holding it (``esc50.find_esc50_root``).
    folds: comma-separated folds to keep ('' = all five).

  Raises:
    FileNotFoundError: no meta/esc50.csv. ValueError: a bad CSV row (named by ``plan_esc50``) or a fold not in 1..5.
  """
  from data_pipelines.builders import esc50  # pylint: disable=import-outside-toplevel
  keep = {int(f) for f in folds.split(",") if f.strip()} if folds else set(range(1, esc50.NUM_FOLDS + 1))
  if not keep <= set(range(1, esc50.NUM_FOLDS + 1)):
    raise ValueError(f"--esc50-folds: folds must be in 1..{esc50.NUM_FOLDS}, got {folds!r}")
  return [{"filename": r.path, "class_label": esc50.ESC50_CATEGORIES[r.target], "source_group": f"esc50:{r.src_file}"}
          for r in esc50.plan_esc50(esc50.find_esc50_root(folder)) if r.fold in keep]


def clipwise_fn(sep: inference.Separator):
  """``segments (n, samples) -> class probabilities (n, classes)`` of the run's query encoder, jitted once (so
  every mixture reuses one compiled program), or None when the system has no tagging head
  (``query(audio)['logits']`` of CaRE-SEP / ST-SED-SEP, ``query_net(audio)['clipwise_output']`` of a
  Cnn14-queried separator)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  model = sep.model
  if hasattr(model, "query"):
    fn = nnx.jit(lambda m, x: jax.nn.sigmoid(m.query(x)["logits"]))
  elif hasattr(model, "query_net"):
    model.query_net.eval()
    fn = nnx.jit(lambda m, x: m.query_net(x)["clipwise_output"])
  else:
    return None
  return lambda segments: np.concatenate([np.asarray(fn(model, segments[i:i + 8]))
                                          for i in range(0, len(segments), 8)])


def evaluate_seed001(sep: inference.Separator, targets: np.ndarray, interferers: np.ndarray, classes: list[str],
                     class_names: list[str]) -> dict[str, dict[str, float]]:
  """Seed 001's three SDRs (self-source query: the target window) and mAP, for the system and the trivial
  baselines on the same mixtures (module docstring)."""
  mixtures = targets + interferers
  est = {"mixture": [], "clean": [], "silence": []}
  scores = []
  tagger = clipwise_fn(sep)
  for t, n, m in zip(targets, interferers, mixtures):
    segments = sep.query_segments(t)
    cond = sep.embed_segments(segments).mean(axis=0)
    for kind, x in (("mixture", m), ("clean", t), ("silence", n)):
      est[kind].append(sep.separate(x, sep.sample_rate, cond))
    if tagger is not None:
      scores.append(tagger(segments).mean(axis=0))
  systems = {"system": {k: np.stack(v) for k, v in est.items()}}
  for name, f in (("input", lambda x: x), ("0.5 x input", lambda x: 0.5 * x), ("silence", np.zeros_like)):
    systems[name] = {"mixture": f(mixtures), "clean": f(targets), "silence": f(interferers)}
  out = {}
  for name, e in systems.items():
    out[name] = {"mixture_SDR": float(np.nanmean(metrics.mixture_sdr(e["mixture"], targets))),
                 "clean_SDR": float(np.nanmean(metrics.clean_sdr(e["clean"], targets))),
                 "silence_SDR": float(np.nanmean(metrics.silence_sdr(interferers, e["silence"])))}
  known = [k for k, c in enumerate(classes) if c in class_names]
  if scores and known:
    labels = np.zeros((len(known), len(class_names)), np.float32)
    labels[np.arange(len(known)), [class_names.index(classes[k]) for k in known]] = 1.0
    out["system"]["mAP"] = float(metrics.mean_average_precision(labels, np.stack(scores)[known]))
  return out


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="a separation run directory")
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--corpus", default=os.environ.get("USS_JAX_CORPUS", ""), help="labeled corpus with metadata.csv")
  p.add_argument("--esc50", default="", help="a local ESC-50 copy instead of --corpus (zero-shot evaluation)")
  p.add_argument("--esc50-folds", default="", help="with --esc50: comma-separated folds to use (default all)")
  p.add_argument("--seconds", type=float, default=2.0)
  p.add_argument("--pairs-per-target", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", default="", help="also write the table as JSON here")
  p.add_argument("--condition", choices=("query", "class"), default="query",
                 help="query: the target window's own embedding (default); class: the run's class-average condition "
                      "of the target's class (seen classes only; tells query-encoder from separator errors)")
  p.add_argument("--recordings", choices=("unseen", "seen"), default="unseen",
                 help="unseen: clips whose source group is not in the run's CSV (default); seen: the run's own CSV "
                      "(diagnostic: how much of the gap is recordings never seen)")
  p.add_argument("--seed001", action="store_true",
                 help="also seed 001's mixture- / clean- / silence-SDR and the query encoder's tagging mAP")
  args = p.parse_args(argv)
  if args.esc50:
    try:
      pool = esc50_rows(args.esc50, args.esc50_folds)
    except (FileNotFoundError, ValueError) as e:
      p.error(f"--esc50: {e}")
  elif not args.corpus or not os.path.isfile(os.path.join(args.corpus, "metadata.csv")):
    p.error(f"--corpus: no metadata.csv in {args.corpus!r}")
  else:
    pool = _read_csv(os.path.join(args.corpus, "metadata.csv"))

  sep = inference.Separator.from_workdir(args.checkpoint, args.step)
  config = runs.read_config(*runs.resolve_checkpoint(args.checkpoint, args.step))
  seen = _read_csv(config.data.csv_path)
  seen_groups = {r["source_group"] for r in seen}
  seen_classes = {r["class_label"] for r in seen}
  corpus = [r for r in pool
            if (r["source_group"] in seen_groups) == (args.recordings == "seen")]
  audio_dir = "" if args.esc50 else _audio_dir(args.corpus, sep.sample_rate)
  samples = int(round(args.seconds * sep.sample_rate))
  report = {"checkpoint": args.checkpoint, "step": sep.step, "seconds": args.seconds}
  # Interferers come from the whole unseen-recording pool (any class but the target's).
  t_all, n_all, target_rows = build_mixtures(corpus, audio_dir, sep.sample_rate, samples, args.pairs_per_target,
                                             args.seed)
  for pool, keep in (("seen classes", lambda r: r["class_label"] in seen_classes),
                     ("unseen classes", lambda r: r["class_label"] not in seen_classes)):
    rows = [r for r in corpus if keep(r)]
    if len(rows) < 2:
      continue
    index = np.asarray([k for k, i in enumerate(target_rows) if keep(corpus[i])], int)
    targets, interferers = t_all[index], n_all[index]
    classes = [corpus[target_rows[k]]["class_label"] for k in index] if args.condition == "class" else None
    if classes and pool == "unseen classes":  # no class-average condition for classes the run never saw
      continue
    table = evaluate(sep, targets, interferers, classes)
    report[pool] = {"mixtures": int(len(targets)), "targets": len(rows), **table}
    print(f"\n{pool} ({args.recordings} source groups, {args.condition} condition): {len(targets)} mixtures of {len(rows)} target clips ({args.seconds:g} s, 0 dB), step {sep.step}")
    print(f"{'':16s} {'SDR mean':>9s} {'SDR med':>9s} {'SDRi mean':>10s} {'SDRi med':>9s}")
    for name, v in table.items():
      print(f"{name:16s} {v['sdr_mean']:9.2f} {v['sdr_median']:9.2f} {v['sdri_mean']:10.2f} {v['sdri_median']:9.2f}")
    if args.seed001:
      context = registry.read_context(runs.resolve_checkpoint(args.checkpoint, args.step)[0]) or {}
      names = [str(n) for n in context.get("class_names") or runs.load_class_table(args.checkpoint)[0]]
      t001 = evaluate_seed001(sep, targets, interferers, [corpus[target_rows[k]]["class_label"] for k in index],
                              names)
      report[pool]["seed001"] = t001
      print(f"{'':16s} {'mix-SDR':>9s} {'clean-SDR':>9s} {'sil-SDR':>9s} {'mAP':>6s}")
      for name, v in t001.items():
        m = f"{v['mAP']:6.3f}" if "mAP" in v else f"{'-':>6s}"
        print(f"{name:16s} {v['mixture_SDR']:9.2f} {v['clean_SDR']:9.2f} {v['silence_SDR']:9.2f} {m}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
