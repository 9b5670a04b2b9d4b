"""Sphinx configuration of the lsstlite documentation (built with warnings as errors)."""

from __future__ import annotations

import sys
from pathlib import Path

# Build from a source tree even when lsstlite is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lsstlite  # noqa: E402

project = "lsstlite"
author = "the lsstlite developers"
release = lsstlite.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
napoleon_google_docstring = False
napoleon_numpy_docstring = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Type hints that refer to third-party classes are not resolvable without intersphinx
# (which needs the network); they are shown as text.
nitpicky = False
html_theme = "alabaster"
html_title = "lsstlite"
suppress_warnings = ["myst.header"]
