"""Read an Apptainer definition file the way ``apptainer build`` does.

One parser for the recipe, used by the image builder (``build.py``) and by
the recipe's unit tests (``tests/test_container.py``), so that what the tests
check is what gets built. It follows Apptainer 1.2+ (``pkg/build/types/parser``
and ``internal/pkg/build/args``) for what ``singularity/icf.def`` uses:

- build arguments: ``{{ name }}`` anywhere in the file is replaced by the
  ``--build-arg name=value`` given, else by the default in ``%arguments``
  (``name=value`` lines); a use on a comment line is left alone; an argument
  with no value is an error, as in Apptainer;
- the header: ``Key: value`` lines before the first section, keys in lower
  case, ``#`` starting a comment;
- sections: a line whose first word starts with ``%`` opens one; its text is
  every following line up to the next section, as written (a section given
  twice is appended to, as in Apptainer); ``%files`` lines are ``SOURCE
  [DESTINATION]``; ``%labels`` lines ``KEY VALUE``.

It is stricter than Apptainer where the builder would otherwise have to
guess: one build stage only, no SCIF apps, no ``%files from <stage>``, no
quoted or globbed ``%files`` paths, no unknown header keys or sections, and a
``--build-arg`` that the recipe never uses is an error (Apptainer warns).
Only the standard library is used: the builder runs on the host's python3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Apptainer's: internal/pkg/build/args/reader.go
BUILD_ARG = re.compile(r"{{\s*(\w+)\s*}}")
# a '#' before the use on its line makes it a comment (Apptainer: `\s*[#][^!]\s*.*`)
COMMENT_BEFORE = re.compile(r"#[^!]")

SECTIONS = frozenset({"help", "setup", "files", "labels", "environment", "pre", "post", "runscript", "test",
                      "startscript", "arguments"})
HEADER_KEYS = frozenset({"bootstrap", "from", "osversion", "mirrorurl", "include", "updateurl", "stage",
                         "fingerprints", "confurl", "setopt", "product", "user", "regcode", "productpgp",
                         "registryurl", "namespace", "includecmd"})


class DefinitionError(ValueError):
    """The definition file is not one this parser (and so the builder) accepts."""


@dataclass(frozen=True)
class Section:
    """One ``%name [args]`` section: its arguments and its text, as written."""

    name: str
    args: str = ""
    body: str = ""

    def lines(self) -> list[str]:
        """The text's lines without blank lines and ``#`` comment lines, stripped."""
        return [line.strip() for line in self.body.splitlines()
                if line.strip() and not line.strip().startswith("#")]


@dataclass(frozen=True)
class Definition:
    """A parsed definition file, build arguments applied."""

    text: str                         # the file after build-argument replacement (what the image records)
    header: dict[str, str]            # lower-case keys
    sections: dict[str, Section]      # every section but %files, by name
    files: list[tuple[str, str]]      # %files: (source on the host, destination in the image)
    labels: dict[str, str] = field(default_factory=dict)
    arguments: dict[str, str] = field(default_factory=dict)  # build arguments used, with their values

    def section(self, name: str) -> Section:
        """The named section; an empty one if the file has none."""
        return self.sections.get(name, Section(name))


def split_sections(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The header text and each section as (name, args, body), in file order."""
    header: list[str] = []
    sections: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].startswith("%"):
            title = line.strip()[1:]
            name, _, args = title.partition(" ")
            sections.append((name.lower(), args, []))
        elif sections:
            sections[-1][2].append(line)
        else:
            header.append(line)
    return "\n".join(header), [(name, args, "".join(f"{line}\n" for line in body))
                               for name, args, body in sections]


def parse_header(text: str) -> dict[str, str]:
    """``Key: value`` lines, keys in lower case (Apptainer's doHeader, without continuations)."""
    header: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.split("#", 1)[0]
        key, colon, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not colon:
            raise DefinitionError(f"header line {number}: '{raw.strip()}' is not 'Key: value'")
        if value.endswith("\\"):
            raise DefinitionError(f"header line {number}: continued header lines are not supported")
        if key not in HEADER_KEYS:
            raise DefinitionError(f"header line {number}: unknown header keyword '{key}'")
        if key in header:
            raise DefinitionError(f"header line {number}: '{key}' given twice")
        header[key] = value
    return header


def argument_defaults(body: str) -> dict[str, str]:
    """The ``%arguments`` section's ``name=value`` lines (Apptainer's ReadDefaults)."""
    defaults: dict[str, str] = {}
    for line in Section("arguments", body=body).lines():
        name, equals, value = line.partition("=")
        if not equals or not name.strip():
            raise DefinitionError(f"%arguments: '{line}' is not name=value")
        defaults[name.strip()] = value.strip()
    return defaults


def apply_build_args(text: str, given: Mapping[str, str], defaults: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """``text`` with every ``{{ name }}`` outside comments replaced; and the values used."""
    used: dict[str, str] = {}

    def value(match: re.Match[str]) -> str:
        line_start = text.rfind("\n", 0, match.start()) + 1
        if COMMENT_BEFORE.search(text, line_start, match.start()):
            return match.group(0)
        name = match.group(1)
        if name in given:
            used[name] = given[name]
        elif name in defaults:
            used[name] = defaults[name]
        else:
            raise DefinitionError(f"build argument '{name}' has no value: "
                                  f"give --build-arg {name}=VALUE or a default in %arguments")
        return used[name]

    result = BUILD_ARG.sub(value, text)
    unused = sorted(set(given) - set(used))
    if unused:
        raise DefinitionError(f"build argument(s) not used by the definition: {', '.join(unused)}")
    return result, used


def parse_files(body: str) -> list[tuple[str, str]]:
    """``%files`` lines: SOURCE [DESTINATION] (no destination: the same path in the image)."""
    files = []
    for line in Section("files", body=body).lines():
        words = line.split()
        if any(char in line for char in "\"'*?[") or len(words) > 2:
            raise DefinitionError(f"%files: '{line}': quoted, globbed or extra words are not supported")
        files.append((words[0], words[1] if len(words) == 2 else words[0]))
    return files


def parse_labels(body: str) -> dict[str, str]:
    """``%labels`` lines: KEY VALUE (Apptainer's GetLabels)."""
    labels = {}
    for line in Section("labels", body=body).lines():
        key, _, value = line.partition(" ")
        labels[key.strip()] = value.strip()
    return labels


def parse(text: str, build_args: Mapping[str, str] | None = None) -> Definition:
    """The definition in ``text``, with ``build_args`` (name -> value) applied."""
    if len(re.findall(r"(?mi)^bootstrap:", text)) > 1:
        raise DefinitionError("multi-stage definitions are not supported")
    _, raw_sections = split_sections(text)
    defaults = argument_defaults("".join(body for name, _, body in raw_sections if name == "arguments"))
    text, used = apply_build_args(text, build_args or {}, defaults)

    header_text, parts = split_sections(text)
    header = parse_header(header_text)
    if "bootstrap" not in header:
        raise DefinitionError("no 'Bootstrap:' header")
    sections: dict[str, Section] = {}
    files_body = ""
    for name, args, body in parts:
        if name not in SECTIONS:
            raise DefinitionError(f"%{name}: not a section this parser knows (SCIF apps are not supported)")
        if name == "files":
            if args.split("#", 1)[0].strip():
                raise DefinitionError(f"%files {args}: copying from another stage is not supported")
            files_body += body
            continue
        previous = sections.get(name, Section(name))
        sections[name] = Section(name, args or previous.args, previous.body + body)
    return Definition(text=text, header=header, sections=sections, files=parse_files(files_body),
                      labels=parse_labels(sections.get("labels", Section("labels")).body), arguments=used)


def load(path: Path, build_args: Mapping[str, str] | None = None) -> Definition:
    """The definition file at ``path``, with ``build_args`` applied."""
    return parse(path.read_text(encoding="utf-8"), build_args)
