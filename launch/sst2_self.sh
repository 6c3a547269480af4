#!/usr/bin/env bash
# README's SST-2 table in one command: random init, self-pretrained on SST-2's own text, pretrained
# on pydocs, and pydocs continued on SST-2's text, each fine-tuned with seeds 1-3.
#     launch/sst2_self.sh [SST2_DIR (default ../shared/data/sst2)] [OUT (default runs/sst2)]
# 1. the ~6.9k sentences of SST-2 train (not its 67k fragments), 8 to a document, no labels (benchmarks/studies/sst2_corpus.py)
# 2. data_prep: configs/prep/sst2.yaml (MLM only, an 8k-piece tokenizer of its own), and the same text
#    in the pydocs model's tokenizer for the continued run
# 3. pretraining: configs/pretrain/sst2_self.yaml (~19 min alone), pydocs_tiny.yaml (~15 min),
#    sst2_continued.yaml (~8 min); wall times in each run's summary.json
# 4. fine-tuning (configs/finetune/sst2_small_budget.yaml: 5,000 labelled rows) from each export and
#    from random weights of the self-pretrained shape, seeds 1-3, at the LR and epochs selected on dev
#    with seed 1 (README lists the grid): override with <ROW>_LR / <ROW>_EPOCHS
# 5. the table: mean ± std over the seeds, dev and test (benchmarks/studies/seed_table.py)
# Every step is skipped when its output exists; set PYTHON to the venv's python if it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
SST2=${1:-../shared/data/sst2}
OUT=${2:-runs/sst2}
PYDOCS=${PYDOCS:-runs/pydocs}
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1

[[ -f "$OUT/corpus.txt" ]] || "$PYTHON" -m benchmarks.studies.sst2_corpus "$SST2/train.tsv" --out "$OUT/corpus.txt"
[[ -f "$OUT/data/manifest.json" ]] || "$PYTHON" -m data_prep --config configs/prep/sst2.yaml \
    inputs="[$OUT/corpus.txt]" out_dir="$OUT/data"
[[ -f "$OUT/self/summary.json" ]] || "$PYTHON" -m pretrain --config configs/pretrain/sst2_self.yaml \
    data_dir="$OUT/data" run_dir="$OUT/self"
[[ -f "$PYDOCS/data/manifest.json" ]] || "$PYTHON" -m data_prep --config configs/prep/demo.yaml \
    out_dir="$PYDOCS/data" "pydocs.include=[]"
[[ -f "$PYDOCS/tiny/summary.json" ]] || "$PYTHON" -m pretrain --config configs/pretrain/pydocs_tiny.yaml \
    data_dir="$PYDOCS/data" run_dir="$PYDOCS/tiny"
[[ -f "$OUT/data_pydocs_tok/manifest.json" ]] || "$PYTHON" -m data_prep --config configs/prep/sst2.yaml \
    inputs="[$OUT/corpus.txt]" out_dir="$OUT/data_pydocs_tok" tokenizer.path="$PYDOCS/tiny/export"
[[ -f "$OUT/continued/summary.json" ]] || "$PYTHON" -m pretrain --config configs/pretrain/sst2_continued.yaml \
    data_dir="$OUT/data_pydocs_tok" run_dir="$OUT/continued" init_from="$PYDOCS/tiny/export"

# row name, base export, init, LR, epochs (selected on dev with seed 1)
ROWS=(
    "random init|$OUT/self/export|random|${RANDOM_LR:-1e-3}|${RANDOM_EPOCHS:-4}"
    "self-pretrained on SST-2 text|$OUT/self/export|pretrained|${SELF_LR:-3e-4}|${SELF_EPOCHS:-4}"
    "pretrained on pydocs|$PYDOCS/tiny/export|pretrained|${PYDOCS_LR:-1e-3}|${PYDOCS_EPOCHS:-4}"
    "pydocs, then SST-2 text|$OUT/continued/export|pretrained|${CONTINUED_LR:-1e-3}|${CONTINUED_EPOCHS:-4}"
)
table=()
for row in "${ROWS[@]}"; do
    IFS='|' read -r name base init lr epochs <<<"$row"
    dirs=""
    for seed in 1 2 3; do
        out="$OUT/finetune/$(basename "$(dirname "$base")")-$init-lr$lr-ep$epochs-s$seed"
        [[ -f "$out/eval.json" ]] || "$PYTHON" -m finetune --config configs/finetune/sst2_small_budget.yaml \
            model="$base" init="$init" lr="$lr" epochs="$epochs" seed="$seed" out_dir="$out" \
            train_file="$SST2/train.tsv" valid_file="$SST2/dev.tsv" test_file="$SST2/test.tsv"
        dirs+="$out,"
    done
    table+=("$name=$dirs")
done
"$PYTHON" -m benchmarks.studies.seed_table "${table[@]}"
