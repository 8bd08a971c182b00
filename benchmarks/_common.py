"""Helpers the benchmark scripts share."""

from __future__ import annotations

import os


def load_note(before: float) -> str | None:
    """A warning line when other processes were using the CPU around the run, else None."""
    if not hasattr(os, "getloadavg"):
        return None
    after = os.getloadavg()[0]
    if before < 0.5:  # the load after counts this run's own threads: only `before` is others'
        return None
    return (f"note: 1-min load average {before:.2f} before the run ({after:.2f} after, this run "
            f"included) on {os.cpu_count()} cores: other processes shared the CPU, so these "
            "figures are noisy (rerun, or compare at --threads 1 where CPU time is the steadier "
            "figure)")


def print_verdict(passed: bool, text: str, load_before: float) -> int:
    """The closing lines every benchmark prints: a load note if the CPU was shared, then
    ``verdict: PASS|MISS: text``; returns the script's exit status (1: MISS)."""
    if note := load_note(load_before):
        print(note)
    print(f"verdict: {'PASS' if passed else 'MISS'}: {text}")
    return 0 if passed else 1
