"""Chinese through the whole project on one process: prep, a short pretraining, fine-tuning.

    python -m benchmarks.studies.chinese_end_to_end runs/zh [--mb 3] [--steps 300]

1. A generated Chinese corpus (``benchmarks.corpus``: jieba-dictionary text with ANSI colour codes,
   hard wraps and near duplicates) plus unlabelled reviews of the fine-tuning task's kind (the
   in-domain text that pretraining is for), prepared with ``configs/prep/zh.yaml``.
2. The tiny model pretrained on it for ``--steps`` steps (1 rank, ``configs/pretrain/demo.yaml``).
3. A generated Chinese review-polarity task (labels 正面/负面; a negation 不 flips the polarity word,
   so word counting alone does not solve it), fine-tuned from the pretrained export and from random
   weights (``init=random``), same config otherwise.

Writes ``<out>/result.json`` with the prep report's counts, the pretraining losses and both
fine-tuning runs' accuracies. No network; everything is generated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.corpus import write_corpus

SUBJECTS = [
    "这家餐厅",
    "这部电影",
    "这本书",
    "这款手机",
    "酒店的房间",
    "快递服务",
    "这次旅行",
    "老师的课",
    "这家商店",
]
ASPECTS = ["服务", "质量", "价格", "环境", "内容", "味道", "速度", "设计"]
DEGREES = ["很", "非常", "特别", "比较", "十分", "真的"]
POSITIVE = ["好", "满意", "舒服", "精彩", "方便", "干净", "实惠", "喜欢"]
NEGATIVE = ["差", "失望", "糟糕", "难受", "麻烦", "脏", "贵", "讨厌"]
FILLERS = [
    "我们上周去了一次。",
    "朋友推荐的。",
    "总的来说就是这样。",
    "下次再说吧。",
    "第一次来这里。",
    "用了一个月了。",
]


def review(rng: np.random.Generator) -> tuple[str, str]:
    """One review and its label: the polarity word, flipped by 不 before it."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.4
    word = str(rng.choice(POSITIVE if positive else NEGATIVE))
    degree = "不太" if negated else str(rng.choice(DEGREES))
    core = f"{rng.choice(SUBJECTS)}的{rng.choice(ASPECTS)}{degree}{word}。"
    parts = [str(rng.choice(FILLERS)), core] if rng.random() < 0.5 else [core, str(rng.choice(FILLERS))]
    return "".join(parts), "正面" if positive != negated else "负面"


def write_task(directory: Path, seed: int = 7) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    sizes = {"train": 8000, "valid": 1000, "test": 1000}
    for split, n in sizes.items():
        with open(directory / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for _ in range(n):
                text, label = review(rng)
                handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
    return sizes


def write_reviews(path: Path, documents: int, seed: int = 11) -> None:
    """Unlabelled reviews for pretraining, ten to a document (another seed than the task's)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(documents):
            text = "".join(review(rng)[0] for _ in range(10))
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def run(command: list[str], log: Path) -> None:
    print("+", " ".join(command), flush=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=os.environ)
    if done.returncode:
        sys.exit(f"error: {command[2]} failed (exit {done.returncode}); see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--mb", type=float, default=3.0, help="MB of generated corpus text")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps")
    args = parser.parse_args()
    out = args.out.resolve()
    corpus, task = out / "corpus", out / "task"
    task.mkdir(parents=True, exist_ok=True)
    generated = write_corpus(corpus, args.mb, lang="zh", noise=True)
    write_reviews(corpus / "reviews.jsonl", documents=3000)
    sizes = write_task(task)
    python = sys.executable
    if not (out / "data" / "manifest.json").is_file():  # the same corpus again: prepared already
        run(
            [
                python, "-m", "data_prep", "--config", "configs/prep/zh.yaml", f"inputs=[{corpus}]",
                f"out_dir={out / 'data'}", "workers=1", "tokenizer.vocab_size=8000", "samples_per_shard=512",
                "tokenizer.sample_sentences=200000", "progress=false",
            ],
            out / "prep.log",
        )  # fmt: skip
    steps = args.steps
    run(
        [
            python, "-m", "pretrain", "--config", "configs/pretrain/demo.yaml", f"data_dir={out / 'data'}",
            f"run_dir={out / 'pretrain'}", f"max_steps={steps}", f"save_every={steps}", f"eval_every={steps}",
            f"schedule.warmup_steps={steps // 10}", "log_every=50", "eval_samples=512", "loader.workers=0",
        ],
        out / "pretrain.log",
    )  # fmt: skip
    finetune = {}
    for init in ("pretrained", "random"):
        run(
            [
                python, "-m", "finetune", "--config", "configs/finetune/example.yaml",
                f"model={out / 'pretrain' / 'export'}", f"init={init}", f"train_file={task / 'train.jsonl'}",
                f"valid_file={task / 'valid.jsonl'}", f"test_file={task / 'test.jsonl'}", "max_len=64",
                f"out_dir={out / ('finetune-' + init)}", "epochs=3", "lr=5.0e-4", "metric=accuracy",
                "patience=0",
            ],
            out / f"finetune-{init}.log",
        )  # fmt: skip
        evaluation = json.loads((out / f"finetune-{init}" / "eval.json").read_text())
        finetune[init] = {split: evaluation["splits"][split]["accuracy"] for split in ("valid", "test")}
    report = json.loads((out / "data" / "report.json").read_text())
    result = {
        "corpus": generated,
        "task_rows": sizes,
        "prep": {
            "documents": report["documents"],
            "duplicates": report["duplicates"],
            "repairs": report["repairs"],
            "tokens": report["tokens"],
            "vocab_size": report["tokenizer"].get("vocab_size"),
        },
        "pretrain_log_tail": (out / "pretrain.log").read_text().strip().splitlines()[-8:],
        "finetune_accuracy": finetune,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
