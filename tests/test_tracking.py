"""Experiment tracking (pretrain/tracking.py): TensorBoard, offline W&B and CSV at once; resume;
failures are one warning line; and a real 1-process pretraining run reporting to all three."""

import csv
import json
import sys
from pathlib import Path

import pytest

from data_prep.typed_config import ConfigError, load_config
from pretrain.config import PretrainConfig
from pretrain.plot import plot_losses
from pretrain.tracking import Tracker


@pytest.fixture
def no_wandb_account(tmp_path, monkeypatch):
    """No key anywhere (no .netrc) and no WANDB_MODE: the tracker must pick offline itself. (HOME
    stays: DeepSpeed's compiled ops are cached under it.)"""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_run_files(run_dir: Path) -> tuple[Path, list[str]]:
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    return offline, sorted(str(p.relative_to(offline)) for p in offline.rglob("*") if p.is_file())


def test_tensorboard_wandb_offline_and_csv_at_once(tmp_path, no_wandb_account):
    said: list[str] = []
    rows = [{"kind": "train", "step": s, "loss": 2.0 / s, "lr": 1e-3} for s in (1, 2, 3)]
    rows.append({"kind": "eval", "step": 3, "split": "valid", "loss": 0.9, "accuracy": 0.75})
    tracker = Tracker(
        tmp_path, ["tensorboard", "wandb", "csv"], True, config={"lr": 1e-3, "model": "tiny"}, say=said.append
    )
    assert set(tracker.backends) == {"tensorboard", "wandb", "csv"}
    for row in rows:
        tracker.log(row)
    tracker.summary({"final_eval": {"accuracy": 0.75}, "steps": 3})
    tracker.image("loss_plot", plot_losses(rows, tmp_path / "loss.png"))
    tracker.close()

    offline, files = wandb_run_files(tmp_path)
    assert said == [f"wandb: offline (no API key configured); upload later with: wandb sync {offline}"]
    print("offline W&B run files:", files)
    assert f"run-{offline.name.rsplit('-', 1)[1]}.wandb" in files and "logs/debug.log" in files
    assert any(name.startswith("files/media/images/loss_plot") for name in files)
    # The run's records (protobuf in a LevelDB-style log, uploaded by `wandb sync`) hold our keys.
    record = (offline / files[[name.endswith(".wandb") for name in files].index(True)]).read_bytes()
    for key in (b"train/loss", b"eval/valid/accuracy", b"final_eval/accuracy", b"model", b"tiny"):
        assert key in record, key

    assert [(r["step"], float(r["loss"])) for r in read_csv(tmp_path / "csv" / "train.csv")] == [
        (str(s), 2.0 / s) for s in (1, 2, 3)
    ]
    assert read_csv(tmp_path / "csv" / "eval.csv") == [
        {"kind": "eval", "step": "3", "split": "valid", "loss": "0.9", "accuracy": "0.75"}
    ]
    assert {"key": "final_eval/accuracy", "value": "0.75"} in read_csv(tmp_path / "csv" / "summary.csv")
    tb = scalars(tmp_path / "tb")
    assert tb["train/loss"] == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    assert tb["eval/valid/accuracy"] == [(3, 0.75)]


def test_resume_drops_rows_past_the_checkpoint(tmp_path, no_wandb_account):
    first = Tracker(tmp_path, ["tensorboard", "csv"], True)
    for step in range(1, 6):
        first.log({"kind": "train", "step": step, "loss": float(step)})
    first.close()  # a crash after step 5; the last checkpoint was step 3
    resumed = Tracker(tmp_path, ["tensorboard", "csv"], True, resume_step=3)
    for step in (4, 5):
        resumed.log({"kind": "train", "step": step, "loss": 10.0 + step})
    resumed.close()
    assert [float(r["loss"]) for r in read_csv(tmp_path / "csv" / "train.csv")] == [1, 2, 3, 14, 15]
    assert [value for _, value in scalars(tmp_path / "tb")["train/loss"]] == [1, 2, 3, 14, 15]


def test_a_failing_backend_is_one_warning_and_the_others_go_on(tmp_path, monkeypatch):
    said: list[str] = []
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    tracker = Tracker(tmp_path, ["wandb", "csv"], True, say=said.append)
    assert said == [
        "warning: report_to wandb cannot start (wandb is not installed (pip install wandb)); "
        "training goes on without it"
    ]
    monkeypatch.delitem(sys.modules, "wandb")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "bad")
    Tracker(tmp_path / "bad_key", ["wandb"], True, say=said.append)
    assert said[1].startswith("warning: report_to wandb cannot start (AuthenticationError: ")
    assert said[1].endswith("training goes on without it") and len(said) == 2

    # A backend failing mid-run (here: its dir removed and replaced by a file) is dropped after one line.
    tracker.log({"kind": "train", "step": 1, "loss": 1.0})
    (tmp_path / "csv" / "train.csv").unlink()
    (tmp_path / "csv").rmdir()
    (tmp_path / "csv").write_text("not a dir")
    tracker.log({"kind": "train", "step": 2, "loss": 1.0})
    tracker.log({"kind": "train", "step": 3, "loss": 1.0})
    assert len(said) == 3 and said[2].startswith("warning: report_to csv failed in row (")
    assert tracker.backends == {}


def test_other_ranks_report_nothing(tmp_path):
    tracker = Tracker(tmp_path, ["tensorboard", "wandb", "csv"], enabled=False)
    tracker.log({"kind": "train", "step": 1, "loss": 1.0})
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown report_to 'mlflow'; use any of tensorboard, wandb, csv"):
        load_config(PretrainConfig, None, ["data_dir=d", "run_dir=r", "report_to=[csv, mlflow]"])
    assert load_config(PretrainConfig, None, ["data_dir=d", "run_dir=r", "report_to=csv"]).report_to == [
        "csv"
    ]


@pytest.mark.slow
def test_pretraining_reports_to_all_three(tmp_path, no_wandb_account):
    from launching import explain, run_pretrain
    from synthetic_data import make_data_dir

    data_dir = make_data_dir(tmp_path / "data", train_shards=2, samples_per_shard=32)
    run_dir = tmp_path / "run"
    result = run_pretrain(
        data_dir,
        run_dir,
        "max_steps=4",
        "eval_every=4",
        "report_to=[tensorboard,wandb,csv]",
        "export=false",
        ranks=1,
    )
    assert result.returncode == 0, explain(result)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = read_csv(run_dir / "csv" / "train.csv")
    assert (
        [int(r["step"]) for r in train]
        == [r["step"] for r in metrics if r["kind"] == "train"]
        == [1, 2, 3, 4]
    )
    assert float(train[-1]["loss"]) == pytest.approx(metrics[3]["loss"])
    assert read_csv(run_dir / "csv" / "eval.csv")[0]["mlm_acc"]
    assert {row["key"] for row in read_csv(run_dir / "csv" / "summary.csv")} >= {
        "steps",
        "final_eval/mlm_loss",
    }
    assert len(scalars(run_dir / "tb")["train/loss"]) == 4
    offline, files = wandb_run_files(run_dir)
    assert any(name.startswith("files/media/images/loss_plot") for name in files)
    assert b"micro_batch_size" in (offline / next(f for f in files if f.endswith(".wandb"))).read_bytes()
    assert (
        "wandb: offline (no API key configured); upload later with: wandb sync"
        in result.stdout + result.stderr
    )


def test_finetuning_reports_and_its_model_dir_serves(tmp_path, no_wandb_account):
    """A short real fine-tuning run with trackers (W&B's own part is tested above); its model/ (today's layout, no
    finetune.json) then loads for serving with what the run knew: labels, max_len, summary."""
    from test_finetune import BAD, FILLER, GOOD, write_tsv

    from benchmarks.load_test import make_model_dir
    from finetune.config import FinetuneConfig
    from finetune.train import run
    from serve.engine import Predictor

    base = make_model_dir(tmp_path / "base", vocabulary=GOOD + BAD + FILLER, max_len=64)
    train = write_tsv(tmp_path / "train.tsv", 160, seed=1)
    out = tmp_path / "out"
    config = load_config(
        FinetuneConfig,
        None,
        [
            f"model={base}",
            f"train_file={train}",
            f"out_dir={out}",
            "text_column=sentence",
            "epochs=1",
            "batch_size=16",
            "lr=1e-3",
            "max_len=40",
            "label_names={0: good, 1: bad}",
            "report_to=[tensorboard, wandb, csv]",
        ],
    )
    result = run(config)
    final = {row["split"]: row for row in read_csv(out / "csv" / "final.csv")}
    assert float(final["test"]["accuracy"]) == pytest.approx(result["splits"]["test"]["accuracy"])
    assert len(read_csv(out / "csv" / "eval.csv")) == 1 and (out / "loss.png").is_file()
    tb = scalars(out / "tb")
    assert tb["final/test/accuracy"][0][1] == pytest.approx(result["splits"]["test"]["accuracy"])
    predictor = Predictor(out / "model")
    assert predictor.info.labels == ["good", "bad"] and predictor.info.max_len == 40
    assert predictor.info.summary["test"]["accuracy"] == result["splits"]["test"]["accuracy"]
    assert predictor.predict(["good1 the2 good3"])[0]["label"] in ("good", "bad")
