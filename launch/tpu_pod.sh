#!/usr/bin/env bash
# sslax on a Cloud TPU VM pod slice, or several slices joined over DCN (multi-slice).
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE NUM_SLICES -- SSLAX_ARGS...
#   launch/tpu_pod.sh sslax-large us-east5-a v5p-256 1 -- \
#     --config=configs/w2v_large.py --workdir=gs://BUCKET/runs/large
#   launch/tpu_pod.sh sslax-xl us-west4-a v5litepod-256 2 -- \
#     --config=configs/w2v_large.py --workdir=gs://BUCKET/runs/xl --config.mesh.dcn_data=2
#
# 1. Creates the slice (`tpu-vm create`) or, for NUM_SLICES > 1, a queued resource of
#    NUM_SLICES slices named NAME-0 ... (`queued-resources create --node-count`) and waits
#    for it, unless they already exist (a rerun reuses them).
# 2. Copies this checkout to every worker of every slice and installs it
#    (`pip install -e .`), skipped with SSLAX_SKIP_INSTALL=1 on a rerun.
# 3. Runs the same `python3 -m sslax.main --distributed SSLAX_ARGS` on all workers
#    (`--worker=all`); JAX finds its peers from the TPU metadata. Multi-slice runs also get
#    the MEGASCALE_* variables (coordinator: worker 0 of slice 0) that join the slices.
#
# Checkpoints go to the workdir: use a gs:// bucket every worker can write. A preempted run
# resumes by running the same command again.
# Environment: PROJECT (gcloud project, default gcloud's), RUNTIME_VERSION (TPU software
# image, default chosen by accelerator), GCLOUD (default gcloud).
set -euo pipefail
if [ $# -lt 5 ] || [ "$5" != "--" ]; then
  echo "usage: $0 NAME ZONE ACCELERATOR_TYPE NUM_SLICES -- SSLAX_ARGS..." >&2
  exit 2
fi
name=$1 zone=$2 accelerator=$3 num_slices=$4
shift 5
gcloud=${GCLOUD:-gcloud}
project_flag=()
[ -n "${PROJECT:-}" ] && project_flag=(--project="$PROJECT")
case "$accelerator" in
  v4-*) default_version=tpu-ubuntu2204-base ;;
  v5litepod-* | v5e-*) default_version=v2-alpha-tpuv5-lite ;;
  v5p-*) default_version=v2-alpha-tpuv5 ;;
  v6e-*) default_version=v2-alpha-tpuv6e ;;
  *) default_version=tpu-ubuntu2204-base ;;
esac
version=${RUNTIME_VERSION:-$default_version}
tpu=("$gcloud" compute tpus "${project_flag[@]}")

if [ "$num_slices" -eq 1 ]; then
  slices=("$name")
  if ! "${tpu[@]}" tpu-vm describe "$name" --zone="$zone" >/dev/null 2>&1; then
    "${tpu[@]}" tpu-vm create "$name" --zone="$zone" --accelerator-type="$accelerator" \
      --version="$version"
  fi
else
  slices=()
  for ((i = 0; i < num_slices; i++)); do slices+=("$name-$i"); done
  if ! "${tpu[@]}" queued-resources describe "$name" --zone="$zone" >/dev/null 2>&1; then
    "${tpu[@]}" queued-resources create "$name" --zone="$zone" --node-count="$num_slices" \
      --node-prefix="$name" --accelerator-type="$accelerator" --runtime-version="$version"
  fi
  until [ "$("${tpu[@]}" queued-resources describe "$name" --zone="$zone" \
    --format='value(state.state)')" = ACTIVE ]; do
    echo "waiting for queued resource $name to become ACTIVE" >&2
    sleep "${SSLAX_POLL_SECONDS:-30}"
  done
fi

if [ -z "${SSLAX_SKIP_INSTALL:-}" ]; then
  archive=$(mktemp -d)/sslax.tar.gz
  git -C "$(dirname "$0")/.." archive --format=tar.gz --prefix=sslax/ -o "$archive" HEAD
  for slice in "${slices[@]}"; do
    "${tpu[@]}" tpu-vm scp "$archive" "$slice":sslax.tar.gz --zone="$zone" --worker=all
    "${tpu[@]}" tpu-vm ssh "$slice" --zone="$zone" --worker=all \
      --command="rm -rf sslax && tar xzf sslax.tar.gz && python3 -m pip install -q -e ./sslax 'jax[tpu]'"
  done
fi

quoted=$(printf ' %q' "$@")
run="cd sslax && PYTHONUNBUFFERED=1 python3 -m sslax.main --distributed$quoted"
pids=()
for ((i = 0; i < ${#slices[@]}; i++)); do
  exports=""
  if [ "$num_slices" -gt 1 ]; then
    coordinator=$("${tpu[@]}" tpu-vm describe "${slices[0]}" --zone="$zone" \
      --format='value(networkEndpoints[0].ipAddress)')
    exports="export MEGASCALE_COORDINATOR_ADDRESS=$coordinator:8080"
    exports+=" MEGASCALE_NUM_SLICES=$num_slices MEGASCALE_SLICE_ID=$i MEGASCALE_PORT=8080; "
  fi
  "${tpu[@]}" tpu-vm ssh "${slices[$i]}" --zone="$zone" --worker=all \
    --command="$exports$run" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
