"""The walkthrough as a notebook a lecturer can hand out: ``notebooks/walkthrough.ipynb``, generated from
``docs/walkthrough.md`` and executed here.

The converter is small and needs no Jupyter package: prose becomes markdown cells, each ```python block a code
cell, and the ```text block under it that cell's stored output (a ``stream`` on stdout); links to the page's
figures are rewritten to point from ``notebooks/`` into ``docs/``. The notebook is plain nbformat 4 JSON.

Two checks: the committed notebook is exactly what the converter makes of the current page (so the two
cannot drift apart), and its code cells, executed in order in one namespace in this process (the way
``tests/test_walkthrough.py`` runs the page; no kernel is started), print the outputs it stores.

``python tests/test_notebooks.py --update`` writes the notebook from the page.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_walkthrough import WALKTHROUGH, Block, Example, fenced_blocks, problems, run_examples

NOTEBOOK = WALKTHROUGH.parent.parent / "notebooks" / "walkthrough.ipynb"
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def _source(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _markdown_cell(lines: list[str]) -> dict | None:
    text = "\n".join(lines).strip("\n")
    text = text.replace("](figures/", "](../docs/figures/").replace("](images/", "](../docs/images/")
    return {"cell_type": "markdown", "metadata": {}, "source": _source(text)} if text.strip() else None


def notebook_from_markdown(markdown: str) -> dict:
    """The nbformat 4 notebook of ``markdown``: prose and non-python blocks as markdown cells, python blocks as
    code cells with the text block under each as its output."""
    lines = markdown.splitlines()
    cells: list[dict] = []
    prose: list[str] = []
    position = 0
    for block in fenced_blocks(markdown):
        start, end = block.line - 1, block.end  # 0-based first line of the fence, line after the closing one
        if block.language not in ("python", "text"):
            continue  # formulas stay in the prose
        prose += lines[position:start]
        position = end
        if block.language == "text":
            cells[-1]["outputs"] = [
                {"name": "stdout", "output_type": "stream", "text": _source(block.source + "\n")}
            ]
            continue
        cell = _markdown_cell(prose)
        if cell:
            cells.append(cell)
        prose = []
        code = _source(block.source)
        cells.append({"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": code})
    cell = _markdown_cell(prose + lines[position:])
    if cell:
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {"kernelspec": KERNEL, "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 4,
    }


def notebook_text(markdown: str) -> str:
    return json.dumps(notebook_from_markdown(markdown), indent=1, ensure_ascii=False) + "\n"


def notebook_examples(notebook: dict) -> list[Example]:
    """The code cells as examples (cell numbers for line numbers), each with its stored stdout."""
    found = []
    for number, cell in enumerate(notebook["cells"], start=1):
        if cell["cell_type"] != "code":
            continue
        code = Block("python", "".join(cell["source"]), number, number, False)
        printed = "".join("".join(output["text"]) for output in cell["outputs"] if output.get("name") == "stdout")
        found.append(Example(code, Block("text", printed.rstrip("\n"), number, number, True) if printed else None))
    return found


DOC = """# Title

Prose with a [figure](figures/a.png).

```
y = formula
```

```python
print(6 * 7)
```

```text
42
```

```python
z = 1
```

Closing words.
"""


def test_converter_makes_cells_outputs_and_links():
    notebook = notebook_from_markdown(DOC)
    kinds = [cell["cell_type"] for cell in notebook["cells"]]
    assert kinds == ["markdown", "code", "code", "markdown"]
    first = "".join(notebook["cells"][0]["source"])
    assert "](../docs/figures/a.png)" in first and "y = formula" in first
    assert notebook["cells"][1]["outputs"][0]["text"] == ["42\n"]
    assert notebook["cells"][2]["outputs"] == [] and "".join(notebook["cells"][3]["source"]) == "Closing words."
    found = notebook_examples(notebook)
    assert problems(found, run_examples(found)) == []


def test_notebook_is_generated_from_the_walkthrough():
    expected = notebook_text(WALKTHROUGH.read_text(encoding="utf-8"))
    assert NOTEBOOK.is_file(), f"{NOTEBOOK} is missing: run python tests/test_notebooks.py --update"
    stale = "the notebook is stale: run python tests/test_notebooks.py --update"
    assert NOTEBOOK.read_text(encoding="utf-8") == expected, stale


def test_notebook_runs_and_prints_its_outputs(tmp_path, monkeypatch):
    for framework in ("torch", "tensorflow", "jax", "flax"):
        pytest.importorskip(framework)
    monkeypatch.setenv("WALKTHROUGH_FIGURES", str(tmp_path))
    found = notebook_examples(json.loads(NOTEBOOK.read_text(encoding="utf-8")))
    runs = run_examples(found, str(NOTEBOOK))
    found_problems = problems(found, runs)
    assert not found_problems, "\n\n".join(found_problems)
    assert len(runs) == len(found) >= 20


def main(arguments: list[str]) -> int:
    if "--update" in arguments:
        NOTEBOOK.parent.mkdir(exist_ok=True)
        NOTEBOOK.write_text(notebook_text(WALKTHROUGH.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote {NOTEBOOK}")
        return 0
    print("usage: python tests/test_notebooks.py --update")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
