"""Running the examples the docs show, as written, so they cannot rot."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc_example(page: str, heading: str) -> str:
    """The first ```python block after ``heading`` in docs/``page``."""
    section = (DOCS / page).read_text("utf-8").split(heading, 1)[1]
    found = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert found, f"docs/{page} lost its example after {heading!r}"
    return found.group(1)


def run_example(code: str, directory: Path) -> None:
    """Run ``code`` as a script ``example.py`` in ``directory`` (as ``__main__``)."""
    script = directory / "example.py"
    script.write_text(code, "utf-8")
    runpy.run_path(str(script), run_name="__main__")
