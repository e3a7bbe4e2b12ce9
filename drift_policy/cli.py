"""argparse types shared by the command-line tools: one clear message for a count or budget out of range."""
from __future__ import annotations

import argparse


def _whole_number_at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (episodes, steps, processes)."""
    return _whole_number_at_least(1, text)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (videos to record, optional extra episodes)."""
    return _whole_number_at_least(0, text)


def positive_float(text: str) -> float:
    """A finite number > 0 (minutes, rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value
