"""Check every published number against the recorded file it cites.

    python benchmarks/check_claims.py [--root DIR] [--uncovered]

The manifest ``benchmarks/claims.json`` lists, per Markdown document and section that
publishes measurements (the README's "Measured here", ``benchmarks/README.md``):

* ``sources``: a short name -> a recorded file under ``benchmarks/results/``. Each must hold
  the command that produced it (a top-level ``command``); a file recorded before its tool
  stored one names the tool call in ``command_note`` instead, and the checker says so.
* ``claims``: a snippet of the document's text and, for each number in the snippet in
  order, where it comes from: ``[source, path]`` (optionally ``{"scale": 100}`` for a
  percentage) or ``{"expr": "a / b", "args": {"a": [source, path], ...}}`` for a number
  derived from recorded ones (``+ - * /``, ``min(...)`` and ``max(...)`` only: the end of a
  quoted range), or ``{"context": "why"}`` for a number of the snippet that is a setting
  (the epochs of a table row). ``path`` walks the JSON: ``a.b`` for keys,
  ``[2]`` for a list index, ``[row=one-model,label=torch fp32]`` for the one list element
  whose fields have those values.
* ``context``: snippets whose numbers describe a setting or the set-up rather than a
  measurement (epochs of a run, an image size), each with the reason.

The check fails when:

* a claim's snippet is no longer in its document (the text or a number in it was edited);
* a number of a snippet does not equal its recorded value at the rounding the text uses
  (``143.7`` is compared with the value rounded to one decimal, ``3.86x`` to two);
* a snippet's block (its paragraph or table and the paragraph before it) does not cite the
  files of its sources (``[source: benchmarks/results/FILE]``, a file name in backticks);
* a number in a checked section is neither in a claim nor in a context snippet;
* a source file is missing, or has neither a ``command`` nor a ``command_note``.

Numbers inside code (backticks, fenced blocks) are commands and paths, not claims.
``--uncovered`` lists the numbers no snippet covers, to help write the manifest.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = Path("benchmarks/claims.json")
#: A number as prose writes it: an image size ``640x256`` as one token; else an optional sign,
#: digits with optional thousands commas, decimals. Digits inside a word (``INT8``, ``r18``) or
#: after a name's hyphen (``ResNet-18``) are part of a name, not numbers.
NUMBER = re.compile(r"(?<![\w.])\d+x\d+(?![\w.])"
                    r"|(?<![\w.])(?<![A-Za-z]-)[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])"
                    r"|(?<![\w.])(?<![A-Za-z]-)[-+]?\d+(?:\.\d+)?")
CODE_SPAN = re.compile(r"`[^`\n]*`")
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
SELECT = re.compile(r"\[([^\]]*)\]")


@dataclass
class Report:
    """What the check found: ``problems`` fail it, ``notes`` do not."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def numbers(text: str) -> list[str]:
    """The numbers of ``text`` in order, as written (``"10,000"``, ``"3.86"``, ``"+0.002"``)."""
    return [m.group(0) for m in NUMBER.finditer(text)]


def mask_code(text: str) -> str:
    """``text`` with fenced code blocks and code spans blanked out (same length)."""
    text = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def section(text: str, heading: str | None) -> tuple[int, int]:
    """(start, end) of the section under ``heading`` (a whole line, e.g. ``## Measured here``)
    up to the next heading of the same or a higher level; the whole text for None."""
    if heading is None:
        return 0, len(text)
    m = re.search(rf"^{re.escape(heading)}[ \t]*$", text, re.M)
    if m is None:
        raise KeyError(heading)
    level = len(heading) - len(heading.lstrip("#"))
    nxt = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, m.end())
    return m.start(), nxt.start() if nxt else len(text)


def resolve(doc: Any, path: str) -> Any:
    """The value at ``path`` in the JSON ``doc`` (see the module docstring)."""
    value = doc
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path):
        if part.startswith("["):
            inner = part[1:-1]
            if inner.lstrip("-").isdigit():
                value = value[int(inner)]
                continue
            conds = [c.split("=", 1) for c in inner.split(",")]
            hits = [v for v in value if all(str(v.get(k.strip())) == want.strip() for k, want in conds)]
            if len(hits) != 1:
                raise KeyError(f"{part} matches {len(hits)} elements")
            value = hits[0]
        else:
            value = value[part]
    return value


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node: ast.AST, names: dict[str, float]) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body, names)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max") \
            and node.args and not node.keywords:
        values = [_eval(a, names) for a in node.args]
        return min(values) if node.func.id == "min" else max(values)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    raise ValueError(f"unsupported expression element {ast.dump(node)}")


def agrees(written: str, value: float) -> bool:
    """Whether ``value`` formatted with as many decimals as ``written`` has gives ``written``
    (thousands commas and a leading ``+`` ignored)."""
    plain = written.replace(",", "").lstrip("+")
    decimals = len(plain.split(".")[1]) if "." in plain else 0
    return f"{value:.{decimals}f}" == f"{float(plain):.{decimals}f}"


def citation_forms(file: str, doc_name: str) -> list[str]:
    """How a document may name a source: the file, or its folder for a bench ``results.json``;
    from the repository root or relative to the document's folder."""
    forms = [file]
    if Path(file).name == "results.json":
        forms.append(str(Path(file).parent))
    base = str(Path(doc_name).parent)
    if base != ".":
        forms += [f[len(base) + 1:] for f in list(forms) if f.startswith(base + "/")]
    return forms


def _blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) of the blank-line separated blocks of ``text``."""
    out, start = [], 0
    for m in re.finditer(r"\n[ \t]*\n", text):
        out.append((start, m.start()))
        start = m.end()
    out.append((start, len(text)))
    return out


def _citations_near(text: str, pos: int) -> str:
    """The block holding ``pos`` plus the block before it (a table's caption)."""
    blocks = _blocks(text)
    k = next(i for i, (a, b) in enumerate(blocks) if a <= pos <= b)
    return text[blocks[max(k - 1, 0)][0]:blocks[k][1]]


def _locate(report: Report, doc_name: str, text: str, spans: list[tuple[int, int]],
            covered: list[tuple[int, int]], snippet: str, what: str) -> int | None:
    """Where ``snippet`` starts in a checked section of ``text`` (recorded as covered); None
    (and a problem) when it is not there."""
    pos = text.find(snippet)
    if pos < 0 or not any(a <= pos < b for a, b in spans):
        report.problems.append(f"{doc_name}: {what} {snippet!r} is not in the checked sections (edited?)")
        return None
    covered.append((pos, pos + len(snippet)))
    return pos


def check(root: Path, manifest: Path | None = None) -> Report:
    """Check the documents of ``root`` against the manifest (default ``root/benchmarks/claims.json``)."""
    report = Report()
    spec = json.loads((manifest or root / MANIFEST).read_text(encoding="utf-8"))
    sources: dict[str, Any] = {}
    for name, src in spec["sources"].items():
        path = root / src["file"]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            report.problems.append(f"source {name}: cannot read {src['file']} ({e})")
            continue
        sources[name] = data
        if isinstance(data, dict) and data.get("command"):
            continue
        if src.get("command_note"):
            report.notes.append(f"{src['file']} holds no command: {src['command_note']}")
        else:
            report.problems.append(f"source {name}: {src['file']} holds no 'command' and the manifest gives no "
                                   "'command_note'; rerun the tool that writes it, or say how it was made")
    for doc_name, doc_spec in spec["documents"].items():
        text = (root / doc_name).read_text(encoding="utf-8")
        masked = mask_code(text)
        spans = []
        for heading in doc_spec.get("sections", [None]):
            try:
                spans.append(section(text, heading))
            except KeyError:
                report.problems.append(f"{doc_name}: section {heading!r} not found")
        covered: list[tuple[int, int]] = []
        for ctx in doc_spec.get("context", []):
            if not ctx.get("why"):
                report.problems.append(f"{doc_name}: context {ctx['text']!r} gives no reason ('why')")
            _locate(report, doc_name, text, spans, covered, ctx["text"], "context")
        for claim in doc_spec.get("claims", []):
            snippet = claim["text"]
            pos = _locate(report, doc_name, text, spans, covered, snippet, "claim")
            if pos is None:
                continue
            written = numbers(mask_code(snippet))
            values = claim["values"]
            if len(written) != len(values):
                report.problems.append(f"{doc_name}: claim {snippet!r} has {len(written)} numbers "
                                       f"({', '.join(written)}) but {len(values)} values in the manifest")
                continue
            cited: set[str] = set()
            for w, v in zip(written, values):
                if isinstance(v, dict) and "context" in v:  # a setting inside a claim's snippet
                    if not v["context"]:
                        report.problems.append(f"{doc_name}: {w} in {snippet!r}: a context entry needs a reason")
                    continue
                report.checked += 1
                try:
                    if isinstance(v, dict) and "expr" in v:
                        names = {k: float(resolve(sources[a[0]], a[1])) for k, a in v["args"].items()}
                        cited |= {a[0] for a in v["args"].values()}
                        value = _eval(ast.parse(v["expr"], mode="eval"), names)
                        where = f"{v['expr']} with " + ", ".join(f"{k}={a[0]}:{a[1]}" for k, a in v["args"].items())
                    else:
                        value = float(resolve(sources[v[0]], v[1])) * float((v[2] if len(v) > 2 else {}).get(
                            "scale", 1))
                        cited.add(v[0])
                        where = f"{v[0]}:{v[1]}"
                except (KeyError, IndexError, TypeError, ValueError) as e:
                    report.problems.append(f"{doc_name}: {w} in {snippet!r}: cannot read its value ({e})")
                    continue
                if not agrees(w, value):
                    report.problems.append(f"{doc_name}: {w} in {snippet!r} does not match {where} = {value!r}")
            near = _citations_near(text, pos)
            for name in sorted(cited):
                forms = citation_forms(spec["sources"][name]["file"], doc_name)
                if not any(f"[source: `{f}`" in near or f"[source: {f}" in near for f in forms):
                    report.problems.append(f"{doc_name}: {snippet!r} does not cite its source {name} (write "
                                           f"[source: `{forms[-1]}`] in its paragraph or the table's caption)")
        for a, b in spans:
            for m in NUMBER.finditer(masked, a, b):
                if not any(s <= m.start() and m.end() <= e for s, e in covered):
                    line = text.count("\n", 0, m.start()) + 1
                    report.problems.append(f"{doc_name}:{line}: the number {m.group(0)} is not backed: cite it in "
                                           "benchmarks/claims.json (claims) or say why it is not a measurement "
                                           "(context), or remove it")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root [default: this script's]")
    parser.add_argument("--uncovered", action="store_true", help="list only the numbers no snippet covers")
    args = parser.parse_args(argv)
    report = check(args.root)
    problems = [p for p in report.problems if "is not backed" in p] if args.uncovered else report.problems
    for note in report.notes:
        print(f"note: {note}")
    for p in problems:
        print(f"FAIL: {p}")
    print(f"{report.checked} numbers checked against their files; {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
