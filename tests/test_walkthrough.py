"""Executes docs/walkthrough.md: every ```python block runs, and what it prints must match the doc.

The rules of the document, which the runner enforces:

* the ```python blocks run top to bottom in one shared namespace, as a reader would type them;
* a ```text block directly after a python block (only blank lines between) is that block's output,
  compared line by line (trailing spaces ignored); a python block without one must print nothing;
* a ```text block anywhere else is refused, so no shown output goes unchecked.

NumPy's print options are global; the walkthrough sets its own, and the runner puts the previous
ones back afterwards so that other tests in the same process are unaffected.

The document's code also writes its figures (PNG) into the folder named by the environment variable
``WALKTHROUGH_FIGURES`` (``figures`` by default, relative to the working directory). The test writes them
into a temporary folder and compares each with the committed ``docs/figures/NAME`` that the document
links (``](figures/NAME)``): same size, and a mean difference below one grey level per channel.

When a printed value changes on purpose (the default model was retrained, a formula was fixed),
``python tests/test_walkthrough.py --update`` runs the document, writes what it printed into its
text blocks and its figures into ``docs/figures``; review the diff before committing it (and regenerate
the notebooks: ``python tests/test_notebooks.py --update``).
"""
from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

WALKTHROUGH = Path(__file__).resolve().parent.parent / "docs" / "walkthrough.md"
FIGURES = WALKTHROUGH.parent / "figures"
FENCE = re.compile(r"^```(\S*)\s*$")
FIGURE_LINK = re.compile(r"\]\(figures/([\w.-]+\.png)\)")


@dataclass(frozen=True)
class Block:
    """A fenced block: its info string (``python``, ``text``, ...), its text, and the 1-based lines of its
    opening and closing fences."""

    language: str
    source: str
    line: int
    end: int
    follows_previous: bool  # only blank lines between this block and the previous one


@dataclass(frozen=True)
class Example:
    """A python block and the output the document shows for it (``""`` and no ``output`` block where it
    shows none)."""

    code: Block
    output: Block | None = None

    @property
    def expected(self) -> str:
        return self.output.source if self.output else ""


@dataclass(frozen=True)
class Run:
    """What one example printed, or the traceback it raised (then ``printed`` is what it printed before)."""

    printed: str
    error: str | None = None


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown``, in order; an unclosed fence is an error."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    between: list[str] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            between.append(lines[index])
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise ValueError(f"the fence opened on line {start + 1} is never closed")
        follows = bool(blocks) and all(not text.strip() for text in between)
        blocks.append(Block(opening.group(1), "\n".join(body), start + 1, index + 1, follows))
        between = []
        index += 1
    return blocks


def examples(markdown: str) -> list[Example]:
    """The python blocks of ``markdown`` paired with their expected output."""
    found: list[Example] = []
    previous: Block | None = None
    for block in fenced_blocks(markdown):
        if block.language == "text":
            if previous is None or previous.language != "python" or not block.follows_previous:
                raise ValueError(
                    f"the text block on line {block.line} does not directly follow a python block; "
                    "text blocks are reserved for output"
                )
            found[-1] = Example(found[-1].code, block)
        elif block.language == "python":
            found.append(Example(block))
        previous = block
    return found


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def run_examples(found: list[Example], filename: str = "<walkthrough>") -> list[Run]:
    """Run ``found`` in order in one namespace; one ``Run`` per example up to the first that raises.

    Each block is compiled with its real line numbers, so a traceback points into the document. The
    run stops at a block that raises: the blocks after it would fail only because of it.
    """
    namespace: dict = {"__name__": "__walkthrough__"}
    runs: list[Run] = []
    saved_print_options = np.get_printoptions()
    try:
        for example in found:
            code = compile("\n" * example.code.line + example.code.source, filename, "exec")
            stdout = io.StringIO()
            try:
                with contextlib.redirect_stdout(stdout):
                    exec(code, namespace)
            except Exception:  # noqa: BLE001 - any failure of the document's code is reported, not raised
                runs.append(Run(stdout.getvalue(), traceback.format_exc()))
                break
            runs.append(Run(stdout.getvalue()))
    finally:
        np.set_printoptions(**saved_print_options)
    return runs


def problems(found: list[Example], runs: list[Run]) -> list[str]:
    """Every block that raised or printed something other than the document shows."""
    found_problems = []
    for example, run in zip(found, runs, strict=False):
        if run.error is not None:
            found_problems.append(f"the block on line {example.code.line} raised:\n{run.error}")
            continue
        expected, printed = _lines(example.expected), _lines(run.printed)
        if printed != expected:
            diff = "\n".join(difflib.unified_diff(expected, printed, "shown", "printed", lineterm=""))
            found_problems.append(f"the block on line {example.code.line} printed something else:\n{diff}")
    return found_problems


def with_printed_output(markdown: str, found: list[Example], runs: list[Run]) -> str:
    """``markdown`` with each run example's text block holding what it printed (added or removed as needed).

    Examples that raised, and those after them (not run), keep their text blocks.
    """
    lines = markdown.splitlines()
    # edit from the end so that earlier line numbers stay valid
    for example, run in reversed(list(zip(found, runs, strict=False))):
        if run.error is not None:
            continue
        printed = _lines(run.printed)
        replacement = ["", "```text", *printed, "```"] if printed else []
        first = example.code.end  # 0-based index of the line after the python block's closing fence
        last = example.output.end if example.output else example.code.end
        lines[first:last] = replacement
    return "\n".join(lines) + "\n"


def figure_problems(markdown: str, written: Path) -> list[str]:
    """Every figure the document links that its code did not write to ``written``, or wrote otherwise than the
    committed ``docs/figures`` copy (another size, or a mean difference of a grey level or more)."""
    from PIL import Image

    found_problems = []
    for name in FIGURE_LINK.findall(markdown):
        new, committed = written / name, FIGURES / name
        if not new.is_file() or not committed.is_file():
            found_problems.append(f"figures/{name}: written {new.is_file()}, committed {committed.is_file()}")
            continue
        a = np.asarray(Image.open(new).convert("RGB"), dtype=np.float64)
        b = np.asarray(Image.open(committed).convert("RGB"), dtype=np.float64)
        if a.shape != b.shape or np.abs(a - b).mean() >= 1.0:
            found_problems.append(f"figures/{name} differs from what the document's code draws; run --update")
    return found_problems


def test_walkthrough_prints_what_it_shows(tmp_path, monkeypatch):
    for framework in ("torch", "tensorflow", "jax", "flax"):
        pytest.importorskip(framework)
    monkeypatch.setenv("WALKTHROUGH_FIGURES", str(tmp_path))
    markdown = WALKTHROUGH.read_text(encoding="utf-8")
    found = examples(markdown)
    assert len(found) >= 20, "the walkthrough lost most of its code blocks"
    assert sum(bool(example.expected) for example in found) >= 15
    runs = run_examples(found, str(WALKTHROUGH))
    found_problems = problems(found, runs)
    assert not found_problems, "\n\n".join(found_problems)
    assert len(runs) == len(found)
    assert len(FIGURE_LINK.findall(markdown)) >= 5
    found_problems = figure_problems(markdown, tmp_path)
    assert not found_problems, "\n".join(found_problems)


DOC_OK = """
Intro.

```python
x = 2
print(x * 21)
```

```text
42
```

```python
y = x + 1
```

```python
print(f"{y:.2f}")
```
```text
3.00
```
"""


def check(markdown: str) -> list[str]:
    found = examples(markdown)
    return problems(found, run_examples(found))


def test_runner_pairs_blocks_with_their_output():
    found = examples(DOC_OK)
    assert [(e.code.line, e.expected) for e in found] == [(4, "42"), (13, ""), (17, "3.00")]
    assert [run.printed for run in run_examples(found)] == ["42\n", "", "3.00\n"]
    assert check(DOC_OK) == []


def test_runner_reports_a_changed_value():
    found_problems = check(DOC_OK.replace("42\n", "41\n"))
    assert len(found_problems) == 1
    assert "line 4" in found_problems[0] and "-41" in found_problems[0] and "+42" in found_problems[0]


def test_runner_reports_output_the_document_does_not_show():
    found_problems = check(DOC_OK.replace("y = x + 1", "y = x + 1\nprint(y)"))
    assert len(found_problems) == 1 and "line 13" in found_problems[0] and "+3" in found_problems[0]


def test_runner_stops_at_a_block_that_raises_and_names_its_line():
    found = examples(DOC_OK.replace("y = x + 1", "y = x + undefined_name"))
    runs = run_examples(found)
    assert len(runs) == 2 and runs[0].error is None
    found_problems = problems(found, runs)
    assert len(found_problems) == 1
    assert "line 13" in found_problems[0] and "NameError" in found_problems[0]
    assert 'File "<walkthrough>", line 14' in found_problems[0]


def test_runner_refuses_output_that_no_block_produced():
    with pytest.raises(ValueError, match="line 2"):
        examples("Prose.\n```text\n42\n```\n")
    with pytest.raises(ValueError, match="line 5"):
        examples("```python\nprint(1)\n```\nprose between\n```text\n1\n```\n")


def test_runner_refuses_an_unclosed_fence():
    with pytest.raises(ValueError, match="line 1 is never closed"):
        fenced_blocks("```python\nprint(1)\n")


def test_runner_restores_numpy_print_options():
    before = np.get_printoptions()
    assert check("```python\nimport numpy as np\nnp.set_printoptions(precision=1)\n```\n") == []
    assert np.get_printoptions() == before


STALE = """Intro.

```python
print(6 * 7)
```

```text
41
```

```python
print("new")
```

More prose.
"""

UPDATED = """Intro.

```python
print(6 * 7)
```

```text
42
```

```python
print("new")
```

```text
new
```

More prose.
"""


def test_update_writes_what_each_block_printed():
    found = examples(STALE)
    assert len(check(STALE)) == 2
    assert with_printed_output(STALE, found, run_examples(found)) == UPDATED
    assert check(UPDATED) == []


def test_update_removes_output_a_block_no_longer_prints():
    found = examples(DOC_OK.replace("print(x * 21)", "x * 21"))
    updated = with_printed_output(DOC_OK.replace("print(x * 21)", "x * 21"), found, run_examples(found))
    assert "42" not in updated and check(updated) == []


def main(arguments: list[str]) -> int:
    """Report the walkthrough's problems; with ``--update``, write what it prints into its text blocks."""
    markdown = WALKTHROUGH.read_text(encoding="utf-8")
    found = examples(markdown)
    os.environ["WALKTHROUGH_FIGURES"] = str(FIGURES) if "--update" in arguments else tempfile.mkdtemp()
    runs = run_examples(found, str(WALKTHROUGH))
    if "--update" in arguments:
        WALKTHROUGH.write_text(with_printed_output(markdown, found, runs), encoding="utf-8")
        found_problems = [run.error for run in runs if run.error is not None]
    else:
        found_problems = problems(found, runs)
    print("\n\n".join(found_problems) or f"{WALKTHROUGH.name}: all {len(found)} blocks print what they show")
    return 1 if found_problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
