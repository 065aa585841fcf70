"""A figure's claims, checked against its summary table (issue #9 item 5).

A registry entry states each claim of the paper as a checkable statement over
``results/<NAME>_summary.csv`` (one row per panel and curve)::

    claims:
      - text: "UniBiO ends below TTSA at p = 8"
        panel: "p = 8"                         # optional: the panel value() reads by default
                                               # (a list: evaluated on each, holds if all hold)
        check: "value('UniBiO', 'true_hypergrad_norm_mean_last100')
                < value('TTSA', 'true_hypergrad_norm_mean_last100')"
      - text: "each curve ends below where it starts, on every panel"
        per_panel: true                        # evaluated on each panel; holds if all hold
        check: "value('p = 2', 'true_hypergrad_norm_final') < 1"

``check`` is a Python expression restricted to literals, comparisons, arithmetic, ``and``/``or``/
``not`` and the functions below; every value it reads is recorded beside the verdict, so a
reader sees the numbers, not just "reproduced".
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

from bilevel.app.config import ConfigError

REPRODUCED, NOT_REPRODUCED, NOT_EVALUABLE = "reproduced", "not reproduced", "not evaluable"

_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.Compare,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Eq,
    ast.NotEq,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.keyword,
)


def _monotone(compare: Callable[[float, float], bool]) -> Callable[..., bool]:
    def check(*values: float) -> bool:
        seq = values[0] if len(values) == 1 and isinstance(values[0], list | tuple) else values
        return all(compare(a, b) for a, b in zip(seq, seq[1:]))

    return check


FUNCTIONS = ("value", "abs", "min", "max", "log10", "increasing", "decreasing")


def _reader(summary, default_panel: str | None, read: list[str]) -> Callable[..., float]:
    """``value(curve, column, panel=default_panel)``: one cell of the summary, logged in
    ``read``."""

    def value(curve: str, column: str, panel: str | None = default_panel) -> float:
        if column not in summary.columns:
            raise LookupError(f"no column {column!r} in the summary")
        rows = summary[summary["curve"] == curve]
        if panel is not None:
            rows = rows[rows["panel"] == panel]
        if len(rows) != 1:
            at = f" on panel {panel!r}" if panel is not None else ""
            raise LookupError(f"{len(rows)} summary rows for curve {curve!r}{at}")
        v = float(rows[column].iloc[0])
        read.append(f"{curve}{' @ ' + panel if panel else ''}: {column} = {v:.4g}")
        return v

    return value


def _parse(check: str, where: str) -> ast.Expression:
    try:
        tree = ast.parse(check.strip(), mode="eval")
    except SyntaxError as err:
        raise ConfigError(f"{where}: check is not an expression: {err.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ConfigError(f"{where}: check may not use {type(node).__name__}")
        if isinstance(node, ast.Name) and node.id not in FUNCTIONS:
            raise ConfigError(
                f"{where}: check may not use {node.id!r}; functions: {', '.join(FUNCTIONS)}"
            )
    return tree


def evaluate_claim(claim: dict[str, Any], summary, where: str = "claim") -> list[dict[str, Any]]:
    """Evaluate one claim on a summary table (pandas, columns panel, curve, metrics); one
    record per evaluated panel: the verdict and every value the check read."""
    for key in ("text", "check"):
        if key not in claim:
            raise ConfigError(f"{where}: missing key '{key}'")
    unknown = set(claim) - {"text", "check", "panel", "per_panel"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    tree = _parse(str(claim["check"]), where)
    panels = list(dict.fromkeys(summary["panel"]))
    panel_spec = claim.get("panel")
    if claim.get("per_panel"):
        targets = panels
    elif isinstance(panel_spec, list):
        targets = panel_spec
    else:
        targets = [panel_spec]
    records = []
    for panel in targets:
        read: list[str] = []
        value = _reader(summary, panel, read)
        names = {
            "value": value,
            "abs": abs,
            "min": min,
            "max": max,
            "log10": math.log10,
            "increasing": _monotone(lambda a, b: a < b),
            "decreasing": _monotone(lambda a, b: a > b),
        }
        try:
            verdict = eval(compile(tree, where, "eval"), {"__builtins__": {}}, names)  # noqa: S307
            status = REPRODUCED if verdict else NOT_REPRODUCED
            reason = ""
        except (LookupError, ValueError, TypeError, ZeroDivisionError) as err:
            status, reason = NOT_EVALUABLE, str(err)
        records.append(
            {
                "claim": claim["text"],
                "panel": panel if panel is not None else "",
                "status": status,
                "values": "; ".join(read) if not reason else reason,
                "check": " ".join(str(claim["check"]).split()),
            }
        )
    return records


def evaluate_claims(claims: list[dict[str, Any]], summary, where: str = "claims"):
    """Every claim of an entry, as a table (claim, panel, status, values, check)."""
    import pandas as pd

    rows = []
    for i, claim in enumerate(claims or []):
        rows.extend(evaluate_claim(claim, summary, f"{where}[{i}]"))
    return pd.DataFrame(rows, columns=["claim", "panel", "status", "values", "check"])


def claim_status(table) -> str:
    """One word per entry: reproduced (all), partly (n/m), not reproduced, or none stated."""
    if table is None or table.empty:
        return "no claims stated"
    per_claim = table.groupby("claim", sort=False)["status"].agg(
        lambda s: REPRODUCED if (s == REPRODUCED).all() else s[s != REPRODUCED].iloc[0]
    )
    n_ok, n = int((per_claim == REPRODUCED).sum()), len(per_claim)
    if n_ok == n:
        return f"reproduced ({n}/{n} claims)"
    if n_ok == 0:
        return f"not reproduced (0/{n} claims)"
    return f"partly reproduced ({n_ok}/{n} claims)"
