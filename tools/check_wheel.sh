#!/usr/bin/env bash
# Check a built wheel the way a user gets it: installed from the file alone.
#
#   tools/check_wheel.sh wheelhouse/ce_kernels-*.whl
#
# Creates a fresh virtual environment in a temporary directory and, with a
# PATH that holds only that environment's scripts (no C compiler can be
# found; checked), installs the wheel with its test dependencies as binary
# wheels only. Then, from a directory outside the source tree and with a
# copy of the tests, it checks that ce_kernels is imported from the
# installed wheel with its bundled OpenMP runtime, and on every
# instruction-set path this CPU has (CE_KERNELS_ISA=sse2|avx2|avx512) runs a
# fast subset of the tests and `ce-kernels bench --quick`.
#
# PER_ISA_TESTS and ONCE_TESTS (test files) can be overridden; KEEP=1 keeps
# the temporary directory.
set -euo pipefail

if [[ $# -ne 1 || ! -f $1 ]]; then
    echo "usage: $0 WHEEL" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheel="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
PYTHON="${PYTHON:-python3}"
# Fast test files, run on every instruction-set path: the docstring
# examples, softmax, argument errors, the language-model options (half
# precision, z-loss, soft-capping, token_stats) and memory layouts.
PER_ISA_TESTS="${PER_ISA_TESTS:-test_doctests.py test_softmax.py test_errors.py test_lm.py test_layouts.py}"
# Run once, on the default path: the command line as a subprocess (bench,
# eval), threading (the bundled OpenMP runtime) and the loss family.
ONCE_TESTS="${ONCE_TESTS:-test_cli.py test_eval.py test_threads.py test_family.py}"

work="$(mktemp -d "${TMPDIR:-/tmp}/ce_kernels_wheel.XXXXXX")"
if [[ "${KEEP:-0}" == 0 ]]; then
    trap 'rm -rf "$work"' EXIT
fi
echo "check_wheel: $wheel"
echo "check_wheel: working in $work"

"$PYTHON" -m venv "$work/venv"
venv_bin="$work/venv/bin"
# Nothing but the fresh environment's scripts on PATH; no compiler variables.
run() {
    env -u CC -u CXX -u LDSHARED -u CFLAGS -u PYTHONPATH PATH="$venv_bin" "$@"
}

run python - <<'PY'
import shutil
import sys
found = [c for c in ("gcc", "cc", "clang", "g++", "c++", "x86_64-linux-gnu-gcc")
         if shutil.which(c)]
if found:
    sys.exit(f"check_wheel: a compiler is on PATH: {found}")
print("check_wheel: no C compiler on PATH")
PY

run python -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    "$wheel[test]"

# The tests, copied away from the source tree: nothing can import the
# checkout's ce_kernels/ directory.
mkdir "$work/tests"
cp "$root"/tests/*.py "$work/tests/"
cd "$work"

isas="$(run python - "$work" <<'PY'
import os
import sys

import numpy as np
import ce_kernels as ck

work = os.path.realpath(sys.argv[1])
path = os.path.realpath(ck.__file__)
site = os.path.realpath(os.path.join(work, "venv", "lib"))
if not path.startswith(site + os.sep):
    sys.exit(f"check_wheel: ce_kernels imported from {path}, not from the fresh environment")
print(f"check_wheel: ce_kernels {ck.__version__} from {path}", file=sys.stderr)
print(f"check_wheel: build_info {ck.build_info()}", file=sys.stderr)

# Run a multithreaded call, then look at which OpenMP runtime is mapped.
x = np.random.default_rng(0).standard_normal((64, 4096), dtype=np.float32)
ck.cross_entropy(x, np.zeros(64, dtype=np.int64), num_threads=2)
if ck.openmp_enabled():
    with open("/proc/self/maps") as maps:
        gomp = sorted({line.split()[-1] for line in maps if "libgomp" in line})
    if not gomp or not all("/ce_kernels.libs/" in p for p in gomp):
        sys.exit(f"check_wheel: OpenMP runtime not the bundled one: {gomp}")
    print(f"check_wheel: OpenMP runtime {gomp[0]}", file=sys.stderr)

order = ["sse2", "avx2", "avx512"]
best = ck.build_info()["best_isa"]
print(" ".join(order[: order.index(best) + 1] if best in order else [best]))
PY
)"
echo "check_wheel: instruction-set paths: $isas"

pytest_args=(-q -p no:cacheprovider --rootdir "$work")
status=0
for isa in $isas; do
    echo "check_wheel: === CE_KERNELS_ISA=$isa ==="
    run CE_KERNELS_ISA="$isa" python -c "
import sys, ce_kernels as ck
active = ck.build_info()['isa']
sys.exit(0 if active == '$isa' else f'CE_KERNELS_ISA=$isa but the active path is {active}')
"
    # Tests parametrized by the isa fixture run on this path only (the
    # others' ids are deselected); the rest run on the path set by the
    # environment variable.
    others=""
    for other in $isas; do
        [[ $other == "$isa" ]] && continue
        others="${others:+$others or }$other"
    done
    select=()
    [[ -n $others ]] && select=(-k "not ($others)")
    files=()
    for f in $PER_ISA_TESTS; do files+=("tests/$f"); done
    run CE_KERNELS_ISA="$isa" python -m pytest "${pytest_args[@]}" "${select[@]}" \
        "${files[@]}" || status=1
    run CE_KERNELS_ISA="$isa" ce-kernels bench --quick || status=1
done

echo "check_wheel: === default path, once ==="
files=()
for f in $ONCE_TESTS; do files+=("tests/$f"); done
run python -m pytest "${pytest_args[@]}" "${files[@]}" || status=1

if [[ $status -eq 0 ]]; then
    echo "check_wheel: OK"
else
    echo "check_wheel: FAILED" >&2
fi
exit $status
