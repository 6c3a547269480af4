#!/usr/bin/env bash
# BERT's two-phase pretraining (Devlin et al. 2019; NVIDIA's recipe): seq 128 for ~90% of the steps,
# then seq 512 from phase 1's final weights, each phase with its own data dir, warm-up and LR.
#     launch/two_phase.sh configs/prep/text.yaml runs/two_phase                  # 1 rank
#     NUM_GPUS=8 launch/two_phase.sh configs/prep/text.yaml /shared/runs/bert
#     PHASE1_ARGS="max_steps=900" PHASE2_ARGS="max_steps=100" launch/two_phase.sh ... model=tiny
# Steps, each skipped when its output is complete, so a relaunch continues where it stopped
# (a pretraining phase resumes from its own last checkpoint):
#   1. OUT/data128: data_prep at seq_len 128 (trains the tokenizer)
#   2. OUT/data512: the same inputs at seq_len 512, with 1's tokenizer (phase 2 refuses any other)
#   3. OUT/phase1:  configs/pretrain/phase1_128.yaml, ends with OUT/phase1/export
#   4. OUT/phase2:  configs/pretrain/phase2_512.yaml with init_from=OUT/phase1/export
# Trailing key=value arguments go to both phases; PREP_ARGS, PHASE1_ARGS, PHASE2_ARGS to one step.
# LAUNCH replaces the launcher (default: deepspeed --num_gpus $NUM_GPUS --module pretrain).
set -euo pipefail
cd "$(dirname "$0")/.."
PREP=${1:?usage: $0 PREP_CONFIG OUT_DIR [key=value ...]}
OUT=${2:?usage: $0 PREP_CONFIG OUT_DIR [key=value ...]}
shift 2
PYTHON=${PYTHON:-python}
read -r -a launch <<< "${LAUNCH:-deepspeed --num_gpus ${NUM_GPUS:-1} --module pretrain}"
read -r -a prep_args <<< "${PREP_ARGS:-}"
read -r -a phase1_args <<< "${PHASE1_ARGS:-}"
read -r -a phase2_args <<< "${PHASE2_ARGS:-}"

if [[ ! -f "$OUT/data128/manifest.json" ]]; then
    "$PYTHON" -m data_prep --config "$PREP" out_dir="$OUT/data128" seq_len=128 "${prep_args[@]}"
fi
if [[ ! -f "$OUT/data512/manifest.json" ]]; then
    "$PYTHON" -m data_prep --config "$PREP" out_dir="$OUT/data512" seq_len=512 \
        tokenizer.path="$OUT/data128/tokenizer" "${prep_args[@]}"
fi
echo "== phase 1: seq 128 -> $OUT/phase1"
"${launch[@]}" --config configs/pretrain/phase1_128.yaml data_dir="$OUT/data128" run_dir="$OUT/phase1" \
    "$@" "${phase1_args[@]}"
echo "== phase 2: seq 512 from $OUT/phase1/export -> $OUT/phase2"
"${launch[@]}" --config configs/pretrain/phase2_512.yaml data_dir="$OUT/data512" run_dir="$OUT/phase2" \
    init_from="$OUT/phase1/export" "$@" "${phase2_args[@]}"
