"""The throughput benchmark: generated shards, per-step FLOP accounting, rate summaries, and the
sweep end to end on the tiny model."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_data import train_stream
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.baseline import stock_labels
from benchmarks.step_timing import count_step
from benchmarks.sweep import add_utilisation, summarise
from benchmarks.synthetic_shards import CLS, SEP, nsp_examples, write_synthetic_data_dir
from benchmarks.throughput import main
from data_prep.manifest import load_manifest
from pretrain.config import resolve_model_config_path
from pretrain.flops import BertShape
from pretrain.model import PretrainingObjective, bert_config_from_preset, build_hf_model

SEQ_LEN, VOCAB = 64, 1000


def test_generated_examples_follow_bert_length_distribution():
    examples = nsp_examples(np.random.default_rng(0), 4000, seq_len=128, vocab_size=30522)
    lengths = np.array([ids.size for ids, _ in examples])
    assert lengths.max() == 128 and lengths.min() >= 5
    assert np.mean(lengths == 128) == pytest.approx(0.9, abs=0.02)  # short_seq_prob = 0.1
    assert np.mean([label for _, label in examples]) == pytest.approx(0.5, abs=0.03)
    for ids, _ in examples[:200]:
        assert ids[0] == CLS and ids[-1] == SEP and np.count_nonzero(ids == SEP) == 2
    words = np.concatenate([ids[1:-1][ids[1:-1] != SEP] for ids, _ in examples])
    assert words.min() >= 5 and np.mean(words == 5) > 10 * np.mean(words == 105)  # Zipf: rank 1 >> rank 101


def _padded_batch(data_dir: Path):
    """A real collated, masked batch of the generated data that contains padding."""
    stream = train_stream(data_dir, seed=0, micro_batch_size=8)
    batch = next(b for b in stream if b["num_tokens"] < b["input_ids"].numel())
    config = bert_config_from_preset(
        resolve_model_config_path("tiny"),
        stream.layout.vocab_size,
        load_manifest(data_dir)["tokenizer"]["special_ids"],
        SEQ_LEN,
    )
    return batch, config


def _counted_flops(loss_fn) -> int:
    with FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def test_executed_flops_of_a_benchmark_step_match_torch_counter(tmp_path):
    batch, config = _padded_batch(
        write_synthetic_data_dir(
            tmp_path / "data", seq_len=SEQ_LEN, vocab_size=VOCAB, train_shards=1, samples_per_shard=64
        )
    )
    shape = BertShape.from_config(config, nsp=True)
    torch.manual_seed(0)
    stock = build_hf_model(config, nsp=True)
    ours = PretrainingObjective(build_hf_model(config, nsp=True))

    counted_ours = _counted_flops(lambda: ours(**batch)["loss"])
    counted_stock = _counted_flops(
        lambda: (
            stock(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
                labels=stock_labels(batch),
                next_sentence_label=batch["next_sentence_label"],
            ).loss
        )
    )
    our_step = count_step(shape, batch, 1.0, full_vocab_head=False)
    stock_step = count_step(shape, batch, 1.0, full_vocab_head=True)
    assert our_step.hardware_flops == pytest.approx(counted_ours, rel=0.05)
    assert stock_step.hardware_flops == pytest.approx(counted_stock, rel=0.05)
    # The objective's FLOPs are the same for both, and less than either executed: padding is not counted.
    assert (
        our_step.model_flops == stock_step.model_flops < our_step.hardware_flops < stock_step.hardware_flops
    )


def test_summary_times_a_step_by_its_slowest_rank_and_counts_all_ranks():
    def record(seconds, tokens):
        return {
            "seconds": seconds,
            "samples": 4,
            "tokens": tokens,
            "padded_tokens": 512,
            "masked": 60,
            "model_flops": 1e9,
            "hardware_flops": 2e9,
        }

    rank0 = [record(1.0, 400), record(2.0, 400), record(9.0, 400)]
    rank1 = [record(1.5, 500), record(1.0, 500), record(1.0, 500)]
    summary = summarise([rank0, rank1])
    assert summary["step_times_s"] == [1.5, 2.0, 9.0]
    assert summary["step_time_s"] == 2.0  # the median: the stalled step (9 s) does not move it
    assert summary["tokens_per_s"] == pytest.approx(900 / 2.0)
    assert summary["padded_tokens_per_s"] == pytest.approx(1024 / 2.0)
    assert summary["samples_per_s"] == pytest.approx(8 / 2.0)
    point = {"status": "ok", **summary}
    add_utilisation(point, 1e10, ranks=1, on_gpu=False)
    assert point["mfu"] == pytest.approx(2e9 / 2.0 / 1e10)
    assert point["hfu"] == pytest.approx(4e9 / 2.0 / 1e10)


def _point(seconds, model_flops, tokens, prefix=""):
    return {
        prefix + "status": "ok",
        prefix + "step_time_s": seconds,
        prefix + "model_flops_per_step": model_flops,
        prefix + "hardware_flops_per_step": 1.25 * model_flops,
        prefix + "tokens_per_s": tokens,
    }


def test_mfu_is_per_device_with_several_ranks_and_the_gpu_baseline_runs_on_one_gpu():
    # 4 GPUs: all ranks' FLOPs over 4 GPUs' peaks; the baseline ran alone on one GPU at the same micro batch.
    point = {**_point(0.5, 4e14, 40_000), **_point(0.4, 0.5e14, 8_000, "baseline_")}
    add_utilisation(point, 1e15, ranks=4, on_gpu=True)
    assert point["mfu"] == pytest.approx(4e14 / 0.5 / 4e15) == 0.2
    assert point["hfu"] == pytest.approx(0.25)
    assert point["tokens_per_s_per_device"] == 10_000
    assert point["baseline_mfu"] == pytest.approx(0.5e14 / 0.4 / 1e15)
    assert point["baseline_tokens_per_s_per_device"] == 8_000
    assert point["speedup"] == pytest.approx(10_000 / 8_000)  # per GPU, not 4 GPUs against 1
    # 2 CPU ranks: the baseline ran on all the cores both ranks used, so it is measured against both.
    point = {**_point(0.5, 4e11, 6_000), **_point(1.0, 2e11, 2_000, "baseline_")}
    add_utilisation(point, 1e12, ranks=2, on_gpu=False)
    assert point["mfu"] == pytest.approx(0.4) and point["baseline_mfu"] == pytest.approx(0.1)
    assert point["speedup"] == pytest.approx(3.0)


def test_loader_rate_counts_what_the_loader_delivered_after_the_first_batch(tmp_path, monkeypatch):
    import benchmarks.loader_bench as loader_bench
    from pretrain.config import load_pretrain_config

    data = write_synthetic_data_dir(
        tmp_path / "data", seq_len=SEQ_LEN, vocab_size=VOCAB, train_shards=2, samples_per_shard=64
    )
    delivered, real_loader = [], loader_bench.train_loader

    def counting_loader(stream, workers, prefetch):
        for batch in real_loader(stream, workers, prefetch):
            delivered.append(batch["input_ids"].shape[0])
            yield batch

    clock = iter(range(1000))  # a fake clock: each reading is one second later
    monkeypatch.setattr(loader_bench, "train_loader", counting_loader)
    monkeypatch.setattr(loader_bench.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(loader_bench, "MIN_SECONDS", 0.0)
    cfg = load_pretrain_config(
        None,
        [f"data_dir={data}", "run_dir=.", f"seq_len={SEQ_LEN}", "micro_batch_size=3", "loader.workers=0"],
    )
    rate = loader_bench.loader_samples_per_s(cfg, world_size=1)
    timed = delivered[1:]  # the first batch (start-up) is not timed
    assert len(timed) == loader_bench.MIN_BATCHES and sum(timed) == 3 * loader_bench.MIN_BATCHES
    # clock readings (MIN_SECONDS 0): the start, the loop's test once MIN_BATCHES were drawn, the end
    assert rate == pytest.approx(sum(timed) / 2.0)


@pytest.fixture(scope="module")
def gpu_check_dry_run(tmp_path_factory):
    """``python -m benchmarks.gpu_check --dry-run``, once: its out dir and what it printed. Its sweep
    (tiny, seq 32, bf16, ZeRO-0, one rank, micro batch 4, the baseline beside it) is the sweep test's
    too: a sweep is seconds of launches, and this one goes through run_sweep as any other."""
    from benchmarks import gpu_check

    out = tmp_path_factory.mktemp("gpu-check")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gpu_check.main(["--dry-run", "--out", str(out)])
    return out, printed.getvalue()


@pytest.mark.slow
def test_sweep_on_tiny_model_writes_valid_results(gpu_check_dry_run):
    out, printed = gpu_check_dry_run
    (json_path,) = out.glob("*gpu-check-blockwise-ce.json")
    # one line per point, the loader's, the files'
    assert "micro batch    4 |" in printed and "loader alone:" in printed and f"wrote {json_path}" in printed
    assert json_path.with_suffix(".md").is_file() and json_path.with_suffix(".png").stat().st_size > 0
    result = json.loads(json_path.read_text())
    for key in (
        "device",
        "peak_flops",
        "model",
        "seq_len",
        "precision",
        "zero_stage",
        "ranks",
        "loader_samples_per_s",
    ):
        assert result[key] is not None, key
    assert (
        result["model"],
        result["seq_len"],
        result["precision"],
        result["zero_stage"],
        result["ranks"],
    ) == ("tiny", 32, "bf16", 0, 1)
    assert result["peak_flops"] == max(probe["flops_per_s"] for probe in result["gemm_probes"]) > 1e9
    assert len(result["gemm_probes"]) == 2 and result["loader_samples_per_s"] > 0  # probed before and after
    assert [point["micro_batch_size"] for point in result["points"]] == [4]
    for point in result["points"]:
        assert point["status"] == "ok" and point["baseline_status"] == "ok"
        assert 0 < point["tokens_per_s"] <= point["padded_tokens_per_s"]
        assert point["step_time_s"] > 0 and point["peak_memory_bytes"] > 0
        assert 0 < point["mfu"] <= point["hfu"] < 1
        assert (
            point["baseline_mfu"] < point["baseline_hfu"]
        )  # its full-vocabulary head runs on every position
        assert point["speedup"] == pytest.approx(point["tokens_per_s"] / point["baseline_tokens_per_s"])
        # the same batch and initial weights give the same loss: DeepSpeed's bf16 weights vs autocast
        # over fp32 weights differ in rounding only (another initialisation would be ~1e-2 away)
        assert point["initial_loss"] == pytest.approx(point["baseline_initial_loss"], rel=1e-3)
    # the loader's headroom is its rate over what each rank of the best point consumed
    (best,) = result["points"]
    assert result["trainer_samples_per_s_per_rank"] == pytest.approx(best["samples_per_s"] / result["ranks"])
    assert best["samples_per_s"] == pytest.approx(4 / best["step_time_s"])
    assert result["loader_headroom"] == pytest.approx(
        result["loader_samples_per_s"] / result["trainer_samples_per_s_per_rank"]
    )


def test_a_failed_point_is_recorded_and_ends_the_sweep(tmp_path):
    # A point timeout shorter than any launch: the first point fails, its process group is killed,
    # the sweep stops there and still writes its report.
    with pytest.raises(SystemExit, match="no point completed"):
        main(
            [
                "--model",
                "tiny",
                "--seq-len",
                str(SEQ_LEN),
                "--batch-sizes",
                "2,4",
                "--vocab-size",
                str(VOCAB),
                "--point-timeout-s",
                "0.5",
                "--out",
                str(tmp_path),
            ]
        )
    (json_path,) = tmp_path.glob("*.json")
    points = json.loads(json_path.read_text())["points"]
    assert [(point["micro_batch_size"], point["status"]) for point in points] == [(2, "timeout")]
    assert json_path.with_suffix(".md").is_file()


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_stage_on_a_cpu(gpu_check_dry_run):
    from pretrain.distributed import precision_problem

    out, printed = gpu_check_dry_run
    (report,) = out.glob("*-gpu-check-dry-run.json")
    rows = json.loads(report.read_text())["rows"]
    assert {row["check"] for row in rows} == {"environment", "tests", "pretrain", "sweep", "loader"}
    by_configuration = {row["configuration"]: row for row in rows}
    for name in ("tiny bf16 ZeRO-0: save, resume, export", "tiny bf16 ZeRO-2: save, resume, export"):
        assert by_configuration[name]["status"] == "ok", by_configuration[name]
        assert "bitwise equal" in by_configuration[name]["detail"]  # on a CPU, resume is exact
    # fp16 runs where DeepSpeed supports it on this CPU (AVX512-FP16/AMX) and is skipped, saying why, elsewhere.
    fp16 = by_configuration["tiny fp16 ZeRO-1: save, resume, export"]
    if precision_problem("fp16") is None:
        assert fp16["status"] == "ok" and "bitwise equal" in fp16["detail"], fp16
    else:
        assert fp16["status"] == "skipped" and "supports no fp16" in fp16["detail"], fp16
    (sweep,) = [row for row in rows if row["check"] == "sweep"]
    assert "blockwise CE" in sweep["configuration"] and sweep["status"] == "ok"
    assert "MFU" in sweep["detail"] and "baseline" in sweep["detail"]
    assert all(row["status"] in ("ok", "skipped") for row in rows), rows
    assert "| check | configuration | status | numbers |" in printed  # the one table
    assert len(list(out.glob("*gpu-check-blockwise-ce.json"))) == 1  # each sweep's own report
