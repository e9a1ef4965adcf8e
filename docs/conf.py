"""Sphinx configuration: ``make docs`` builds docs/_build/html, warnings as errors."""

import subprocess
import sys
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive

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


class ScriptHelp(Directive):
    """``.. script-help:: NAME``: the ``--help`` of ``bin/NAME``, as the code prints it."""

    required_arguments = 1

    def run(self):
        name = self.arguments[0]
        result = subprocess.run([sys.executable, str(REPO / "bin" / name), "--help"],
                                capture_output=True, text=True, env={"COLUMNS": "88", "PATH": ""})
        if result.returncode != 0:
            raise self.error(f"bin/{name} --help failed: {result.stderr}")
        block = nodes.literal_block(result.stdout, result.stdout)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("script-help", ScriptHelp)
