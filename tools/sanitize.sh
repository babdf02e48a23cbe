#!/usr/bin/env bash
# Build ce_kernels with AddressSanitizer and UndefinedBehaviorSanitizer and run
# a representative subset of the tests under it, once per instruction-set path
# this CPU has. Any sanitizer report, in the test process or in a subprocess
# it starts, makes the script exit non-zero.
#
# Usage: tools/sanitize.sh [extra pytest arguments...]
#
# The sanitized extension is built from a copy of the working tree in a
# scratch directory and installed there (pip --target), so nothing in the
# source tree changes: a later normal test run cannot pick up the sanitized
# module. Set CE_KERNELS_SANITIZE_DIR to keep the scratch directory (and its
# build) in a known place; by default it is a fresh temporary directory that
# is removed at the end.
#
# Needs a C compiler with the ASan and UBSan runtimes (GCC: libasan, libubsan)
# and the test dependencies (pytest, hypothesis, numpy; ml_dtypes and scipy
# optional) in the running Python. The build itself uses Cython, setuptools
# and NumPy from the running Python when they are installed, else pip fetches
# them into an isolated build environment.
set -euo pipefail

PYTHON=${PYTHON:-python}
SRC=$(cd "$(dirname "$0")/.." && pwd)
START=$SECONDS

if [[ -n "${CE_KERNELS_SANITIZE_DIR:-}" ]]; then
    WORK=$CE_KERNELS_SANITIZE_DIR
    rm -rf "$WORK/src" "$WORK/site" "$WORK"/test-*.log
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ce_kernels_sanitize.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK/src" "$WORK/site"

# ---- copy the tree: tracked and new files, no build products -----------------
if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$SRC" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$SRC" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) |
        (cd "$SRC" && tar --null -T - -cf -) | (cd "$WORK/src" && tar -xf -)
else
    (cd "$SRC" && tar --exclude=./build --exclude='*.so' --exclude=./.ci-venv \
        --exclude=./.git --exclude='__pycache__' -cf - .) | (cd "$WORK/src" && tar -xf -)
fi
rm -f "$WORK"/src/ce_kernels/*.so "$WORK/src/ce_kernels/_core.c"

# ---- build and install the sanitized extension into $WORK/site ---------------
echo "sanitize: building in $WORK" >&2
if "$PYTHON" -c "import Cython, setuptools, numpy" 2>/dev/null; then
    ISOLATION=--no-build-isolation
else
    ISOLATION=
fi
CE_KERNELS_SANITIZE=1 "$PYTHON" -m pip install --quiet --no-deps --no-compile $ISOLATION \
    --target "$WORK/site" "$WORK/src" >"$WORK/build.log" 2>&1 || {
    cat "$WORK/build.log" >&2
    echo "sanitize: build failed" >&2
    exit 1
}
SO=$(ls "$WORK"/site/ce_kernels/_core*.so)
BUILT=$SECONDS

# The extension must really be instrumented: it names both runtimes.
ASAN_LIB=$(ldd "$SO" | awk '/libasan\.so/ {print $3; exit}')
UBSAN_LIB=$(ldd "$SO" | awk '/libubsan\.so/ {print $3; exit}')
if [[ -z "$ASAN_LIB" || -z "$UBSAN_LIB" ]]; then
    echo "sanitize: $SO is not linked against libasan and libubsan" >&2
    ldd "$SO" >&2
    exit 1
fi

# ---- how CPython runs an ASan-instrumented extension -------------------------
# The interpreter is not instrumented, so the ASan runtime must be the first
# library loaded (LD_PRELOAD) for it to intercept malloc from the start; the
# UBSan runtime is preloaded with it. CPython and NumPy keep memory alive
# until exit on purpose, so leak detection is off. PYTHONMALLOC=malloc sends
# Python's own small objects through the intercepted malloc as well. Both
# sanitizers stop the process at their first report with a status of their
# own (86: ASan, 87: UBSan).
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87"
export PYTHONMALLOC=malloc
export PYTHONPATH="$WORK/site"
export PYTHONDONTWRITEBYTECODE=1
# Unbuffered, so that the name of the test a sanitizer stops (-v prints it
# before the test runs) is in the log.
export PYTHONUNBUFFERED=1

# ---- the subset ----------------------------------------------------------------
# On every instruction-set path (each has its own vector code): memory
# layouts (unaligned, strided, byte-swapped, out=), numerics at the edges,
# the normalizers, and the property tests with the short "sanitize" profile
# (every function, option, dtype, layout and special value, on that path).
# Once, on the best path: every option of the loss, the distribution family
# and sigmoids (double-precision libm code, the same on every path), bad
# input, threads and concurrent calls.
# Left out: the 2^31-element test (allocates 8 GB, which ASan's shadow memory
# would double), the exhaustive sweep of every float32 through the
# exponential (minutes under ASan; the sampled and special-value exponential
# tests stay), PyTorch (not built with ASan; its parity is tested by the
# normal run), the command line and the evaluation script (Python around
# the same kernels).
PER_PATH_TESTS=(
    tests/test_layouts.py
    tests/test_numerics.py
    tests/test_softmax.py
    tests/test_properties.py
)
ONCE_TESTS=(
    tests/test_reliability.py
    tests/test_edges.py
    tests/test_cross_entropy.py
    tests/test_family.py
    tests/test_errors.py
    tests/test_threads.py
    tests/test_concurrency.py
)
EXCLUDE="not more_than_2_to_31 and not every_float32 and not torch and not pytorch"

ISAS=$(cd "$WORK" && "$PYTHON" -c '
import ce_kernels as ck
order = ["sse2", "avx2", "avx512"]
best = ck.build_info()["best_isa"]
print(" ".join(order[: order.index(best) + 1] if best in order else [best]))')
BEST=${ISAS##* }
echo "sanitize: instruction-set paths: $ISAS" >&2
# The short Hypothesis profile (tests/conftest.py), when Hypothesis is
# installed (without it the property tests are skipped).
PROFILE=()
if "$PYTHON" -c "import hypothesis" 2>/dev/null; then
    PROFILE=(--hypothesis-profile=sanitize)
fi

status=0
for isa in $ISAS; do
    # Tests parametrized by the "isa" fixture run only on this path; the
    # others (and the subprocesses they start) run on it through the variable.
    select="$EXCLUDE"
    for other in $ISAS; do
        [[ "$other" == "$isa" ]] || select="$select and not $other"
    done
    echo "sanitize: CE_KERNELS_ISA=$isa" >&2
    t0=$SECONDS
    # Run from $WORK so that the copied source package (without its
    # extension) is not on sys.path ahead of the installed one. Output is
    # captured at the Python level only (--capture=sys): a sanitizer writes
    # its report to file descriptor 2 and then ends the process, which would
    # lose a report held in pytest's descriptor-level capture.
    set +o errexit
    tests=("${PER_PATH_TESTS[@]}")
    [[ "$isa" != "$BEST" ]] || tests+=("${ONCE_TESTS[@]}")
    (cd "$WORK" && CE_KERNELS_ISA=$isa "$PYTHON" -m pytest -v -p no:cacheprovider --capture=sys \
        "${PROFILE[@]}" -k "$select" "${tests[@]/#/src/}" "$@") 2>&1 | tee "$WORK/test-$isa.log"
    status=${PIPESTATUS[0]}
    set -o errexit
    # A report in a subprocess whose failure a test tolerated, too.
    if grep -qE "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" \
            "$WORK/test-$isa.log"; then
        echo "sanitize: sanitizer report on the $isa path (above)" >&2
        [[ $status -ne 0 ]] || status=1
    fi
    echo "sanitize: $isa took $((SECONDS - t0)) s (exit status $status)" >&2
    [[ $status -eq 0 ]] || break
done

echo "sanitize: build $((BUILT - START)) s, tests $((SECONDS - BUILT)) s, total $((SECONDS - START)) s; exit status $status" >&2
exit $status
