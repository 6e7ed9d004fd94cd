"""Comparison and reporting shared by the exercise checkers."""

from __future__ import annotations


def report(correct: bool, hint: str) -> bool:
    """Print a verdict (and the hint when wrong) and return ``correct``."""
    print("Correct!" if correct else f"Not quite. Hint: {hint}")
    return bool(correct)


def close_to(answer, expected: float, tolerance: float) -> bool:
    """Return whether ``answer`` is a number within ``tolerance`` of ``expected``."""
    try:
        return abs(float(answer) - expected) <= tolerance
    except (TypeError, ValueError):
        return False
