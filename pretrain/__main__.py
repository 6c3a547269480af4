"""``python -m pretrain --config configs/pretrain/NAME.yaml [key=value ...]`` (also under deepspeed,
torchrun and mpirun). User-caused problems end in one ``error:`` line and a non-zero exit."""

from __future__ import annotations

import argparse
import os
import sys

from pretrain.distributed import prepare_entry, shutdown

prepare_entry()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description="DeepSpeed BERT pretraining")
    parser.add_argument("--config", help="run config YAML (see configs/pretrain/)")
    parser.add_argument(
        "--local_rank", type=int, help=argparse.SUPPRESS
    )  # passed by older deepspeed launchers
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override config keys, e.g. optimizer.lr=3e-4"
    )
    args = parser.parse_args(argv)

    from data_prep.typed_config import ConfigError, exit_on_config_error
    from pretrain.config import load_pretrain_config

    try:
        cfg = load_pretrain_config(args.config, args.overrides)
    except ConfigError as err:
        exit_on_config_error(err)

    from data_prep.manifest import ManifestError, ShardError
    from data_prep.storage import FetchError
    from pretrain.checkpoint import CheckpointError
    from pretrain.data import DataError
    from pretrain.train import NonFiniteLossError, SetupError, train

    try:
        train(cfg)
    except (
        ManifestError,
        DataError,
        ShardError,
        FetchError,
        CheckpointError,
        NonFiniteLossError,
        SetupError,
        FileNotFoundError,
    ) as err:
        _fail(str(err))
    except RuntimeError as err:
        if _is_lost_rank(err):
            _fail(
                f"lost contact with another rank ({type(err).__name__}): a rank died or hung; "
                f"relaunch the same command to resume from the last complete checkpoint"
            )
        raise
    shutdown()


def _is_lost_rank(err: BaseException) -> bool:
    import torch.distributed as dist

    text = str(err).lower()
    return isinstance(err, getattr(dist, "DistBackendError", ())) or any(
        word in text
        for word in ("timed out", "timeout", "connection reset", "connection closed", "broken pipe")
    )


def _fail(message: str) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    # One write(2) call: ranks share the launcher's stderr, and a pipe write under 4 KiB is atomic,
    # so lines of different ranks never interleave.
    sys.stdout.flush()
    os.write(2, f"{prefix}error: {message}\n".encode())
    os._exit(1)  # do not wait in process-group teardown for ranks that are gone


if __name__ == "__main__":
    main()
