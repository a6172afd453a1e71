"""The zoo table for the closing note: printed at the end of a zoo run in one process (``pytest tests/zoo``;
under pytest-xdist each worker keeps its own rows, and nothing is printed)."""
from __future__ import annotations

from zoo_common import ROWS


def pytest_terminal_summary(terminalreporter) -> None:
    rows = {name: row for name, row in ROWS.items() if "layer" in row}
    if not rows:
        return
    write = terminalreporter.write_line
    write("")
    write("| model | backend | automatic layer | layout | Grad-CAM vs hand-written (max rel. diff) | methods |")
    write("|---|---|---|---|---|---|")
    for name, row in rows.items():
        methods = row.get("methods")
        summary = "not run here" if methods is None else ", ".join(
            f"{method}: {outcome}" for method, outcome in methods.items() if outcome != "ok"
        ) or f"all {len(methods)} ok"
        write(f"| {name} | {row['backend']} | `{row['layer']}` | {row['layout']} | {row['difference']:.1e} | "
              f"{summary} |")
