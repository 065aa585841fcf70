"""``results/README.md``, the gallery: one row per figure of the spec's list
(``experiments/catalogue.yaml``), built or not, with the figure, the command, scale, seeds, the
status of its claims and its reading notes, all drawn from the registry and the committed
results. ``bilevel-figure`` rewrites it after each default-scale figure; ``bilevel-figure
--gallery`` rewrites it alone. The hand-written sections after :data:`KEEP_MARKER` survive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bilevel.app.config import ConfigError

KEEP_MARKER = "<!-- hand-written sections below; bilevel-figure --gallery keeps them -->"


def catalogue(registry: Path) -> list[dict[str, Any]]:
    path = registry / "catalogue.yaml"
    if not path.exists():
        raise ConfigError(f"{path} is missing: the gallery lists the spec's figures from it")
    return yaml.safe_load(path.read_text())["figures"]


def _claims_of(results_dir: Path, name: str):
    import pandas as pd

    path = results_dir / f"{name}_claims.csv"
    if not path.exists():
        return None
    try:
        return pd.read_csv(path, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=["claim", "panel", "status", "values", "check"])


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: pipes escaped, one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _seeds(entry: dict[str, Any]) -> str:
    seeds = {tuple(p.get("seeds", entry.get("seeds", [0]))) for p in entry["panels"]}
    return " / ".join(", ".join(map(str, s)) for s in sorted(seeds, key=len, reverse=True))


def render(registry: Path, results_dir: Path, tail: str = "") -> str:
    """The gallery's Markdown."""
    from bilevel.app.claims import claim_status
    from bilevel.app.figure import available, load_entry

    registered = set(available(registry))
    lines = [
        "# Results: the gallery",
        "",
        "Every figure of the spec's figure list, built or not. A built entry is regenerated from "
        "scratch by its command with the committed code and configs (registry entry "
        "`experiments/<id>.yaml`); its table (`<id>.csv`: every evaluation of every run), summary "
        "(`<id>_summary.csv`), claim checks (`<id>_claims.csv`) and figure (PNG, PDF) are "
        "committed here. Small scale (`scale=small`, CPU) unless a row says otherwise; other "
        "scales go to `results/<overrides>/<id>.*` (e.g. `bilevel-figure unibio/fig1 scale=paper` "
        "→ `results/scale=paper/unibio/fig1.png`). This file is written by `bilevel-figure "
        "--gallery`; do not edit above the hand-written sections.",
        "",
        "| figure | paper | what | status | command | scale, seeds | claims |",
        "|---|---|---|---|---|---|---|",
    ]
    sections = []
    for row in catalogue(registry):
        fid = row["id"]
        what = f"{row['task']}; {row['y']} vs {row['x']}"
        if fid not in registered:
            lines.append(
                f"| {fid} | {row['paper']} | {_cell(what)} | not built yet (issue "
                f"#{row['issue']}) | — | — | — |"
            )
            continue
        entry = load_entry(fid, registry)
        png = results_dir / f"{fid}.png"
        claims = _claims_of(results_dir, fid)
        status = "built" if png.exists() else "registered, not yet run"
        lines.append(
            f"| [{fid}](#{fid.replace('/', '').lower()}) | {row['paper']} | {_cell(what)} | "
            f"{status} | `bilevel-figure {fid}` | small; seeds {_seeds(entry)} | "
            f"{claim_status(claims) if claims is not None else 'not evaluated'} |"
        )
        sections += ["", f"## {fid}", "", f"**{entry.get('title', fid)}**", ""]
        if png.exists():
            sections += [f"![{fid}]({fid}.png)", ""]
        sections += [
            f"Command: `bilevel-figure {fid}` (redraw only: `bilevel-figure {fid} --from-table`;"
            f" paper scale: `bilevel-figure {fid} scale=paper`). Registry entry: "
            f"`experiments/{fid}.yaml`; experiment config: "
            f"`configs/experiment/{entry['experiment']}.yaml`.",
            "",
        ]
        if claims is not None and not claims.empty:
            sections += ["| claim | panel | status | numbers |", "|---|---|---|---|"]
            for c in claims.itertuples():
                cells = [c.claim, c.panel or "all", c.status, c.values]
                sections.append("| " + " | ".join(_cell(x) for x in cells) + " |")
            sections.append("")
        notes = str(entry.get("notes", "")).strip()
        if notes:
            sections += ["Reading it:", "", notes, ""]
    text = "\n".join([*lines, *sections]).rstrip() + "\n"
    return text + "\n" + KEEP_MARKER + "\n" + (tail.strip("\n") + "\n" if tail.strip() else "")


def write_gallery(registry: Path | None = None, results_dir: Path | None = None) -> Path:
    """Rewrite ``results/README.md`` from the registry, keeping its hand-written tail."""
    from bilevel.app.figure import REGISTRY, RESULTS

    registry, results_dir = registry or REGISTRY, results_dir or RESULTS
    path = results_dir / "README.md"
    tail = ""
    if path.exists() and KEEP_MARKER in path.read_text():
        tail = path.read_text().split(KEEP_MARKER, 1)[1]
    path.write_text(render(registry, results_dir, tail))
    return path
