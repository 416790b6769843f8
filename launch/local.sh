#!/usr/bin/env bash
# Runs N sslax processes on this machine, joined by jax.distributed on 127.0.0.1, each
# with its own fake CPU devices: the multi-host code path without a cluster.
#
#   launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS --config=configs/demo.py --workdir=DIR
# (PYTHON selects the interpreter, SSLAX_COORDINATOR_PORT the port.)
set -euo pipefail
num_processes=$1
devices_per_process=$2
shift 2
port=${SSLAX_COORDINATOR_PORT:-12355}
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices_per_process}" \
    JAX_PLATFORMS=cpu \
    "${PYTHON:-python}" -m sslax.main "$@" \
    --coordinator_address="127.0.0.1:${port}" \
    --num_processes="${num_processes}" \
    --process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
