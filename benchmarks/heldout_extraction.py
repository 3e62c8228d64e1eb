r"""Target sound extraction of trained SoundBeam / Waveformer runs on held-out source groups, beside the trivial
baselines on the same mixtures (issue 12; seed 002 Table I layout).

Mixtures are built exactly like the runs' training data (``data_pipelines.extraction.TSEElements`` with the run's
``config.data`` options: events, SNR range, lengths, peak normalisation) but only from the ``test`` split of the
run's dataset, i.e. the clips of the source groups the group holdout kept out of training
(``data_pipelines/builders/labeled_audio.py``); the script checks that no test group occurs in the train split. The
enrollment is another test clip of the target class (fixed per mixture). The mixtures are drawn with ``--seed``
(default 99, not the runs' own ``eval_seed``), so they are not the runs' evaluation set.

  .venv/bin/python benchmarks/heldout_extraction.py --checkpoint RUN [--checkpoint RUN2 ...] [--label NAME ...] \
      [--mixtures 200] [--json out.json]

Prints one Markdown table: per system and clue, mean SNRi, mean SI-SNRi (dB) and failure rate (% of extractions with
SNRi < 1 dB, seed 002 Sec. VI-B), and the same for returning the mixture, 0.5 x mixture and silence. A selection
check scores each run's output for the clue of the mixture's *other* target against the requested target (a run that
ignores its clue scores the same as with the right clue). Note that with
the usual eps convention (torchmetrics, ``uss_jax.losses.si_sdr``) a silent estimate has SI-SNR 0 dB, so silence
scores SI-SNRi = -SI-SNR(mixture) (> 0 whenever the mixture SNR is negative): compare against that row, not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from data_pipelines import extraction  # noqa: E402
from uss_jax import metrics, runs  # noqa: E402
from uss_jax.tasks import tse  # noqa: E402
from uss_jax.tasks.tagging import data_source  # noqa: E402


def split_groups(task: tse.TSETask) -> tuple[set[bytes], set[bytes]]:
  """Source groups of the train and test splits of a TSE task's dataset."""
  return tuple({bytes(src[i]["group"]) for i in range(len(src))}
               for src in (data_source(task.dataset, s) for s in ("train", "test")))


def heldout_mixtures(task: tse.TSETask, num_mixtures: int, seed: int) -> dict[str, np.ndarray]:
  """``num_mixtures`` TSE examples of the test split (``extraction.tse_eval_set`` with the task's options), arrays
  ``mixture`` (n, S), ``target`` (n, 2, S), ``class_id`` (n, 2), ``enrollment`` (n, 2, E).

  Raises:
    ValueError: a test source group also occurs in the train split.
  """
  train, test = split_groups(task)
  if train & test:
    raise ValueError(f"{len(train & test)} source groups are in both splits, e.g. {sorted(train & test)[0]!r}")
  return extraction.tse_eval_set(data_source(task.dataset, "test"), num_mixtures=num_mixtures, seed=seed,
                                 mixture_samples=task.mixture_samples, **task._element_options("test"))


def extract(run: runs.LoadedRun, data: dict[str, np.ndarray], batch: int = 16) -> dict[str, np.ndarray]:
  """The run's estimates ``{'class': (n, 2, S), 'enrollment': (n, 2, S)}`` for every mixture and target."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  num_classes = int(run.context["num_classes"])
  graphdef, state = nnx.split(run.model)

  @jax.jit
  def call(state, mixture, class_id, enrollment):
    model = nnx.merge(graphdef, state)
    onehot = jax.nn.one_hot(class_id.reshape(-1), num_classes)
    return model(mixture, class_onehot=onehot, enrollment=enrollment.reshape(-1, enrollment.shape[-1]))

  n, k, s = data["target"].shape
  out = {clue: [] for clue in tse.CLUES}
  for i in range(0, n, batch):
    sl = slice(i, min(i + batch, n))
    pad = batch - (sl.stop - sl.start)  # one compiled shape: pad the last batch with copies of its first row

    def padded(x):
      return np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) if pad else x

    est = call(state, padded(data["mixture"][sl]), padded(data["class_id"][sl]).astype(np.int32),
               padded(data["enrollment"][sl]))
    for clue in tse.CLUES:
      out[clue].append(np.asarray(est[clue]).reshape(batch, k, s)[:batch - pad])
  return {clue: np.concatenate(v) for clue, v in out.items()}


def scores(est: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, float]:
  """Mean SNRi, mean SI-SNRi (dB), failure rate (%) of estimates ``est`` (n, 2, S) of ``data``'s targets, and the
  output level (dB re the mixture's power, all extractions pooled; a collapse to near-silent outputs, which the
  scale-free SI-SNRi hides, shows here: the mixture 0, 0.5 x mixture -6.0, silence -inf)."""
  s = tse.extraction_scores(est, data["target"], data["mixture"])
  with np.errstate(divide="ignore"):
    level = 10 * np.log10(np.mean(np.square(est, dtype=np.float64)) / np.mean(np.square(data["mixture"],
                                                                                        dtype=np.float64)))
  return {"SNRi": float(np.mean(s["snri"])), "SI-SNRi": float(np.mean(s["si_snri"])),
          "FR": 100.0 * metrics.failure_rate(s["snri"]), "level": float(level)}


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", action="append", required=True, help="a TSE run directory (repeatable)")
  p.add_argument("--label", action="append", default=[], help="row label of each --checkpoint")
  p.add_argument("--step", type=int, default=None, help="checkpoint step of every run (default latest)")
  p.add_argument("--mixtures", type=int, default=200)
  p.add_argument("--seed", type=int, default=99)
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  labels = args.label + [os.path.basename(os.path.normpath(c)) for c in args.checkpoint[len(args.label):]]

  loaded = [runs.load_system(c, args.step) for c in args.checkpoint]
  task = tse.TSETask(loaded[0].config, loaded[0].workdir)
  data = heldout_mixtures(task, args.mixtures, args.seed)
  n, k, _ = data["target"].shape
  mixture = np.repeat(data["mixture"][:, None], k, axis=1)
  mix_snr = float(np.mean(metrics.snr(mixture.reshape(n * k, -1), data["target"].reshape(n * k, -1))))
  train, test = split_groups(task)
  report = {"mixtures": n, "extractions": n * k, "mixture_SNR": mix_snr, "seed": args.seed,
            "train_groups": len(train), "test_groups": len(test), "rows": []}
  for label, run in zip(labels, loaded):
    if int(tse.TSETask(run.config, run.workdir).mixture_samples) != task.mixture_samples:
      raise ValueError(f"{run.workdir}: other mixture length than {loaded[0].workdir}")
    est = extract(run, data)
    # Selection check: the clues of the mixture's other target, scored against the requested target. A system that
    # ignores its clue scores the same as with the right clue; one that selects scores far lower.
    swapped = extract(run, {**data, "class_id": data["class_id"][:, ::-1].copy(),
                            "enrollment": data["enrollment"][:, ::-1].copy()})
    for clue in tse.CLUES:
      report["rows"].append({"system": label, "step": run.step, "clue": clue, **scores(est[clue], data)})
    for clue in tse.CLUES:
      report["rows"].append({"system": label, "step": run.step, "clue": f"{clue} of the other target",
                             **scores(swapped[clue], data)})
  for name, est in (("mixture", mixture), ("0.5 x mixture", 0.5 * mixture), ("silence", np.zeros_like(mixture))):
    report["rows"].append({"system": name, "step": None, "clue": "-", **scores(est, data)})

  print(f"\n{n} mixtures ({n * k} extractions) of {len(test)} held-out source groups (train: {len(train)}), "
        f"mixture SNR {mix_snr:+.2f} dB, seed {args.seed}")
  print("| system | clue | SNRi (dB) | SI-SNRi (dB) | FR (%) | level (dB) |\n| --- | --- | --- | --- | --- | --- |")
  for r in report["rows"]:
    step = f" (step {r['step']})" if r["step"] is not None else ""
    print(f"| {r['system']}{step} | {r['clue']} | {r['SNRi']:+.2f} | {r['SI-SNRi']:+.2f} | {r['FR']:.1f} "
          f"| {r['level']:+.1f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
