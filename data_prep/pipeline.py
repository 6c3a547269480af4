"""The prep driver: plan, clean, dedup, tokenizer, examples, shards, manifest, on 1..N processes.

Every rank runs this same sequence. Chunk ``i`` belongs to rank ``i % ranks``; each rank runs its
chunks on ``workers`` processes. What needs the whole corpus in canonical order (the plan, dedup
decisions, the tokenizer sample and training, the valid examples, the shard layout, the manifest)
happens on rank 0, which hands the outcome to all ranks. Bulk data moves through ``.work`` files.

Why the result does not depend on ``workers`` or ranks: chunks are fixed by the inputs and
``chunk_mb``; each chunk's output depends on its content and seeds derived from (seed, chunk);
sequential decisions walk the chunks in order; train shards are consecutive windows of
``samples_per_shard`` over the examples in chunk order, and the remainder dropped is the tail of
that order.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from data_prep.atomic import open_atomic, write_json_atomic
from data_prep.config import PrepConfig
from data_prep.dedup import DuplicateFilter
from data_prep.manifest import MANIFEST_NAME, SPLITS, TOKENIZER_DIR, build_manifest
from data_prep.mpi import Cluster, connect, on_root
from data_prep.planning import check_missing, input_fingerprint, plan_chunks
from data_prep.progress import Progress, bars_wanted
from data_prep.report import REPAIRS, build_report, input_rows, summary_table
from data_prep.shards import ShardEntry, shard_name
from data_prep.sources import Chunk, InputError, expand_inputs
from data_prep.stages import (
    KEPT,
    CleanSummary,
    Context,
    ExampleSummary,
    ShardTask,
    build_valid_examples,
    clean_chunk,
    example_chunk,
    sample_chunk,
    write_shard_task,
)
from data_prep.timing import StageClock, timed_call
from data_prep.tokenizer import (
    TokenizerError,
    TokenizerInfo,
    reuse_tokenizer,
    save_trained_tokenizer,
    train_sentencepiece,
)
from data_prep.typed_config import ConfigError
from data_prep.workdir import WORK_DIR, WorkDir, load_arrays, load_json, save_json, work_key

REJECTS_NAME = "rejects.jsonl"
DEDUP_INDEX = "dedup.sqlite"  # in .work, while dedup decisions are made
REPORT_NAME = "report.json"
OUTPUT_NAMES = (MANIFEST_NAME, REPORT_NAME, REJECTS_NAME, TOKENIZER_DIR, "shards", WORK_DIR)


class PrepError(ValueError):
    """A user-caused problem found while preparing (bad out_dir, too little data); one line."""


USER_ERRORS = (ConfigError, InputError, TokenizerError, PrepError)


def _ignore_interrupts() -> None:
    """Workers leave Ctrl-C to the driver, which stops them: one message instead of N tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pool, start-up included)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _cpu_rates(bytes_in: int, cpu_seconds: float) -> dict[str, float]:
    """MB per CPU second: the per-process rate with other people's jobs on the machine taken out."""
    rate = round(bytes_in / 1e6 / cpu_seconds, 3) if cpu_seconds else 0.0
    return {"cpu_seconds": round(cpu_seconds, 3), "mb_per_cpu_second": rate}


def _prepare_out_dir(config: PrepConfig, work: WorkDir) -> bool:
    """Make ``out_dir`` ready; True when resuming. The old manifest goes first, so that whatever
    happens next, nothing downstream mistakes this directory for a complete one."""
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise PrepError(f"out_dir {str(out)!r} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not any((out / name).exists() for name in OUTPUT_NAMES):
        raise PrepError(
            f"out_dir {str(out)!r} is not empty and not a data_prep output; choose a new or empty directory"
        )
    if config.tokenizer.path is not None:
        source = Path(config.tokenizer.path).resolve()
        if source == out.resolve() or out.resolve() in source.parents:
            raise PrepError(
                f"tokenizer.path {config.tokenizer.path!r} is inside out_dir, which is rewritten; "
                "copy it elsewhere first"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        resumed = work.prepare()
        stale = ["shards"] if resumed else ["shards", TOKENIZER_DIR, REPORT_NAME, REJECTS_NAME]
        if resumed and not work.tokenizer_info.is_file():
            stale.append(TOKENIZER_DIR)
        for name in stale:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        for split in ("train", "valid"):
            (out / "shards" / split).mkdir(parents=True, exist_ok=True)
    except OSError as err:  # permission denied, read-only or full filesystem...
        raise PrepError(
            f"out_dir {str(out)!r} is not writable ({err.strerror}); choose another out_dir"
        ) from None
    return resumed


class Runner:
    """One prep run on this process (one rank); ``run`` returns the report (on every rank)."""

    def __init__(self, config: PrepConfig, cluster: Cluster):
        self.config = config
        self.cluster = cluster
        self.is_root = cluster.rank == 0
        self.clock = StageClock()
        self.show = bars_wanted(config.progress, cluster.rank)
        self.pool = None

    # -- parallel helpers -------------------------------------------------------------------

    def _map(self, fn: Callable, tasks: list, ordered: bool = False) -> Iterator:
        """``fn`` over ``tasks`` on the pool (unordered unless asked), or here when ``workers=1``."""
        if self.pool is None:
            yield from map(fn, tasks)  # the CPU time is this process's: the stage clock sees it
            return
        calls = [(fn, task) for task in tasks]
        if ordered:
            results = self.pool.imap(timed_call, calls, chunksize=8)
        else:
            results = self.pool.imap_unordered(timed_call, calls)
        for result in results:
            self.clock.add_worker_cpu(result.cpu_seconds)
            yield result.value

    def _run_chunks(self, fn: Callable, context: Context, chunks: list[Chunk], label: str, item: str) -> list:
        """``fn`` over this rank's chunks with a progress bar counting ``item``; all ranks' results on rank 0."""
        progress = Progress(label, sum(c.nbytes for c in chunks), self.show, item=item)
        results = []
        for result in self._map(fn, [(context, chunk) for chunk in chunks]):
            results.append(result)
            progress.update(result.nbytes, getattr(result, item))
        progress.close()
        gathered = self.cluster.gather(results)
        return sorted((r for part in gathered for r in part), key=lambda r: r.chunk) if self.is_root else []

    def _root(self, work: Callable[[], Any]) -> Any:
        return on_root(self.cluster, work, USER_ERRORS)

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        config = self.config
        out = Path(config.out_dir)

        def setup() -> tuple[list, str]:
            expanded = expand_inputs(config.inputs)
            check_missing(expanded, config)
            key = work_key(config, input_fingerprint(expanded))
            if _prepare_out_dir(config, WorkDir(out, key)):
                print(f"resuming the interrupted run in {out / WORK_DIR / key}", file=sys.stderr, flush=True)
            return expanded, key

        with self.clock.stage("plan"):
            expanded, key = self._root(setup)
            work = WorkDir(out, key)
            context = Context(config, str(out), key)
            if config.workers > 1:
                # spawn, not fork: a forked MPI process or a forked tokenizers thread pool misbehaves
                self.pool = multiprocessing.get_context("spawn").Pool(
                    config.workers, initializer=_ignore_interrupts
                )
            ordered_map = lambda fn, items: self._map(fn, items, ordered=True)  # noqa: E731
            chunks = self._root(lambda: plan_chunks(config, expanded, work, ordered_map, self.show))
        mine = [chunk for chunk in chunks if chunk.index % self.cluster.size == self.cluster.rank]

        with self.clock.stage("clean"):
            cleaned: list[CleanSummary] = self._run_chunks(clean_chunk, context, mine, "clean", "docs_in")
        with self.clock.stage("dedup"):
            decided = self._root(lambda: self._decide(work, chunks, cleaned))
        with self.clock.stage("tokenizer"):
            info, training_sentences = self._tokenizer(work, context, mine, decided["kept_sentences"])
        dtype = "uint16" if info.vocab_size <= 65536 else "int32"
        context = replace(context, encoder=info.encoder, special_ids=info.special_ids, token_dtype=dtype)
        with self.clock.stage("examples"):
            built: list[ExampleSummary] = self._run_chunks(
                example_chunk, context, mine, "examples", "train_examples"
            )
            layout = self._root(lambda: self._layout(work, context, chunks, built))
        with self.clock.stage("shards"):
            tasks = layout["tasks"]
            rank, ranks = self.cluster.rank, self.cluster.size
            mine_tasks = tasks[
                len(tasks) * rank // ranks : len(tasks) * (rank + 1) // ranks
            ]  # contiguous: chunk reuse
            progress = Progress("shards", None, self.show, item="shards")
            entries = []
            for entry in self._map(write_shard_task, [(context, task) for task in mine_tasks]):
                entries.append(entry)
                progress.update(entry.bytes, 1)
            progress.close()
            gathered = self.cluster.gather(entries)
        if self.pool is not None:
            self.pool.close()
            self.pool.join()  # before measuring: only joined children count in RUSAGE_CHILDREN
            self.pool = None
        cpu = self.cluster.gather((_cpu_seconds(), dict(self.clock.cpu)))

        def finish() -> dict[str, Any]:
            all_entries = [entry for part in gathered for entry in part]
            stage_cpu = Counter()
            for _, per_stage in cpu:
                stage_cpu.update(per_stage)
            report = self._report(
                expanded,
                chunks,
                cleaned,
                decided,
                info,
                training_sentences,
                built,
                layout,
                all_entries,
                start,
                stage_cpu,
            )
            report["throughput"].update(_cpu_rates(report["bytes_in"], sum(total for total, _ in cpu)))
            self._write_outputs(work, chunks, info, dtype, all_entries, report)
            return report

        report = self._root(finish)
        if self.is_root:
            print(summary_table(report))
        return report

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    # -- rank-0 steps -------------------------------------------------------------------------

    def _decide(self, work: WorkDir, chunks: list[Chunk], cleaned: list[CleanSummary]) -> dict[str, Any]:
        """Exact and near-duplicate decisions in canonical order, then the valid split by document.
        One chunk at a time, so memory holds one chunk's metadata and the bounded dedup index."""
        config = self.config
        near = config.clean.near_dup if config.clean.near_dup.enabled else None
        duplicates = DuplicateFilter(
            config.clean.dedup_exact,
            near,
            work.root / DEDUP_INDEX,
            config.clean.dedup_memory_mb,
        )
        counts: Counter = Counter()
        by_input: dict[int, Counter] = {}
        kept_sentences = 0
        first_kept = None  # (uniform, chunk position, document) of the kept document nearest the cut
        for c, chunk in enumerate(chunks):
            meta = load_json(work.clean_meta(chunk.index))
            signatures = load_arrays(work.clean_signatures(chunk.index))["minhash"] if near else None
            reasons = duplicates.check_chunk(meta["fingerprints"], signatures)
            split = ["valid" if uniform < config.valid_fraction else "train" for uniform in meta["uniforms"]]
            decisions = [reason or kept for reason, kept in zip(reasons, split)]
            for j, (decision, uniform, n) in enumerate(
                zip(decisions, meta["uniforms"], meta["sentence_counts"])
            ):
                if decision in KEPT:
                    kept_sentences += n
                    first_kept = min(first_kept or (uniform, c, j), (uniform, c, j))
            counts.update(decisions)
            for position, decision in zip(meta["inputs"], decisions):
                by_input.setdefault(position, Counter())[decision] += 1
            save_json(work.decisions(chunk.index), decisions)
        duplicates.close()
        (work.root / DEDUP_INDEX).unlink(missing_ok=True)
        if config.valid_fraction > 0 and counts["train"] + counts["valid"] > 1 and not counts["valid"]:
            _, c, j = first_kept  # a small corpus still gets a valid split: the document nearest the cut
            decisions = load_json(work.decisions(chunks[c].index))
            decisions[j] = "valid"
            save_json(work.decisions(chunks[c].index), decisions)
            counts.update({"train": -1, "valid": 1})
            by_input[load_json(work.clean_meta(chunks[c].index))["inputs"][j]].update(
                {"train": -1, "valid": 1}
            )
        if counts["train"] == 0:
            reasons = Counter(d for d in counts.elements() if d not in KEPT)
            for summary in cleaned:
                reasons.update({r: n for r, n in summary.counts.items() if r not in REPAIRS})
            top = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common(4)) or "none dropped"
            raise PrepError(
                f"no document left to train on ({sum(c.docs_in for c in cleaned)} read; dropped: {top}; "
                f"valid: {counts['valid']}): add text, or loosen clean.* / lower valid_fraction"
            )
        return {
            "counts": {d: n for d, n in counts.items() if n},
            "by_input": {position: dict(tally) for position, tally in by_input.items()},
            "kept_sentences": kept_sentences,
        }

    def _tokenizer(
        self, work: WorkDir, context: Context, mine: list[Chunk], kept_sentences: int
    ) -> tuple[TokenizerInfo, int]:
        config = self.config
        directory = Path(config.out_dir) / TOKENIZER_DIR
        if config.tokenizer.path is not None:
            return self._root(lambda: reuse_tokenizer(Path(config.tokenizer.path), directory)), 0
        cached = self._root(lambda: load_json(work.tokenizer_info) if work.tokenizer_info.is_file() else None)
        if cached is not None:
            return TokenizerInfo(**cached["info"]), cached["sentences"]
        fraction = min(1.0, config.tokenizer.sample_sentences / max(kept_sentences, 1))
        sample_context = replace(context, sample_fraction=fraction)
        picked = list(self._map(sample_chunk, [(sample_context, chunk) for chunk in mine]))
        gathered = self.cluster.gather(picked)

        def train() -> tuple[TokenizerInfo, int]:
            ordered = sorted((item for part in gathered for item in part), key=lambda item: item[0])
            sentences = [s for _, chunk_sentences in ordered for s in chunk_sentences]
            if self.show:
                print(
                    f"training a {config.tokenizer.model_type} tokenizer on {len(sentences):,} sentences",
                    flush=True,
                )
            model = train_sentencepiece(sentences, config.tokenizer, config.seed)
            info = save_trained_tokenizer(model, directory, config.seq_len)
            save_json(work.tokenizer_info, {"info": asdict(info), "sentences": len(sentences)})
            return info, len(sentences)

        return self._root(train)

    def _layout(
        self, work: WorkDir, context: Context, chunks: list[Chunk], built: list[ExampleSummary]
    ) -> dict[str, Any]:
        """Valid examples, then which examples go into which shard (consecutive windows in chunk order)."""
        config = self.config
        valid = build_valid_examples(context, [chunk.index for chunk in chunks])
        per_shard = config.samples_per_shard
        total = sum(summary.train_examples for summary in built)
        train_shards = total // per_shard
        if train_shards == 0:
            suggestion = max(1, total // 4)
            raise PrepError(
                f"the corpus gives {total} train examples, fewer than samples_per_shard={per_shard}; "
                f"set samples_per_shard={suggestion} (or lower) or add text"
            )
        sources = [(str(work.train_examples(s.chunk)), s.train_examples) for s in built]
        tasks = self._windows("train", sources, train_shards * per_shard, per_shard)
        valid_count = len(valid.sequences)
        tasks += self._windows("valid", [(str(work.valid_examples), valid_count)], valid_count, per_shard)
        return {
            "tasks": tasks,
            "train_built": total,
            "dropped_remainder": total - train_shards * per_shard,
            "valid_nsp_random": sum(valid.nsp_labels),
            "tokens_truncated": valid.tokens_truncated,
            "tokens_unpaired": valid.tokens_unpaired,
        }

    def _windows(
        self, split: str, sources: list[tuple[str, int]], keep: int, per_shard: int
    ) -> list[ShardTask]:
        """Cut the first ``keep`` examples of ``sources`` (in order) into shards of ``per_shard``."""
        tasks, current, filled, taken = [], [], 0, 0
        for path, count in sources:
            start = 0
            while start < count and taken < keep:
                n = min(count - start, per_shard - filled, keep - taken)
                current.append((path, start, start + n))
                start, filled, taken = start + n, filled + n, taken + n
                if filled == per_shard or taken == keep:
                    index = len(tasks)
                    relative = f"shards/{split}/{shard_name(self.config.shard_prefix, index)}"
                    tasks.append(ShardTask(split, index, relative, tuple(current)))
                    current, filled = [], 0
        return tasks

    def _report(
        self,
        expanded,
        chunks,
        cleaned,
        decided,
        info,
        training_sentences,
        built,
        layout,
        entries,
        start,
        stage_cpu,
    ) -> dict[str, Any]:
        config = self.config
        counts = Counter()
        for summary in cleaned:
            counts.update(summary.counts)
        for decision, n in decided["counts"].items():
            if decision not in KEPT:
                counts[decision] += n
        split_entries = {
            s: [e for e in entries if e.path.startswith(f"shards/{s}/")] for s in ("train", "valid")
        }
        train_examples = sum(e.samples for e in split_entries["train"])
        valid_examples = sum(e.samples for e in split_entries["valid"])
        nsp_random_train = sum(s.nsp_random for s in built)
        bytes_by_input, read_by_input, tokens_by_input = Counter(), {}, Counter()
        for piece in (piece for chunk in chunks for piece in chunk.pieces):
            bytes_by_input[piece.input] += piece.nbytes
        for summary in cleaned:
            for position, tally in summary.by_input.items():
                read_by_input.setdefault(position, Counter()).update(tally)
        for summary in built:
            tokens_by_input.update({int(position): n for position, n in summary.tokens_by_input.items()})
        return build_report(
            out_dir=config.out_dir,
            docs_in=sum(s.docs_in for s in cleaned),
            bytes_in=sum(s.nbytes for s in cleaned),
            counts=counts,
            kept={"train": decided["counts"].get("train", 0), "valid": decided["counts"].get("valid", 0)},
            inputs=input_rows(
                [item.entry for item in expanded],
                bytes_by_input,
                read_by_input,
                decided["by_input"],
                tokens_by_input,
            ),
            tokenizer={
                "trained": config.tokenizer.path is None,
                "vocab_size": info.vocab_size,
                "special_ids": info.special_ids,
                "training_sentences": training_sentences,
            },
            examples={
                "train": train_examples,
                "valid": valid_examples,
                "train_built": layout["train_built"],
                "dropped_remainder": layout["dropped_remainder"],
                "nsp_random_fraction": {
                    "train": round(nsp_random_train / max(layout["train_built"], 1), 4),
                    "valid": round(layout["valid_nsp_random"] / max(valid_examples, 1), 4),
                }
                if config.objective == "mlm+nsp"
                else None,
            },
            tokens={
                "train": sum(e.tokens for e in split_entries["train"]),
                "valid": sum(e.tokens for e in split_entries["valid"]),
                "truncated": sum(s.tokens_truncated for s in built) + layout["tokens_truncated"],
                "unpaired": sum(s.tokens_unpaired for s in built) + layout["tokens_unpaired"],
            },
            shards={
                "train": len(split_entries["train"]),
                "valid": len(split_entries["valid"]),
                "samples_per_shard": config.samples_per_shard,
            },
            chunks={"total": len(chunks), "resumed": sum(s.resumed for s in cleaned)},
            stage_seconds=dict(self.clock.seconds),
            stage_cpu=dict(stage_cpu),
            total_seconds=time.perf_counter() - start,
            ranks=self.cluster.size,
            workers=config.workers,
        )

    def _write_outputs(self, work, chunks, info, dtype, entries, report) -> None:
        """rejects.jsonl and report.json, then manifest.json last and atomically, then drop .work."""
        out = Path(self.config.out_dir)
        with open_atomic(out / REJECTS_NAME, "w") as log:
            for chunk in chunks:
                meta = load_json(work.clean_meta(chunk.index))
                for source, line, reason, detail in meta["rejects"]:
                    log.write(
                        json.dumps({"source": source, "line": line, "reason": reason, "detail": detail})
                        + "\n"
                    )
                for source_id, decision in zip(meta["sources"], load_json(work.decisions(chunk.index))):
                    if decision not in KEPT:
                        row = {"source": source_id, "line": None, "reason": decision, "detail": ""}
                        log.write(json.dumps(row) + "\n")
        write_json_atomic(out / REPORT_NAME, report)
        write_json_atomic(out / MANIFEST_NAME, self._manifest(info, dtype, entries))
        work.remove()

    def _manifest(self, info: TokenizerInfo, dtype: str, entries: list[ShardEntry]) -> dict[str, Any]:
        config = self.config
        shards = {
            split: [asdict(e) for e in entries if e.path.startswith(f"shards/{split}/")] for split in SPLITS
        }
        return build_manifest(
            config.out_dir,
            objective=config.objective,
            seq_len=config.seq_len,
            token_dtype=dtype,
            vocab_size=info.vocab_size,
            special_ids=info.special_ids,
            shards=shards,
            samples_per_shard=config.samples_per_shard,
            prep_config=config.model_dump(mode="json"),
        )


def prepare(config: PrepConfig, cluster: Cluster | None = None) -> dict[str, Any]:
    """Run the prep stage (on this rank); returns the report."""
    runner = Runner(config, cluster or connect())
    try:
        return runner.run()
    finally:
        runner.close()
