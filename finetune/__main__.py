"""``python -m finetune --config configs/finetune/NAME.yaml [key=value ...]``

Also under ``deepspeed [--num_gpus N] --module finetune ...`` and ``torchrun -m``.
A config problem exits 2, a problem with an input file or the base checkpoint exits 1; both print
one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import os
import sys

from pretrain.distributed import prepare_entry, shutdown

prepare_entry()  # before transformers is imported

from data_prep.typed_config import ConfigError, exit_on_config_error, load_config  # noqa: E402
from finetune import InputError  # noqa: E402
from finetune.config import (  # noqa: E402
    AugmentConfig,
    FinetuneConfig,
    LoraConfig,
    SplitConfig,
    TokenFilesConfig,
)


def _is_main_process() -> bool:
    # Every rank meets the same bad input; one line is enough (the launchers set RANK).
    return os.environ.get("RANK", "0") == "0"


def _config_keys() -> str:
    """The keys with their documentation, for --help."""
    lines = ["config keys (configs/finetune/*.yaml, or key=value):"]
    sections = (
        ("", FinetuneConfig),
        ("split.", SplitConfig),
        ("tokens.", TokenFilesConfig),
        ("lora.", LoraConfig),
        ("augment.", AugmentConfig),
    )
    for prefix, section in sections:
        for name, field in section.model_fields.items():
            if field.description:
                lines.append(f"  {prefix}{name}: {field.description}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m finetune",
        epilog=_config_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a pretrained BERT: text (pair) classification, regression or token tagging.",
    )
    parser.add_argument("--config", help="YAML config (see configs/finetune/)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override a config key (dotted for nesting)"
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(FinetuneConfig, args.config, args.overrides)
        from finetune.train import run

        run(config)
    except ConfigError as err:
        if not _is_main_process():
            raise SystemExit(2) from None
        exit_on_config_error(err)
    except InputError as err:
        if _is_main_process():
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    shutdown()


if __name__ == "__main__":
    main()
