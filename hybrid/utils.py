"""Process-level basics shared by every recipe: rank-aware logging and user-facing errors. (Seeding is
`accelerate.utils.set_seed`.)"""

from __future__ import annotations

import logging
import os
import sys

import torch


class UserError(Exception):
    """A mistake in what the user asked for (a path, a config value, a checkpoint). Recipes print the message and exit
    with status 2, without a traceback; programming errors keep their traceback."""


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Processes of this launch, known before any process group or Accelerator exists (checks made up front)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


class _MainProcessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "all_ranks", False) or rank() == 0


def get_logger(name: str = "hybrid") -> logging.Logger:
    """A logger that prints once per process group (rank 0) unless a call passes `extra={"all_ranks": True}`."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
        handler.addFilter(_MainProcessFilter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def run_main(main, argv: list[str] | None = None) -> None:
    """Run a recipe's `main(argv)`: user errors become one line on stderr and exit status 2; `--help` on a
    config-driven recipe prints its module docstring and the shared override syntax."""
    from hybrid.config import CLI_USAGE, ConfigError, HelpRequested

    try:
        main(sys.argv[1:] if argv is None else argv)
    except HelpRequested:
        print(f"{(main.__globals__.get('__doc__') or '').strip()}\n\n{CLI_USAGE}")
    except (UserError, ConfigError, FileNotFoundError, FileExistsError) as err:
        # One line, also for messages that quote a multi-line source (YAML errors).
        print("error: " + " ".join(line.strip() for line in str(err).splitlines() if line.strip()), file=sys.stderr)
        sys.exit(2)
