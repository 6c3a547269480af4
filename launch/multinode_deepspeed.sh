#!/usr/bin/env bash
# Multi-node pretraining with the deepspeed launcher.
#
# Mode 1 (default), from node 0 only: the launcher reaches every host in the hostfile over ssh
# (pdsh) and starts `slots` ranks on each:
#     launch/multinode_deepspeed.sh launch/hostfile configs/pretrain/base.yaml [key=value ...]
#
# Mode 2, no ssh: run the same command on every node yourself with NODE_RANK set (0..N-1) and
# MASTER_ADDR naming node 0; each node starts its own ranks and they meet at MASTER_ADDR:
#     NODE_RANK=1 MASTER_ADDR=10.0.0.1 launch/multinode_deepspeed.sh launch/hostfile configs/pretrain/base.yaml
#
# Relaunching the same command resumes from run_dir's last complete checkpoint with the same
# number of ranks. Variables every node needs go in .deepspeed_env (see deepspeed_env.example).
set -euo pipefail
cd "$(dirname "$0")/.."

HOSTFILE=${1:?usage: $0 HOSTFILE CONFIG [key=value ...]}
CONFIG=${2:?usage: $0 HOSTFILE CONFIG [key=value ...]}
shift 2
MASTER_PORT=${MASTER_PORT:-29500}
DEEPSPEED=${DEEPSPEED:-.venv/bin/deepspeed}

if [[ -n "${NODE_RANK:-}" ]]; then
    : "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
    exec "$DEEPSPEED" --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" \
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
        --module pretrain --config "$CONFIG" "$@"
fi
exec "$DEEPSPEED" --hostfile "$HOSTFILE" ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} --master_port "$MASTER_PORT" \
    --module pretrain --config "$CONFIG" "$@"
