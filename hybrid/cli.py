"""Command-line pieces the recipes share (the library's modules take plain arguments, never parsed flags)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid.utils import UserError


def model_data_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every research recipe shares: which model (--checkpoint), which data (--data, --split)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="pure run / checkpoint folder, or hybrid model folder"
    )
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--split", default="test")
    return parser


def check_model_and_data(args: argparse.Namespace) -> None:
    """The paths `model_data_parser` read exist, before any model is loaded."""
    if not args.checkpoint.exists():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist")
    if not args.data.is_dir():
        raise UserError(f"--data {args.data} is not a folder")


__all__ = ["check_model_and_data", "model_data_parser"]
