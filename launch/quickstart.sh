#!/usr/bin/env bash
# The main job (README: `make quickstart`): query-based sound separation end to end on the embedded demo corpus, offline.
#
#   1. train a small PANNs Cnn14 tagger (configs/sed_cnn14.py:smoke): the sound event detector that mines anchor
#      segments and embeds queries;
#   2. train a small ResUNet30 separator conditioned on the frozen tagger's embedding (configs/uss_resunet30.py:smoke):
#      mines SED anchors over the dataset, builds a fixed evaluation set of held-out mixtures, trains with L1, and
#      evaluates SDRi with oracle and class-average queries (per-class CSV + bar plot + example WAVs in the workdir);
#   3. separates one example mixture with a class query (`uss-jax separate`) into a WAV and a spectrogram PNG.
#
# Usage: launch/quickstart.sh [WORKDIR]   (default workdirs/quickstart; running it again resumes / reuses the runs)
# Environment: USS_JAX (the uss-jax command; default .venv/bin/uss-jax).
set -euo pipefail

WORKDIR="${1:-workdirs/quickstart}"
USS_JAX="${USS_JAX:-.venv/bin/uss-jax}"
TAGGER="${WORKDIR}/tagger"
SEPARATION="${WORKDIR}/separation"

echo "== 1/3 tagger (query net and anchor detector) -> ${TAGGER}"
"${USS_JAX}" train --config=configs/sed_cnn14.py:smoke --workdir="${TAGGER}"

echo "== 2/3 separator -> ${SEPARATION}"
"${USS_JAX}" train --config=configs/uss_resunet30.py:smoke --workdir="${SEPARATION}" \
  --config.query.workdir="${TAGGER}"

mixture="$(ls "${SEPARATION}"/examples/*_mixture.wav | head -n 1)"
class="$(basename "${mixture}" _mixture.wav)"
echo "== 3/3 separate ${class} from ${mixture}"
"${USS_JAX}" separate --checkpoint "${SEPARATION}" --mixture "${mixture}" --query-class "${class}" \
  -o "${WORKDIR}/separated_${class}.wav" --plot "${WORKDIR}/separated_${class}.png"

table="$(ls -v "${SEPARATION}"/eval_step*_per_class.csv | tail -n 1)"
echo "== per-class median SDRi (dB) on held-out mixtures: ${table}"
column -s, -t < "${table}" 2>/dev/null || cat "${table}"
echo "== outputs: ${WORKDIR}/separated_${class}.wav, ${WORKDIR}/separated_${class}.png," \
  "${SEPARATION}/examples/, $(ls -v "${SEPARATION}"/eval_step*_sdri.png | tail -n 1)"
