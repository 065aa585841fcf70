"""Shared test helper: oracle calls by kind made by each of several algorithm steps."""

from __future__ import annotations


def calls_per_step(alg, problem, state, steps: int, batch_size: int | None = None) -> list[dict]:
    """``counter`` differences across each of ``steps`` calls of ``alg.step``; with
    ``batch_size``, also checks that every call counted that many samples."""
    diffs = []
    for _ in range(steps):
        before = problem.oracles.counter.columns()
        alg.step(problem, state)
        after = problem.oracles.counter.columns()
        d = {k[len("calls_") :]: after[k] - before[k] for k in after if k.startswith("calls_")}
        assert after["oracle_calls"] - before["oracle_calls"] == sum(d.values())
        if batch_size is not None:
            assert after["samples"] - before["samples"] == batch_size * sum(d.values())
        diffs.append(d)
    return diffs
