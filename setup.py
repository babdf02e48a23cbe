"""Build description of the compiled extension (metadata lives in pyproject.toml).

OpenMP is probed by compiling and linking a small program with the compiler
the build will use. Without it the extension is built single-threaded and
the build says so. Set CE_KERNELS_NO_OPENMP=1 to build without OpenMP on
purpose, and CE_KERNELS_DEBUG=1 for Cython bounds checks and -O0 -g.
CE_KERNELS_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer
(see tools/sanitize.sh for how to load such a build into CPython).
"""
import glob
import os
import shutil
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("CE_KERNELS_DEBUG", "") not in ("", "0")
NO_OPENMP = os.environ.get("CE_KERNELS_NO_OPENMP", "") not in ("", "0")
SANITIZE = os.environ.get("CE_KERNELS_SANITIZE", "") not in ("", "0")

# Portable optimisation only: no tuning for the build machine's CPU (the
# wheel must run on any x86-64; the instruction set is chosen at run time)
# and no fast-math (NaN and inf keep their meaning). Errno and FP traps are
# not used.
OPT_FLAGS = ["-O0", "-g"] if DEBUG else ["-O3"]
COMMON_FLAGS = ["-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"]

# Memory errors (ASan) and undefined behaviour such as misaligned or
# out-of-bounds accesses and signed overflow (UBSan), each fatal at its first
# report so that a test run cannot pass over one. -O1 keeps the run fast
# enough for a test suite while leaving the frames readable. The same flags
# go to the linker so that the extension records its sanitizer runtimes.
SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
]
if SANITIZE:
    OPT_FLAGS = ["-O1"]

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)

# (compile flags, link flags) to try, most common first.
OPENMP_CANDIDATES = [
    (["-fopenmp"], ["-fopenmp"]),                 # GCC, clang with libgomp/libomp
    (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),  # Apple clang with Homebrew libomp
]


def probe_openmp(compiler):
    """Return (compile, link) flags that build an OpenMP program, or None."""
    tmp = tempfile.mkdtemp(prefix="ce_kernels_omp_")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for cflags, lflags in OPENMP_CANDIDATES:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=lflags)
                return cflags, lflags
            except Exception:  # any failure means "not this way"
                continue
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that adds OpenMP flags when the compiler supports them."""

    def build_extensions(self):
        found = None if NO_OPENMP else probe_openmp(self.compiler)
        if found is None:
            reason = "disabled by CE_KERNELS_NO_OPENMP" if NO_OPENMP else "not available"
            sys.stderr.write(
                f"WARNING: ce_kernels: OpenMP {reason}; building a single-threaded "
                "extension (ce_kernels.openmp_enabled() will return False).\n"
            )
        for ext in self.extensions:
            ext.extra_compile_args = OPT_FLAGS + COMMON_FLAGS + (found[0] if found else [])
            ext.extra_link_args = list(found[1]) if found else []
            if SANITIZE:
                ext.extra_compile_args += SANITIZE_FLAGS
                ext.extra_link_args += SANITIZE_FLAGS
        super().build_extensions()


# The public C headers, installed with the package (ce_kernels.get_include()).
INCLUDE_DIR = "ce_kernels/include"

extension = Extension(
    "ce_kernels._core",
    sources=[
        "ce_kernels/_core.pyx",
        "src/ce_kernels.c",
        "src/ce_leaves.c",
        "src/ce_floor.c",
        "src/ce_family.c",
        "src/ce_family_leaves.c",
        "src/ce_distill.c",
        "src/ce_distill_leaves.c",
    ],
    include_dirs=["src", INCLUDE_DIR, np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    # the kernels are templates in headers: a changed header rebuilds them
    depends=sorted(glob.glob("src/*.h") + glob.glob(INCLUDE_DIR + "/*.h")),
)

# Passes the kernels' function table on to other extensions (no kernels of
# its own: one copy of them, in _core).
capi_extension = Extension("ce_kernels.capi", sources=["ce_kernels/capi.pyx"],
                           include_dirs=[INCLUDE_DIR])

setup(
    ext_modules=cythonize(
        [extension, capi_extension],
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
