"""The examples in the docstrings of every public module run and give what
they show.

Modules are discovered from the installed package, so a new module's
examples are picked up without editing this file. The examples run on every
instruction-set path the CPU has. The collection itself is checked, so this
module cannot pass by finding nothing.
"""
import doctest
import importlib
import pkgutil

import pytest

import ce_kernels

pytestmark = pytest.mark.usefixtures("isa")

# Modules that are never imported for their docstrings: running the package
# as a program (__main__) exits.
NOT_IMPORTED = {"ce_kernels.__main__"}
# Modules whose import needs an optional dependency.
OPTIONAL = {"ce_kernels.torch": "torch", "ce_kernels._torch_linear": "torch",
            "ce_kernels.distributed": "torch"}

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

def _module_names():
    names = ["ce_kernels"]
    for info in pkgutil.iter_modules(ce_kernels.__path__, prefix="ce_kernels."):
        if info.name not in NOT_IMPORTED:
            names.append(info.name)
    return sorted(names)


def _collect():
    """(module name, DocTest) for every docstring with examples, and the
    modules left out because an optional dependency is missing."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    found, unavailable = [], []
    for name in _module_names():
        if name in OPTIONAL:
            try:
                importlib.import_module(OPTIONAL[name])
            except ImportError:
                unavailable.append(name)
                continue
        module = importlib.import_module(name)
        for test in finder.find(module, name):
            if test.examples:
                found.append((name, test))
    return found, unavailable


DOCTESTS, UNAVAILABLE = _collect()


def _runnable(test):
    return [ex for ex in test.examples if not ex.options.get(doctest.SKIP, False)]


def test_examples_were_found():
    modules = {name for name, _ in DOCTESTS}
    # The modules of the public functions must keep their examples.
    for name in ("ce_kernels", "ce_kernels._api", "ce_kernels._family"):
        assert name in modules, f"no docstring examples found in {name}"
    assert sum(len(_runnable(test)) for _, test in DOCTESTS) >= 10


@pytest.mark.parametrize("test", [pytest.param(test, id=test.name) for _, test in DOCTESTS])
def test_docstring_examples(test):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    # A fresh copy of the module's globals for every run (each ISA path).
    fresh = doctest.DocTest(test.examples, dict(test.globs), test.name, test.filename,
                            test.lineno, test.docstring)
    result = runner.run(fresh, out=report.append)
    assert result.failed == 0, f"{test.name} ({test.filename}):\n" + "".join(report)
    if not _runnable(test):
        pytest.skip(f"{test.name}: every example is marked +SKIP")
