"""The scoreboard (python -m finetune.suite): task files, selection on dev with test read once per run,
random-init twins and paired differences, failed rows, resume after a kill. Tiny model and data."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bounded import run_bounded
from launching import fresh_world_env
from test_finetune import SPECIAL, base, write_tsv  # noqa: F401

from benchmarks.synthetic_shards import local_bert_tokenizer
from data_prep.typed_config import ConfigError
from finetune import suite as suite_module
from finetune import train as train_module
from finetune.scoreboard import paired_difference
from finetune.suite import Fingerprints, PlannedRun, model_rows, run_suite
from finetune.tasks import available, load_task

REPO = Path(__file__).resolve().parents[1]
TAG_WORDS = {"PER": [f"good{i}" for i in range(10)], "LOC": [f"bad{i}" for i in range(10)]}


def task_file(path: Path, finetune: dict, grid: dict | None = None) -> Path:
    path.write_text(json.dumps({"description": "a tiny task.", "finetune": finetune, "grid": grid or {}}))
    return path  # JSON is YAML


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory) -> dict[str, Path]:
    """A classification task, a token task, and one whose label column does not exist (every run fails)."""
    root = tmp_path_factory.mktemp("suite_tasks")
    classification = {
        "train_file": str(write_tsv(root / "train.tsv", 160, seed=20)),
        "valid_file": str(write_tsv(root / "dev.tsv", 60, seed=21)),
        "test_file": str(write_tsv(root / "test.tsv", 60, seed=22)),
        "text_column": "sentence",
        "batch_size": 16,
        "epochs": 1,
        "precision": "fp32",
    }
    rng, sentences = random.Random(3), {}
    for split, count in (("train", 120), ("valid", 40), ("test", 40)):
        blocks = []
        for _ in range(count):
            words = []
            for _ in range(rng.randint(3, 8)):
                tag = rng.choice(["O", "PER", "LOC"])
                word = rng.choice(TAG_WORDS[tag]) if tag != "O" else f"the{rng.randrange(20)}"
                words.append(f"{word} {'O' if tag == 'O' else 'B-' + tag}")
            blocks.append("\n".join(words))
        sentences[split] = root / f"ner_{split}.txt"
        sentences[split].write_text("\n\n".join(blocks) + "\n")
    token = {
        "task": "token_classification",
        "train_file": str(sentences["train"]),
        "valid_file": str(sentences["valid"]),
        "test_file": str(sentences["test"]),
        "batch_size": 16,
        "epochs": 1,
        "lr": 3e-3,
        "precision": "fp32",
    }
    return {
        "cls": task_file(root / "cls.yaml", {**classification, "lr": 3e-3}),
        "cls_grid": task_file(root / "cls_grid.yaml", classification, {"lr": [1e-3, 3e-3]}),
        "ner": task_file(root / "ner.yaml", token),
        "broken": task_file(root / "broken.yaml", {**classification, "label_column": "stars"}),
    }


# ---- task files -----------------------------------------------------------------------------


def test_every_shipped_task_file_loads_with_its_grid():
    assert {"sst2", "conll2003", "rte", "chnsenticorp", "people_daily_ner"} <= set(available())
    for name in available():
        task = load_task(name)
        assert task.points(), name
        assert task.metric in ("accuracy", "f1", "macro_f1", "pearson", "spearman")


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"finetune": {"train_file": "x.tsv", "model": "m"}}, "sets model: the suite sets those per run"),
        ({"finetune": {"train_file": "x.tsv", "learning_rate": 1}}, "learning_rate"),
        ({"finetune": {"train_file": "x.tsv"}, "grid": {"lr": []}}, "grid key 'lr' lists no values"),
        ({"finetune": {"train_file": "x.tsv"}, "grid": {"epochs": [1, -2]}}, "epochs"),
    ],
)
def test_a_bad_task_file_is_one_line_naming_the_key(tmp_path, spec, message):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_task(str(path))


def test_an_unknown_task_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="name one of .*sst2"):
        load_task("no_such_task")


def test_fingerprint_follows_the_task_the_data_and_the_weights_a_twin_reads(base, tiny_tasks, tmp_path):  # noqa: F811
    import shutil

    model = tmp_path / "model"
    shutil.copytree(base, model)
    pretrained, random_twin = model_rows([str(model)], None, random_init=True)
    task = load_task(str(tiny_tasks["cls"]))
    before = {row.init: Fingerprints().run(PlannedRun(row, task, 1), {}) for row in (pretrained, random_twin)}
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")  # new bytes: a changed base
    after = {row.init: Fingerprints().run(PlannedRun(row, task, 1), {}) for row in (pretrained, random_twin)}
    assert after["pretrained"] != before["pretrained"]
    assert after["random"] == before["random"]  # the twin never reads the weights
    assert Fingerprints().run(PlannedRun(random_twin, task, 2), {}) != after["random"]  # the seed counts
    assert Fingerprints().run(PlannedRun(random_twin, task, 1), {"max_train_samples": 50}) != after["random"]
    assert Fingerprints().run(PlannedRun(random_twin, task, 1), {}, dev_only=True) != after["random"]
    train = Path(task.spec.finetune["train_file"])
    saved = train.read_text()
    try:
        train.write_text(saved + "1\tgood1 the2\n")
        assert Fingerprints().run(PlannedRun(random_twin, task, 1), {}) != after["random"]
    finally:
        train.write_text(saved)


def test_paired_difference_uses_the_shared_seeds_and_a_t_interval():
    result = paired_difference({1: 0.80, 2: 0.84, 3: 0.90}, {1: 0.70, 2: 0.72, 4: 0.5})
    assert result["seeds"] == [1, 2]
    assert result["mean"] == pytest.approx(0.11)
    # differences 0.10 and 0.12: std 0.01414, t(0.975, 1) = 12.706
    assert result["high"] - result["mean"] == pytest.approx(12.706 * 0.014142 / 2**0.5, rel=1e-3)
    assert paired_difference({1: 0.8}, {1: 0.7})["low"] is None
    assert paired_difference({1: 0.8}, {2: 0.7}) is None


# ---- runs -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_test_split_is_read_once_per_run_after_selection_on_dev(
    base,  # noqa: F811
    tiny_tasks,
    tmp_path,
    monkeypatch,
    capsys,
):
    """A 2-point grid, a random-init twin, 2 seeds: each run evaluates valid for both points, then test
    once, for the point whose dev metric is best; reruns skip what finished."""
    calls = []
    evaluate = train_module.evaluate

    def recording_evaluate(model, split, job, place):
        name = next(key for key, value in job.splits.items() if value is split)
        calls.append((name, Path(job.config.out_dir)))
        return evaluate(model, split, job, place)

    monkeypatch.setattr(train_module, "evaluate", recording_evaluate)
    out = tmp_path / "suite"
    report = run_suite([str(base)], [str(tiny_tasks["cls_grid"])], [1, 2], out, random_init=True)

    assert report["progress"] == {"planned": 4, "done": 4, "failed": 0}
    for record in report["runs"]:
        run_dir = out / record["dir"]
        mine = [(name, path) for name, path in calls if path.parent == run_dir]
        tests = [index for index, (name, _) in enumerate(mine) if name == "test"]
        assert len(tests) == 1, record["dir"]  # read once per run
        assert tests[0] == len(mine) - 1  # after every validation of every grid point
        assert {path.name for name, path in mine if name == "valid"} == {"lr-0.001", "lr-0.003"}
        best = max(record["grid"], key=lambda point: point["dev"])
        assert record["selected"] == f"lr-{best['point']['lr']}"
        assert mine[tests[0]][1].name == record["selected"]
        selected = json.loads((run_dir / record["selected"] / "eval.json").read_text())
        assert selected["splits"]["test"]["accuracy"] == record["test"]["accuracy"]
        assert (run_dir / record["selected"] / "predictions.tsv").is_file()
        other = next(p for p in run_dir.iterdir() if p.is_dir() and p.name != record["selected"])
        assert "test" not in json.loads((other / "eval.json").read_text())["splits"]

    markdown = (out / "suite.md").read_text()
    assert "(random init)" in markdown and "Pretrained minus random init" in markdown
    difference = report["summary"]["pretrained_minus_random"][0]["tasks"]["cls_grid"]
    assert difference["n"] == 2 and difference["low"] <= difference["mean"] <= difference["high"]
    assert (out / "suite.png").stat().st_size > 1000

    calls.clear()
    capsys.readouterr()
    again = run_suite([str(base)], [str(tiny_tasks["cls_grid"])], [1, 2, 3], out, random_init=True)
    assert "4 finished earlier and kept, 2 to run" in capsys.readouterr().out
    assert {path.parent.name for _, path in calls} == {"seed-3"}  # nothing finished is trained again
    assert again["progress"]["done"] == 6


@pytest.mark.slow
def test_dev_only_never_reads_test_and_compares_on_dev(base, tiny_tasks, tmp_path, monkeypatch):  # noqa: F811
    """--dev-only (a recipe lever chosen on dev): no run evaluates test, the tables and the paired
    differences are on dev (the fingerprint test shows a full suite does not take its records)."""
    splits = []
    evaluate = train_module.evaluate

    def recording_evaluate(model, split, job, place):
        splits.append(next(key for key, value in job.splits.items() if value is split))
        return evaluate(model, split, job, place)

    monkeypatch.setattr(train_module, "evaluate", recording_evaluate)
    out = tmp_path / "suite"
    report = run_suite(
        [str(base)], [str(tiny_tasks["cls"]), str(tiny_tasks["ner"])], [1], out, True, dev_only=True
    )

    assert report["progress"] == {"planned": 4, "done": 4, "failed": 0} and report["dev_only"]
    assert "valid" in splits and "test" not in splits
    for record in report["runs"]:
        assert "test" not in record and record["dev"][record["metric"]] >= 0
        assert (
            "test"
            not in json.loads((out / record["dir"] / record["selected"] / "eval.json").read_text())["splits"]
        )
    ner = next(r for r in report["runs"] if r["task"] == "ner" and r["init"] == "pretrained")
    assert set(ner["per_type_f1"]) == {"dev"}
    for entry in report["summary"]["table"]:
        assert entry["cells"]["cls"]["test"] is None and entry["cells"]["cls"]["dev"]["n"] == 1
        assert set(entry["cells"]["ner"]["dev_f1_per_type"]) == {"LOC", "PER"}
    difference = report["summary"]["pretrained_minus_random"][0]["tasks"]["cls"]
    by_init = {r["init"]: r["dev"]["accuracy"] for r in report["runs"] if r["task"] == "cls"}
    assert difference["mean"] == pytest.approx(by_init["pretrained"] - by_init["random"])
    markdown = (out / "suite.md").read_text()
    assert "the test split was not read" in markdown and "cls accuracy test" not in markdown
    assert "dev metric, paired by seed" in markdown and "## ner: dev F1 per entity type" in markdown


@pytest.mark.slow
def test_the_chinese_task_file_runs_on_a_character_vocabulary(tmp_path, monkeypatch):
    """configs/suite/chnsenticorp.yaml on generated reviews: positive and negative characters."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    positive, negative, filler = "好棒赞美满爱喜乐优佳", "差坏烂糟慢脏贵吵破旧", "的了是在房间酒店服务我们"
    rng = random.Random(5)
    data = tmp_path / "data" / "chnsenticorp"
    data.mkdir(parents=True)
    for split, rows in (("train", 800), ("dev", 100), ("test", 100)):
        lines = ["label\ttext_a"]
        for _ in range(rows):
            label = rng.randrange(2)
            chars = positive if label else negative
            lines.append(
                f"{label}\t" + "".join(rng.choice(chars if rng.random() < 0.4 else filler) for _ in range(12))
            )
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    model_dir = tmp_path / "zh_base"
    tokenizer = local_bert_tokenizer(SPECIAL + sorted(set(positive + negative + filler)), wordpiece=True)
    tokenizer.save_pretrained(model_dir)
    torch.manual_seed(0)
    assert tokenizer.tokenize("好的差") == ["好", "的", "差"]  # a token per character, none unknown
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(config).save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)  # the task file's data paths are relative to where the suite runs

    report = run_suite([str(model_dir)], ["chnsenticorp"], [1], tmp_path / "suite")
    (record,) = report["runs"]
    assert record["status"] == "ok", record.get("error")
    assert record["test"]["accuracy"] > 0.7  # the characters carry the label: learnable from scratch


def _finished(out: Path) -> dict[Path, int]:
    return {
        path: path.stat().st_mtime_ns
        for path in out.glob("runs/*/*/*/suite_run.json")
        if json.loads(path.read_text())["status"] == "ok"
    }


@pytest.mark.slow
def test_two_models_two_tasks_two_seeds_killed_and_resumed_with_failed_rows(base, tiny_tasks, tmp_path):  # noqa: F811
    """The command as a user runs it: killed after some runs finished, rerun to the end; nothing finished
    is repeated, the task whose label column is missing gives failed rows and exit status 1."""
    import shutil

    second = tmp_path / "second_base"
    shutil.copytree(base, second)
    out = tmp_path / "suite"
    tasks = ",".join(str(tiny_tasks[name]) for name in ("cls", "ner", "broken"))
    command = [
        sys.executable,
        "-m",
        "finetune.suite",
        str(base),
        str(second),
        "--names",
        "one,two",
        "--tasks",
        tasks,
        "--seeds",
        "1,2",
        "--out",
        str(out),
    ]
    # A fresh process group: not this process's (the in-process suites above left RANK, MASTER_PORT...).
    env = fresh_world_env() | {"HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while len(_finished(out)) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    kept = _finished(out)
    assert 3 <= len(kept) < 8, "the kill came too late to test a resume"
    assert "Partial" in (out / "suite.md").read_text()  # a killed suite's table says it is not whole

    second_run = run_bounded(command, cwd=REPO, env=env, timeout=300)
    assert second_run.returncode == 1, second_run.stderr[-2000:]  # some runs failed
    assert f"{len(kept)} finished earlier and kept, {12 - len(kept)} to run" in second_run.stdout
    assert {path: _finished(out)[path] for path in kept} == kept  # not one finished run repeated
    report = json.loads((out / "suite.json").read_text())
    assert report["progress"] == {"planned": 12, "done": 12, "failed": 4}
    failed = [r for r in report["runs"] if r["status"] == "failed"]
    assert {r["task"] for r in failed} == {"broken"}
    assert all("stars" in r["error"] for r in failed), failed[0]["error"]
    markdown = (out / "suite.md").read_text()
    assert "Partial" not in markdown and "2 failed" in markdown and "error:" in markdown
    for record in (r for r in report["runs"] if r["task"] == "ner"):  # entity F1 per type, each split
        assert set(record["per_type_f1"]["dev"]) == set(record["per_type_f1"]["test"]) == {"LOC", "PER"}
    ner_table = markdown.split("## ner: test F1 per entity type")[1].split("##")[0]
    assert "| model | LOC | PER |" in ner_table and ner_table.count(" ± ") == 4  # 2 rows x 2 types, 2 seeds
    assert (out / "suite.png").is_file()


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        suite_module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--tasks", "--seeds", "--random-init", "--max-train-samples", "--names", "--out"):
        assert option in text


def test_two_models_with_one_label_are_refused(base):  # noqa: F811
    with pytest.raises(ConfigError, match="--names"):
        model_rows([str(base), str(base)], None, random_init=False)
