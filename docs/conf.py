"""Sphinx configuration: ``make docs`` builds docs/_build/html, warnings as errors."""

import subprocess
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive, directives

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lib"))

project = "icf-utils"
author = "icf-utils developers"
copyright = "icf-utils developers"
extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
nitpicky = False


def script_help(name):
    """``bin/NAME --help`` as the code prints it (88 columns): (text, None),
    or (None, its error output) if it fails."""
    result = subprocess.run([sys.executable, str(REPO / "bin" / name), "--help"],
                            capture_output=True, text=True, env={"COLUMNS": "88", "PATH": ""})
    return (result.stdout, None) if result.returncode == 0 else (None, result.stderr)


def usage_synopsis(name, help_text):
    """The usage lines at the top of a ``--help``, without ``usage: ``
    (argparse's continuation lines keep their alignment)."""
    prefix = "usage: "
    lines = help_text.split("\n\n", 1)[0].splitlines()
    if not lines or not lines[0].startswith(prefix + name):
        raise ValueError(f"bin/{name} --help does not start with '{prefix}{name}'")
    indent = " " * len(prefix)
    return "\n".join([lines[0][len(prefix):]]
                     + [line[len(indent):] if line.startswith(indent) else line for line in lines[1:]])


class ScriptHelp(Directive):
    """``.. script-help:: NAME``: the ``--help`` of ``bin/NAME``, as the code prints it.

    With ``:usage:``, only the usage synopsis (the command line), without
    ``usage:``; several names give one block of their synopses, one after
    another: ``.. script-help:: NAME1 NAME2 ...`` plus ``:usage:``.
    """

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"usage": directives.flag}

    def run(self):
        names = self.arguments[0].split()
        if len(names) > 1 and "usage" not in self.options:
            raise self.error("several scripts need :usage: (whole --help texts go one per directive)")
        env = self.state.document.settings.env
        texts = []
        for name in names:
            # reread this page when the script or the library its help comes from changes
            for source in [REPO / "bin" / name, *sorted((REPO / "lib" / "icf").glob("*.py"))]:
                env.note_dependency(str(source))
            text, error = script_help(name)
            if text is None:
                raise self.error(f"bin/{name} --help failed: {error}")
            if "usage" in self.options:
                try:
                    text = usage_synopsis(name, text)
                except ValueError as exc:
                    raise self.error(str(exc)) from None
            texts.append(text.rstrip("\n"))
        text = "\n".join(texts) + "\n"
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("script-help", ScriptHelp)
