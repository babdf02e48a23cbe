"""Sphinx configuration of the ce_kernels reference.

Build it (from the repository root, with ce_kernels installed, e.g.
``pip install ".[docs]"``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The reference is generated from the installed package's numpydoc
docstrings, so ce_kernels must be importable with its compiled extension.
The page of ``ce_kernels.torch`` needs PyTorch; without it, torch is
replaced by a stand-in and that page only shows signatures and docstrings.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

import ce_kernels  # noqa: E402  (the installed package, with its extension)

print(f"documenting ce_kernels {ce_kernels.__version__} from "
      f"{os.path.dirname(os.path.abspath(ce_kernels.__file__))}")

project = "ce_kernels"
author = "the ce_kernels developers"
copyright = "2026, the ce_kernels developers"
release = ce_kernels.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "numpydoc",
    "ce_docs",
]

try:
    import torch  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["torch"]

exclude_patterns = ["_build", "worked_examples.md"]
root_doc = "index"
# Every cross-reference must resolve, except to other projects' objects
# (no inventories of NumPy or PyTorch are fetched).
nitpicky = True
# Objects of NumPy, PyTorch and ml_dtypes (no inventories are fetched), and
# PyTorch's Tensor as the adapter's annotations name it.
nitpick_ignore_regex = [(r"py:.*", r"(numpy|np|torch|ml_dtypes)(\..*)?|Tensor")]

# Signatures as written; type hints shown in the signature only.
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}

# numpydoc: no autosummary tables of class members (TokenStats documents its
# fields itself).
numpydoc_show_class_members = False

html_theme = "alabaster"
html_title = f"ce_kernels {release}"
html_static_path = []
