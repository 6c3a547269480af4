#!/usr/bin/env bash
# Self-pretraining on SST-2's own training text, then the table row against random init, in one command:
#     launch/sst2_self.sh [SST2_DIR (default ../shared/data/sst2)] [OUT (default runs/sst2)]
# 1. the ~6.9k sentences of SST-2 train (not its 67k fragments), no labels: pretrain/sst2_corpus.py
# 2. data_prep (configs/prep/sst2.yaml: MLM only, one sentence per sample, an 8k-piece tokenizer)
# 3. pretraining (configs/pretrain/sst2_self.yaml: tiny model, 300 steps; its wall time is in OUT/self/summary.json)
# 4. fine-tuning from the export and from random weights of the same shape, seeds 1-3 each
#    (configs/finetune/sst2_small_budget.yaml; LRs selected on dev: RANDOM_LR, PRETRAINED_LR)
# 5. the table: mean ± std over the seeds, dev and test (pretrain/seed_table.py)
# Every step is skipped when its output exists; set PYTHON to the venv's python if it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
SST2=${1:-../shared/data/sst2}
OUT=${2:-runs/sst2}
PYTHON=${PYTHON:-python}
RANDOM_LR=${RANDOM_LR:-1e-3}
PRETRAINED_LR=${PRETRAINED_LR:-1e-3}
export HF_HUB_OFFLINE=1

[[ -f "$OUT/corpus.txt" ]] || "$PYTHON" -m pretrain.sst2_corpus "$SST2/train.tsv" --out "$OUT/corpus.txt"
[[ -f "$OUT/data/manifest.json" ]] || "$PYTHON" -m data_prep --config configs/prep/sst2.yaml \
    inputs="[$OUT/corpus.txt]" out_dir="$OUT/data"
[[ -f "$OUT/self/summary.json" ]] || "$PYTHON" -m pretrain --config configs/pretrain/sst2_self.yaml \
    data_dir="$OUT/data" run_dir="$OUT/self"
rows=()
for init in random pretrained; do
    lr=$([[ $init == random ]] && echo "$RANDOM_LR" || echo "$PRETRAINED_LR")
    dirs=""
    for seed in 1 2 3; do
        out="$OUT/finetune/$init-lr$lr-s$seed"
        [[ -f "$out/eval.json" ]] || "$PYTHON" -m pretrain.finetune --config configs/finetune/sst2_small_budget.yaml \
            model="$OUT/self/export" init=$init lr="$lr" seed=$seed out_dir="$out" \
            train_file="$SST2/train.tsv" valid_file="$SST2/dev.tsv" test_file="$SST2/test.tsv"
        dirs+="$out,"
    done
    rows+=("$init=$dirs")
done
"$PYTHON" -m pretrain.seed_table "${rows[@]}"
