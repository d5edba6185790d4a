"""Shared by this folder's timing scripts: the repository on the path, and a median timer."""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def median_ms(fn, calls=10, rounds=7):
    """Median over `rounds` of the mean milliseconds of `calls` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)
