"""``python -m data_prep``: prepare data, or check and look at a prepared data dir.

    python -m data_prep --config configs/prep/NAME.yaml [key=value ...]
    mpirun -n N python -m data_prep --config configs/prep/NAME.yaml [key=value ...]
    python -m data_prep verify DATA_DIR
    python -m data_prep inspect DATA_DIR [--n 5]

A user-caused problem (config, paths, tokenizer dir, out_dir, too little data) is one line
``error: ...`` and exit status 2 for the config, 1 otherwise; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from data_prep import inspection, verify
from data_prep.config import load_prep_config
from data_prep.mpi import connect
from data_prep.pipeline import USER_ERRORS, prepare
from data_prep.typed_config import ConfigError, exit_on_config_error


def prep_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Raw text to BERT pretraining shards (WebDataset).",
        epilog="Also: python -m data_prep verify DATA_DIR | inspect DATA_DIR [--n 5]",
    )
    parser.add_argument("--config", help="a YAML file, e.g. configs/prep/demo.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, dotted for nesting"
    )
    args = parser.parse_args(argv)
    cluster = connect()
    speak = cluster.rank == 0
    try:
        config = load_prep_config(args.config, args.overrides)
        prepare(config, cluster)
    except ConfigError as err:
        if not speak:
            raise SystemExit(2) from None
        exit_on_config_error(err)
    except USER_ERRORS as err:
        if speak:
            print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if speak:
            print(
                "interrupted: no manifest.json was written; run the same command again to resume",
                file=sys.stderr,
            )
        return 130
    except OSError as err:  # disk full, a file removed under us...: the system's message, no traceback
        print(f"error: {err}; no manifest.json was written, fix it and re-run to resume", file=sys.stderr)
        if cluster.size > 1:
            cluster.abort(1)  # the other ranks may be waiting in a collective
        return 1
    except Exception:
        if cluster.size == 1:
            raise
        traceback.print_exc()
        cluster.abort(1)  # the other ranks may be waiting in a collective
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify":
        return verify.main(argv[1:])
    if argv and argv[0] == "inspect":
        return inspection.main(argv[1:])
    return prep_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
