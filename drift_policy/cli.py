"""argparse types shared by the command-line tools (one clear message for a count or budget out of range), and the
default number of worker processes."""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import yaml


def _whole_number_at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def available_cores() -> int:
    """CPU cores this process may run on (the default number of env or expert worker processes)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def positive_int(text: str) -> int:
    """An integer >= 1 (episodes, steps, processes)."""
    return _whole_number_at_least(1, text)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (videos to record, optional extra episodes)."""
    return _whole_number_at_least(0, text)


def positive_float(text: str) -> float:
    """A finite number > 0 (minutes, rates)."""
    return _finite_number(text, "> 0", lambda value: value > 0)


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a decay rate)."""
    return _finite_number(text, ">= 0", lambda value: value >= 0)


def _finite_number(text: str, bound: str, within: Callable[[float], bool]) -> float:
    """float(text), refused with one message when it is not a number, not finite or not `within` its bound."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text!r}") from None
    if not (within(value) and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
    return value


def setting(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value read as YAML (0.5 -> float, ddim -> str, [1, 2] -> list): a saved setting to override."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, e.g. sample_noise_scale=0.5, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"the value of {key.strip()} is not readable ({err}), got {value!r}") from None
