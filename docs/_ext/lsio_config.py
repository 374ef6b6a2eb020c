"""Sphinx extension: the configuration reference, generated from ``dask_lsio/lsio.yaml``.

``.. lsio-config::`` reads the yaml file named by the ``lsio_config_file`` setting of
``conf.py`` and emits, for every key, a ``confval`` entry (linkable with
``:confval:`lsio.engine```) giving its full dotted name, its default as written in the file,
the environment variable that sets it, and the comment lines above it as its description;
a summary table of keys and defaults comes first.

Nothing is copied by hand: a key added to the yaml file appears in the docs at the next
build. The file is parsed twice, by PyYAML (the values dask-lsio loads) and line by line
(the comments); a key that the two readings do not agree on is a build error, and a key
without a comment above it is a warning (an error with ``sphinx-build -W``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.-]+):(?:\s+(?P<value>.*?))?\s*$")
_RST_SPECIAL = re.compile(r"([\\`*_|\[\]<>:])")


@dataclass(frozen=True)
class Entry:
    """One setting: dotted name, default as written, its comment, where it is."""

    name: str
    raw: str
    description: str
    line: int

    @property
    def env(self) -> str:
        """The environment variable dask reads it from (``-`` and ``_`` are the same key)."""
        return "DASK_" + self.name.upper().replace(".", "__").replace("-", "_")


def parse(path: Path) -> list[Entry]:
    """Every leaf key of the yaml file at ``path`` with the comment block just above it."""
    text = path.read_text()
    entries: list[Entry] = []
    comments: list[str] = []
    parents: list[tuple[int, str]] = []  # (indent, key) of the mappings we are inside
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            comments = []  # a blank line ends a comment block
            continue
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
            continue
        m = _KEY.match(line)
        if m is None:
            raise ExtensionError(f"{path}:{lineno}: not a 'key: value' line: {line!r}")
        indent = len(m["indent"])
        while parents and parents[-1][0] >= indent:
            parents.pop()
        name = ".".join([k for _, k in parents] + [m["key"]])
        value = _strip_comment(m["value"] or "")
        if not value:  # a mapping: its keys follow, indented
            parents.append((indent, m["key"]))
        else:
            entries.append(Entry(name, value, " ".join(comments), lineno))
        comments = []
    _check(path, text, entries)
    return entries


def _strip_comment(value: str) -> str:
    """``value`` without a trailing ``# comment`` (outside quotes)."""
    quote = None
    for i, ch in enumerate(value):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or value[i - 1].isspace()):
            return value[:i].rstrip()
    return value


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _check(path: Path, text: str, entries: list[Entry]) -> None:
    """The line reading must give exactly the keys and values PyYAML loads."""
    loaded = _flatten(yaml.safe_load(text) or {})
    found = {e.name: e for e in entries}
    if set(loaded) != set(found) or len(found) != len(entries):
        raise ExtensionError(
            f"{path}: the keys read line by line {sorted(found)} differ from those PyYAML "
            f"loads {sorted(loaded)}; keep one 'key: value' per line")
    for e in entries:
        if yaml.safe_load(e.raw) != loaded[e.name]:
            raise ExtensionError(f"{path}:{e.line}: cannot read the value of {e.name!r}")


def _escape(text: str) -> str:
    """Plain text as reStructuredText that renders as written."""
    return _RST_SPECIAL.sub(r"\\\1", text)


def _literal(text: str) -> str:
    return f":literal:`{_escape(text)}`"


class LSIOConfigDirective(SphinxDirective):
    """``.. lsio-config::``: the summary table and one ``confval`` per setting."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        path = Path(self.config.lsio_config_file)
        self.env.note_dependency(str(path))
        entries = parse(path)
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 30 20 50",
            "",
            "   * - key",
            "     - default",
            "     - environment variable",
        ]
        for e in entries:
            lines += [f"   * - :confval:`{e.name}`", f"     - {_literal(e.raw)}",
                      f"     - {_literal(e.env)}"]
        lines.append("")
        for e in entries:
            if not e.description:
                logger.warning("%s has no comment above it in %s: add one, it is the "
                               "documentation of the setting", e.name, path,
                               location=(self.env.docname, self.lineno))
            lines += [
                f".. confval:: {e.name}",
                "",
                f"   :Default: {_literal(e.raw)}",
                f"   :Environment: {_literal(e.env)}",
                "",
                f"   {_escape(e.description) or '(undocumented)'}",
                "",
            ]
        content = StringList(lines, source=str(path))
        container = nodes.container()
        self.state.nested_parse(content, self.content_offset, container)
        return container.children


def setup(app):
    app.add_config_value("lsio_config_file", "", "env", types=[str])
    app.add_object_type("confval", "confval", objname="configuration value",
                        indextemplate="pair: %s; configuration value")
    app.add_directive("lsio-config", LSIOConfigDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
