"""Stage 1: raw text to the prepared data dir of contract 1 in docs/contracts.md.

``python -m data_prep --config configs/prep/NAME.yaml [key=value ...]`` (also under ``mpirun``),
``python -m data_prep verify DIR``, ``python -m data_prep inspect DIR``. Other stages import only
``data_prep.manifest`` (the format) and ``data_prep.typed_config`` (the config mechanism); the
demo may use ``data_prep.pydocs.iter_pydocs`` for its labelled task.

Modules, in pipeline order: config, sources and pydocs (inputs), planning (chunks), cleaning,
sentences, dedup, tokenizer, examples, shards; stages (per-chunk work in worker processes),
pipeline (the driver), mpi, workdir (resume), timing, progress, report; verify, inspection.
"""
