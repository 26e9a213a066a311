"""The code's citations of the methods document resolve in ``docs/methods.md``.

The source cites the methods as ``docs/methods.md §1.2``, ranges such as ``§6.2–6.4, 6.7``, steps of a
section (``§3 step 6``, ``§6.8 pitfall 1``) and the ComBat steps ``S1``–``S8``. This test reads the
comments and string literals (docstrings included) of every module of ``featharm`` and checks that

(a) every cited section is a heading of ``docs/methods.md``; every ComBat step ``S1``–``S8`` is a labelled
    step (``**S5**``) of §1.2; every ``§N step K`` a labelled ``**Step K**`` of §N; every ``§N pitfall K`` a
    labelled ``**Pitfall K**`` of §N;
(b) no module cites the methods under another path than ``docs/methods.md`` (a bare ``methods.md``,
    ``../methods.md``, the shared specification ...).

Only comments and strings are searched, so code such as a variable ``S2`` is not taken for a citation.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "methods.md"
PACKAGE = ROOT / "featharm"

# Modules whose comments or strings use "§" or "S<digit>" for something other than a citation of the
# methods document (none today; the formula grammar has no such text). Paths relative to the package.
NOT_CITATIONS: set[str] = set()

_TEXT_TOKENS = {tokenize.COMMENT, tokenize.STRING}
if hasattr(tokenize, "FSTRING_MIDDLE"):  # Python >= 3.12 splits f-strings into several tokens
    _TEXT_TOKENS.add(tokenize.FSTRING_MIDDLE)

_NUM = r"\d+(?:\.\d+)*"
SECTION = re.compile(rf"§\s?({_NUM})")
SECTION_RANGE = re.compile(r"§\s?(\d+)\.(\d+)\s*[–-]\s*(?:§\s?)?(\d+)\.(\d+)")
SECTION_LIST = re.compile(rf"§\s?{_NUM}(?:\s*[–-]\s*{_NUM})?((?:,\s*(?:§\s?)?\d+\.\d+)+)")
SECTION_ITEM = re.compile(rf"§\s?({_NUM}),?\s+(step|pitfall)\s+(\d+)", re.IGNORECASE)
STEP = re.compile(r"\bS([1-8])\b")
STEP_RANGE = re.compile(r"\bS([1-8])\s*[–-]\s*S?([1-8])\b")
METHODS_PATH = re.compile(r"[\w./\\-]*methods\.md")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and string literal of a module."""
    source = path.read_text(encoding="utf-8")
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in _TEXT_TOKENS:
            out.append((tok.start[0], tok.string))
    return out


def _citations() -> list[tuple[str, str, str]]:
    """``(where, kind, key)``: kind "section" (key "1.2"), "S" (key "5"), "step"/"pitfall" (key "3/6")."""
    found = []
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in NOT_CITATIONS:
            continue
        for line, text in _texts(path):
            where = f"featharm/{rel}:{line}"
            keys = set()
            for m in SECTION.finditer(text):
                keys.add(("section", m.group(1)))
            for m in SECTION_RANGE.finditer(text):
                a, lo, b, hi = map(int, m.groups())
                if a == b:
                    keys.update(("section", f"{a}.{k}") for k in range(lo, hi + 1))
            for m in SECTION_LIST.finditer(text):
                keys.update(("section", k) for k in re.findall(r"\d+\.\d+", m.group(1)))
            for m in SECTION_ITEM.finditer(text):
                keys.add((m.group(2).lower(), f"{m.group(1)}/{m.group(3)}"))
            for m in STEP.finditer(text):
                keys.add(("S", m.group(1)))
            for m in STEP_RANGE.finditer(text):
                keys.update(("S", str(k)) for k in range(int(m.group(1)), int(m.group(2)) + 1))
            found.extend((where, kind, key) for kind, key in sorted(keys))
    return found


CITATIONS = _citations()


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _headings(doc: str) -> dict[str, tuple[int, int]]:
    """Section number -> (level, start offset) of its heading (``### §1.2 ...``)."""
    out = {}
    for m in re.finditer(r"^(#{1,6})\s+§(\d+(?:\.\d+)*)\b", doc, flags=re.MULTILINE):
        out[m.group(2)] = (len(m.group(1)), m.start())
    return out


def _section_text(doc: str, number: str) -> str:
    """The text of a section, from its heading to the next heading of the same or a higher level."""
    level, start = _headings(doc)[number]
    nxt = re.compile(rf"^#{{1,{level}}}\s", flags=re.MULTILINE)
    m = nxt.search(doc, doc.index("\n", start) + 1)
    return doc[start:m.start() if m else len(doc)]


def test_the_code_cites_the_methods():
    # the extraction works: the package cites sections, ComBat steps and section items
    kinds = {kind for _, kind, _ in CITATIONS}
    assert {"section", "S", "step", "pitfall"} <= kinds, kinds
    assert len({key for _, kind, key in CITATIONS if kind == "S"}) == 8


@pytest.mark.parametrize("where, kind, key", CITATIONS, ids=[f"{w} {k} {v}" for w, k, v in CITATIONS])
def test_citation_resolves(where, kind, key):
    doc = _doc()
    headings = _headings(doc)
    if kind == "section":
        assert key in headings, f"{where} cites §{key}, which is not a heading of docs/methods.md"
    elif kind == "S":
        assert "1.2" in headings, "docs/methods.md has no §1.2 (the ComBat steps)"
        assert re.search(rf"\*\*S{key}\*\*", _section_text(doc, "1.2")), \
            f"{where} cites S{key}, which is not a labelled step (**S{key}**) of §1.2"
    else:
        number, item = key.split("/")
        assert number in headings, f"{where} cites §{number} {kind} {item}; §{number} is not a heading"
        label = kind.capitalize()
        assert re.search(rf"\*\*{label} {item}\*\*", _section_text(doc, number)), \
            f"{where} cites §{number} {kind} {item}, which is not labelled **{label} {item}** in §{number}"


def test_methods_are_cited_as_docs_methods_md():
    bad = []
    for path in _modules():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in METHODS_PATH.finditer(line):
                if m.group(0) != "docs/methods.md":
                    bad.append(f"featharm/{path.relative_to(PACKAGE).as_posix()}:{lineno}: {m.group(0)}")
    assert not bad, "cite the methods as docs/methods.md:\n" + "\n".join(bad)


def test_docs_index_lists_the_methods():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    assert "methods.md" in index
