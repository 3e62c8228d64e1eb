#!/usr/bin/env bash
# Run uss-jax on every worker of a Cloud TPU VM (single host or pod slice) through `gcloud compute tpus tpu-vm ssh
# --worker=all`. Each worker runs one process; jax.distributed.initialize() finds the others through the TPU metadata
# server, so nothing distributed is passed here. See launch/README.md.
set -euo pipefail

readonly PROG="launch/tpu_vm.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --tpu NAME --zone ZONE [--project P] [options] [--dry-run] [-- <uss-jax args>]

Runs, on every worker of the TPU VM NAME:
  cd REMOTE_DIR && . VENV/bin/activate && [env K=V ...] uss-jax <uss-jax args>

  --tpu NAME           TPU VM (node) name.                                                      (required)
  --zone ZONE          its zone, e.g. us-central2-b.                                            (required)
  --project P          Google Cloud project (default: gcloud's configured project).
  --worker W           which workers: all (default), or e.g. 0 to try a command on one worker.
  --remote-dir DIR     the checkout on each worker, relative to the remote home or absolute (default: uss_jax).
  --venv DIR           the virtual environment, relative to REMOTE_DIR (default: .venv).
  --env NAME=VALUE     environment variable for uss-jax (repeatable), e.g. --env TFDS_DATA_DIR=gs://bucket/tfds.
  --copy               first ship the committed HEAD of this checkout (git archive) to REMOTE_DIR on every worker.
                       Uncommitted changes are not shipped (a warning lists them).
  --setup              first run launch/host_setup.sh tpu on every worker (creates VENV, installs jax[tpu]).
  --gcloud-arg ARG     extra argument for every gcloud command (repeatable), e.g. --gcloud-arg=--tunnel-through-iap.
  --dry-run            print the exact command(s), one per line, instead of running them.
  -h, --help           show this help.

Order: --copy, then --setup, then the uss-jax command (if any arguments follow --).
Use a gs:// --workdir: every worker writes its part of the checkpoint there. Resume = run the same command again.

Example:
  launch/tpu_vm.sh --tpu my-v4-32 --zone us-central2-b --copy --setup -- \
    train --config=configs/uss_resunet30.py --workdir=gs://my-bucket/uss/resunet30
EOF
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tpu=""
zone=""
project=""
worker="all"
remote_dir="uss_jax"
venv=".venv"
env_vars=()
gcloud_extra=()
copy=0
setup=0
dry_run=0

set_option() {  # name value
  [[ -n "$2" ]] || die "$1 needs a non-empty value"
  case "$1" in
    --tpu) tpu="$2" ;;
    --zone) zone="$2" ;;
    --project) project="$2" ;;
    --worker) worker="$2" ;;
    --remote-dir) remote_dir="$2" ;;
    --venv) venv="$2" ;;
    --env)
      [[ "$2" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs NAME=VALUE, got '$2'"
      env_vars+=("$2") ;;
    --gcloud-arg) gcloud_extra+=("$2") ;;
  esac
}

while (($#)); do
  case "$1" in
    --tpu | --zone | --project | --worker | --remote-dir | --venv | --env | --gcloud-arg)
      (($# >= 2)) || die "$1 needs a value"
      set_option "$1" "$2"
      shift 2 ;;
    --tpu=* | --zone=* | --project=* | --worker=* | --remote-dir=* | --venv=* | --env=* | --gcloud-arg=*)
      set_option "${1%%=*}" "${1#*=}"
      shift ;;
    --copy) copy=1; shift ;;
    --setup) setup=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown argument '$1' (uss-jax arguments go after --)" ;;
  esac
done
uss_args=("$@")

[[ -n "$tpu" ]] || die "missing --tpu NAME"
[[ -n "$zone" ]] || die "missing --zone ZONE"
if ((${#uss_args[@]} == 0 && !copy && !setup)); then
  die "nothing to do: give uss-jax arguments after -- and/or --copy / --setup"
fi

# `~/x` would not expand inside quotes; the ssh session starts in the home directory, so make it relative.
case "$remote_dir" in
  \~) remote_dir="." ;;
  \~/*) remote_dir="${remote_dir#\~/}" ;;
esac

gcloud_common=("--zone=$zone")
[[ -z "$project" ]] || gcloud_common+=("--project=$project")
gcloud_common+=("--worker=$worker")
gcloud_common+=(${gcloud_extra[@]+"${gcloud_extra[@]}"})

run() {
  if ((dry_run)); then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

ssh_all() {  # remote shell command
  run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_common[@]}" --command "$1"
}

rdir="$(quote "$remote_dir")"
rvenv="$(quote "$venv")"

if ((copy)); then
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  git -C "$repo" rev-parse --verify -q HEAD >/dev/null || die "--copy needs a git checkout with a commit: $repo"
  rev="$(git -C "$repo" rev-parse --short=12 HEAD)"
  if [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]]; then
    echo "$PROG: warning: --copy ships the committed HEAD ($rev); these uncommitted changes stay here:" >&2
    git -C "$repo" status --short --untracked-files=no >&2
  fi
  archive_name="uss_jax-$rev.tar.gz"
  archive="${TMPDIR:-/tmp}/$archive_name"
  run git -C "$repo" archive --format=tar.gz "--output=$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$tpu:$archive_name" "${gcloud_common[@]}"
  ssh_all "mkdir -p $rdir && tar -xzf $archive_name -C $rdir && rm -f $archive_name"
fi

if ((setup)); then
  ssh_all "cd $rdir && bash launch/host_setup.sh tpu --venv $rvenv"
fi

if ((${#uss_args[@]})); then
  remote="cd $rdir && . $rvenv/bin/activate && "
  if ((${#env_vars[@]})); then
    remote+="$(quote env "${env_vars[@]}") "
  fi
  remote+="$(quote uss-jax "${uss_args[@]}")"
  ssh_all "$remote"
fi
