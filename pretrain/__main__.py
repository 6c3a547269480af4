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
    # DeepSpeed's own flags (deepspeed.add_config_arguments), so `--deepspeed --deepspeed_config
    # ds.json` works as in any DeepSpeed script; the JSON counts as given on the command line.
    parser.add_argument("--deepspeed", action="store_true", help="accepted for DeepSpeed scripts; always on")
    parser.add_argument(
        "--deepspeed_config",
        metavar="FILE",
        help="a DeepSpeed JSON: precedence key=value > this JSON > --config YAML > defaults (README)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override config keys, e.g. optimizer.lr=3e-4"
    )
    args = parser.parse_intermixed_args(argv)  # flags anywhere among the key=value overrides
    if args.deepspeed_config:
        args.overrides.append(f"deepspeed_config={args.deepspeed_config}")

    from data_prep.typed_config import EXIT_CONFIG_ERROR, ConfigError, exit_on_config_error
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
    except ConfigError as err:  # found once the world size is known: the DeepSpeed JSON
        _fail(str(err), EXIT_CONFIG_ERROR)
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


def _fail(message: str, status: int = 1) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    # One write(2) call: ranks share the launcher's stderr, and a pipe write under 4 KiB is atomic,
    # so lines of different ranks never interleave.
    sys.stdout.flush()
    os.write(2, f"{prefix}error: {message}\n".encode())
    os._exit(status)  # do not wait in process-group teardown for ranks that are gone


if __name__ == "__main__":
    main()
