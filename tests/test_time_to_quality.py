"""The time-to-quality benchmark (benchmarks/time_to_quality.py): the Hugging Face Trainer side as
its own process, the referee, the time-to-target interpolation and the report."""

import json
import sys

import pytest
from synthetic_data import make_data_dir

from benchmarks.hf_trainer_mlm import PIECE_DONE, mlm_only_layout
from benchmarks.launching import launch
from benchmarks.time_to_quality import (
    Referee,
    _run_time,
    markdown,
    mean_curve,
    plot,
    summarize,
    time_to_reach,
)


@pytest.fixture(scope="module")
def mlm_data(tmp_path_factory):
    return make_data_dir(
        tmp_path_factory.mktemp("ttq") / "data", train_shards=2, samples_per_shard=64, nsp=False
    )


def test_time_to_reach_is_linear_between_checkpoints():
    points = [
        {"at_s": 10.0, "referee_loss": 5.0},
        {"at_s": 20.0, "referee_loss": 4.0},
        {"at_s": 30.0, "referee_loss": 3.0},
    ]
    assert time_to_reach(points, 3.5) == pytest.approx(25.0)
    assert time_to_reach(points, 5.5) == 10.0  # the first checkpoint already reaches it
    assert time_to_reach(points, 2.0) is None


def test_a_run_in_pieces_counts_its_launches_not_the_gaps_between_them():
    pieces = [{"started": 100.0, "finished": 130.0}, {"started": 500.0, "finished": 520.0}]
    assert _run_time(pieces, 110.0) == 10.0
    assert _run_time(pieces, 130.0) == 30.0  # the checkpoint that ended the first piece
    assert _run_time(pieces, 505.0) == 35.0  # 30 s of the first launch, 5 s into the second
    assert _run_time(pieces, 520.0) == 50.0


def _run(side, seed, wall, losses):
    points = [
        {"step": 10 * (i + 1), "at_s": wall * (i + 1) / len(losses), "referee_loss": v}
        for i, v in enumerate(losses)
    ]
    return {
        "side": side,
        "seed": seed,
        "wall_s": wall,
        "tokens_per_s": 1000.0,
        "checkpoints": points,
        "final_referee_loss": losses[-1],
    }


def test_the_report_gives_our_time_to_the_trainers_final_loss(tmp_path):
    runs = [
        _run("ours", 1, 100, [6.0, 5.0, 4.0]),
        _run("ours", 2, 100, [6.0, 4.6, 4.2]),
        _run("hf-trainer", 1, 300, [6.5, 5.5, 4.4]),
        _run("hf-trainer", 2, 300, [6.5, 5.5, 4.6]),
    ]
    sides = summarize(runs)
    assert sides["hf-trainer"]["final_referee_loss"][0] == pytest.approx(4.5)
    # the target is the Trainer's mean, 4.5: seed 1 passes it half-way from 66.7 s (5.0) to 100 s (4.0),
    # seed 2 a quarter of the way from 66.7 s (4.6) to 100 s (4.2)
    reached = sides["ours"]["time_to_hf_final_loss_s"]
    assert reached[0] == pytest.approx(200 / 3 + 0.5 * 100 / 3) and reached[1] == pytest.approx(
        200 / 3 + 0.25 * 100 / 3
    )
    assert sides["ours"]["time_to_hf_final_loss_fraction"] == pytest.approx(sum(reached) / 2 / 300)
    setup = {
        "model": "tiny",
        "steps": 30,
        "data": "d",
        "batch": 64,
        "seq_len": 128,
        "ranks": 2,
        "lr": 2e-3,
        "precision": "bf16",
        "referee_samples": 64,
    }
    result = {"setup": setup, "device": "cpu", "commit": "x", "date": "today", "sides": sides, "runs": runs}
    text = markdown(result)
    assert "| ours | 2 |" in text and "of the Trainer's wall time" in text
    plot(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_the_seed_mean_curve_reaches_the_target_where_one_seed_does_not():
    runs = [
        _run("ours", 1, 90, [6.0, 5.0, 4.0]),
        _run("ours", 2, 120, [6.0, 5.2, 4.8]),  # never reaches 4.5 alone
        _run("hf-trainer", 1, 300, [6.5, 5.5, 4.5]),
    ]
    curve = mean_curve(runs[:2])
    assert [p["step"] for p in curve] == [10, 20, 30]
    assert curve[-1]["at_s"] == pytest.approx(105) and curve[-1]["referee_loss"] == pytest.approx(4.4)
    sides = summarize(runs)
    assert sides["ours"]["time_to_hf_final_loss_s"][1] is None
    assert "time_to_hf_final_loss_fraction" not in sides["ours"]  # no mean over a seed that never got there
    # the mean curve: 5.1 at 70 s, 4.4 at 105 s; 4.5 is 6/7 of the way
    assert sides["ours"]["mean_curve_time_to_hf_final_loss_s"] == pytest.approx(70 + 6 / 7 * 35)
    assert sides["ours"]["mean_curve_time_to_hf_final_loss_fraction"] == pytest.approx((70 + 30) / 300)


def test_an_nsp_data_dir_is_refused_in_one_line(tmp_path):
    pairs = make_data_dir(tmp_path / "pairs", train_shards=1, samples_per_shard=8, nsp=True)
    with pytest.raises(SystemExit, match="mlm\\+nsp examples.*objective=mlm"):
        mlm_only_layout(str(pairs))


@pytest.mark.slow
def test_the_hf_trainer_side_trains_in_pieces_saves_and_the_referee_scores_it(mlm_data, tmp_path):
    """The Trainer as a user runs it, in its own process, in two pieces: the first stops after its
    first step with a checkpoint (--stop-after-s 0, exit PIECE_DONE), the second resumes from it to
    the end; checkpoints every 5 steps load as BertForMaskedLM; the referee's loss (the same fixed
    masking every time) falls as it trains."""
    out = tmp_path / "hf"
    command = [
        sys.executable,
        "-m",
        "benchmarks.hf_trainer_mlm",
        f"--data={mlm_data}",
        f"--out={out}",
        "--model=tiny",
        "--steps=10",
        "--batch=16",
        "--lr=5e-3",
        "--save-steps=5",
        "--threads=1",
    ]
    code = launch([*command, "--stop-after-s=0"], tmp_path / "hf-1.log", timeout_s=300)
    assert code == PIECE_DONE, (tmp_path / "hf-1.log").read_text()[-3000:]
    assert (out / "checkpoint-1").is_dir() and not (out / "result.json").exists()
    code = launch(command, tmp_path / "hf-2.log", timeout_s=300)  # the benchmark's own launcher
    assert code == 0, (tmp_path / "hf-2.log").read_text()[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 10 and result["pieces"] == 2 and result["tokens"] > 0
    pieces = json.loads((out / "pieces.json").read_text())
    assert [piece["steps_to"] for piece in pieces] == [1, 10]
    assert pieces[1]["resumed_from"] == str(out / "checkpoint-1")
    referee = Referee(str(mlm_data), *mlm_only_layout(str(mlm_data)), samples=32)
    first, last = referee.loss(str(out / "checkpoint-5")), referee.loss(str(out / "checkpoint-10"))
    assert referee.loss(str(out / "checkpoint-10")) == last  # one fixed masking
    assert last < first < 6.0, (first, last)  # below log(200) ~ 5.3 + noise: it learned
