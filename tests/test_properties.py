"""Property-based tests of every public function.

Hypothesis draws shapes (empty and one-element axes, vocabularies from 1 to
70,000 with few rows when large), dtypes (float32, float64, float16 and
bfloat16 when ml_dtypes is installed), memory layouts (strided, negative
strides, Fortran and other axis orders, unaligned, non-native byte order,
read-only), special values (NaN, +-inf, +-1e38, subnormals, rows of -inf),
every option, and ``out=`` aliasing. Each call must either

* return what the float64 reference in ``reference.py`` returns, within the
  documented tolerance (NaN and +-inf in the same places), in the documented
  dtype and shape, or
* raise the TypeError, ValueError or IndexError the documentation promises
  for that input, with a message naming the argument;

and must never write to an input (checked byte for byte over each input's
whole buffer, gaps of strided views included) nor outside ``out``'s elements.

Every array is built from a recipe of drawn parameters (a NumPy seed for the
values, a layout), so a failing example prints everything needed to
rebuild it. The instruction-set path is drawn too: every path this CPU has,
or only the one forced by ``CE_KERNELS_ISA``.

The number of examples comes from the Hypothesis profile (``conftest.py``):
``pytest --hypothesis-profile=long`` runs twenty times as many.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a test dependency; without it this module is skipped
from hypothesis import given, strategies as st  # noqa: E402

import ce_kernels as ck
import reference as ref
from conftest import tolerance

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 arrays need ml_dtypes, an optional dependency
    BFLOAT16 = None

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
LOGIT_DTYPES = [F32, F64, F16] + ([BFLOAT16] if BFLOAT16 is not None else [])
HALF_DTYPES = [F16] + ([BFLOAT16] if BFLOAT16 is not None else [])
INT_DTYPES = [np.dtype(t) for t in (np.int64, np.int32, np.int16, np.int8,
                                    np.uint8, np.uint16, np.uint32, np.uint64)]


def _isa_paths():
    """The paths to draw from: the one CE_KERNELS_ISA forced at import, or
    every path this CPU has (each has its own vector width and exponential)."""
    if os.environ.get("CE_KERNELS_ISA"):
        return [ck.build_info()["isa"]]
    order = ["sse2", "avx2", "avx512"]
    best = ck.build_info()["best_isa"]
    return order[: order.index(best) + 1] if best in order else [best]


ISA_PATHS = _isa_paths()
THREADS = [None, 1, 2, 3]


def is_half(dtype):
    return np.dtype(dtype) in HALF_DTYPES


def native(dtype):
    dtype = np.dtype(dtype)
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def compute_dtype(dtype):
    """The precision the kernels compute in: float32 for half precision."""
    return F64 if native(dtype) == F64 else F32


def unit_roundoff(dtype):
    """Half the distance from 1 to the next number of the dtype."""
    return {F16: 2.0 ** -11, F32: 2.0 ** -24, F64: 2.0 ** -53}.get(native(dtype), 2.0 ** -8)


def smallest_subnormal(dtype):
    return {F16: 2.0 ** -24, F32: 2.0 ** -149, F64: 5e-324}.get(native(dtype), 2.0 ** -133)


def largest(dtype):
    return {F16: 65504.0, F64: 1.7976931348623157e308}.get(native(dtype), 3.3895313892515355e38)


def smallest_normal(dtype):
    return {F16: 2.0 ** -14, F64: 2.2250738585072014e-308}.get(native(dtype), 2.0 ** -126)


# ---- arrays in any layout ---------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How an array sits in memory.

    order: the axes from outermost to innermost in memory (None: C order);
    steps: the step taken along each axis of a larger array (negative:
    reversed), None for all 1; misalign: bytes past an address aligned to
    64 (odd: unaligned for every dtype wider than a byte); swapped: stored
    in non-native byte order; readonly: not writeable.
    """
    order: Optional[tuple] = None
    steps: Optional[tuple] = None
    misalign: int = 0
    swapped: bool = False
    readonly: bool = False


C_LAYOUT = Layout()


def fit_layout(layout, ndim):
    """``layout`` for an array of ``ndim`` dimensions (axis order and steps
    dropped when drawn for another number of dimensions)."""
    order = layout.order if layout.order is not None and len(layout.order) == ndim else None
    steps = layout.steps if layout.steps is not None and len(layout.steps) == ndim else None
    return Layout(order, steps, layout.misalign, layout.swapped, layout.readonly)


@st.composite
def layouts(draw, ndim, allow_swap=True, allow_readonly=True, allow_misalign=True):
    """A layout for an array of ``ndim`` dimensions; plain C order most often
    (each choice shrinks towards it)."""
    order = None
    kind = draw(st.integers(0, 9))
    if ndim >= 2 and kind >= 6:
        if kind <= 7:
            order = tuple(reversed(range(ndim)))  # Fortran order
        else:
            order = tuple(draw(st.permutations(range(ndim))))
    steps = None
    if ndim and draw(st.integers(0, 3)) == 3:
        steps = tuple(draw(st.sampled_from([1, 1, 2, -1, -2, 3])) for _ in range(ndim))
    misalign = draw(st.sampled_from([0, 0, 0, 1, 3, 4, 2])) if allow_misalign else 0
    swapped = allow_swap and draw(st.integers(0, 7)) == 7
    readonly = allow_readonly and draw(st.integers(0, 7)) == 7
    return Layout(order, steps, misalign, swapped, readonly)


@dataclass
class Placed:
    """An array built in a buffer of its own, and that buffer as it was."""
    array: np.ndarray
    buffer: np.ndarray
    before: np.ndarray

    def unchanged(self):
        return np.array_equal(self.buffer, self.before)


GAP_BYTE = 0x7F  # gaps read as 3.39e38 (float32) or NaN (float16): a read of them shows


def place(values, dtype, layout=C_LAYOUT):
    """``values`` (any shape) stored as ``dtype`` in a fresh byte buffer laid
    out as ``layout``; the elements not in the view hold GAP_BYTE."""
    values = np.asarray(values)
    dtype = np.dtype(dtype)
    if layout.swapped and dtype.itemsize > 1:
        dtype = dtype.newbyteorder("S")
    shape = values.shape
    ndim = len(shape)
    order = layout.order if layout.order is not None else tuple(range(ndim))
    steps = layout.steps if layout.steps is not None else (1,) * ndim
    extent = [max(1, n * abs(s)) for n, s in zip(shape, steps)]
    strides = [0] * ndim
    size = dtype.itemsize
    for ax in reversed(order):
        strides[ax] = size
        size *= extent[ax]
    buffer = np.full(size + 128, GAP_BYTE, dtype=np.uint8)
    start = (-buffer.ctypes.data) % 64 + layout.misalign
    base = np.ndarray(tuple(extent), dtype=dtype, buffer=buffer, offset=start, strides=tuple(strides))
    index = tuple(slice(0, 0) if n == 0 else slice(None, None, s) for n, s in zip(shape, steps))
    array = base[index] if index else base[...]
    assert array.shape == shape
    array[...] = values
    if layout.readonly:
        array.flags.writeable = False
    return Placed(array, buffer, buffer.copy())


def same_elements(array):
    """The elements of ``array`` as float64 (bfloat16 and byte order handled)."""
    return np.asarray(array).astype(np.float64)


def outside_unchanged(placed, out):
    """True if nothing of ``placed``'s buffer but ``out``'s elements changed."""
    now = placed.buffer.copy()
    offset = out.ctypes.data - placed.buffer.ctypes.data
    view = np.ndarray(out.shape, dtype=out.dtype, buffer=now, offset=offset, strides=out.strides)
    view[...] = np.ndarray(out.shape, dtype=out.dtype, buffer=placed.before, offset=offset,
                           strides=out.strides)
    return np.array_equal(now, placed.before)


# ---- values ------------------------------------------------------------------

SPECIALS = ("nan", "+inf", "-inf", "+huge", "-huge", "subnormal", "zero")


@st.composite
def value_recipes(draw):
    """How to fill a float array: a seed, a scale and offset, and special
    values (the simplest recipe, shrunk to, has none)."""
    specials = ()
    if draw(st.integers(0, 2)) == 2:
        specials = tuple(draw(st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=3, unique=True)))
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        scale=draw(st.sampled_from([1.0, 4.0, 0.01, 30.0, 1000.0])),
        offset=draw(st.sampled_from([0.0, 0.0, 0.0, 1e4, -1e4, 1e30])),
        specials=specials,
        neginf_rows=draw(st.integers(0, 7)) == 7,
    )


def make_values(recipe, shape, dtype, axis=-1):
    """Float64 values, exactly representable in ``dtype``, from a recipe; the
    all--inf rows run along ``axis``."""
    rng = np.random.default_rng(recipe["seed"])
    offset = recipe["offset"] if abs(recipe["offset"]) < largest(dtype) / 4 else 0.0
    x = rng.standard_normal(shape) * recipe["scale"] + offset
    size = x.size
    special_value = {
        "nan": np.nan, "+inf": np.inf, "-inf": -np.inf, "zero": 0.0,
        "+huge": 1e38 if largest(dtype) > 1e38 else largest(dtype) / 2,
        "-huge": -1e38 if largest(dtype) > 1e38 else -largest(dtype) / 2,
        "subnormal": smallest_normal(dtype) / 3,
    }
    flat = x.reshape(-1)
    for kind in recipe["specials"]:
        if size:
            count = int(rng.integers(1, 4))
            flat[rng.integers(0, size, count)] = special_value[kind]
    if recipe["neginf_rows"] and size and x.ndim:
        moved = np.moveaxis(x, axis, -1)
        rows = moved.reshape(-1, moved.shape[-1])
        pick = rng.random(rows.shape[0]) < 0.5
        pick[rng.integers(0, rows.shape[0])] = True
        rows[pick] = -np.inf
        x = np.moveaxis(rows.reshape(moved.shape), -1, axis)
    return np.asarray(x, dtype=np.float64).astype(native(dtype)).astype(np.float64)


# ---- comparisons ---------------------------------------------------------------

def assert_close(got, expected, rtol, atol, what, out_dtype=None):
    """``got`` equals ``expected`` within ``rtol * |expected| + atol`` (atol
    may be an array), with NaN and +-inf in the same places. A reference
    value beyond the range of ``out_dtype`` is expected as +-inf."""
    got = same_elements(got)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}"
    if out_dtype is not None:
        # Rounded to the result's dtype, a value past its largest finite
        # number (by half a unit in the last place) becomes +-inf.
        with np.errstate(over="ignore", invalid="ignore"):
            rounded = expected.astype(out_dtype).astype(np.float64)
        expected = np.where(np.isfinite(expected) & np.isinf(rounded), rounded, expected)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), expected.shape)
    got_nan, exp_nan = np.isnan(got), np.isnan(expected)
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(got) & np.isfinite(expected)
        bad = (got_nan != exp_nan) | (~finite & ~got_nan & ~exp_nan & (got != expected))
        bad |= finite & ~(np.abs(got - expected) <= rtol * np.abs(expected) + atol)
    if bad.any():
        where = np.argwhere(bad) if bad.ndim else [()]
        first = tuple(int(i) for i in where[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values differ; first at {first}: "
            f"got {got[first]!r}, expected {expected[first]!r} "
            f"(rtol {rtol:.3g}, atol {float(atol[first]):.3g})"
        )


class Outcome:
    """What a call must do: succeed (``must``/``may`` empty), raise one of
    ``must`` (each with the argument names its message may give), or either
    succeed or raise one of ``may``."""

    def __init__(self):
        self.must = []   # (exception type, names)
        self.may = []

    def require(self, exc_type, *names):
        self.must.append((exc_type, names))

    def allow(self, exc_type, *names):
        self.may.append((exc_type, names))

    def run(self, call):
        """Run ``call``; return its result, or None after checking an expected error."""
        try:
            result = call()
        except (TypeError, ValueError, IndexError) as exc:
            choices = self.must + self.may
            assert choices, f"unexpected {type(exc).__name__}: {exc}"
            # The right type, with a message naming the argument concerned.
            assert any(isinstance(exc, t) and any(n in str(exc) for n in names) for t, names in choices), (
                f"raised {type(exc).__name__}: {exc}; expected one of "
                f"{[(t.__name__, names) for t, names in choices]}")
            return None
        assert not self.must, (
            f"returned instead of raising {[t.__name__ for t, _ in self.must]} "
            f"({[n for _, n in self.must]})")
        return result


def with_isa(isa, call):
    """Run ``call`` on one instruction-set path, then go back to the previous one."""
    previous = ck.build_info()["isa"]
    ck.set_isa(isa)
    try:
        return call()
    finally:
        ck.set_isa(previous)


# ---- shapes --------------------------------------------------------------------

# The kernels split a row into chunks of 2048 elements and vectors of 4, 8
# or 16 floats: sizes around those boundaries are drawn on purpose.
BOUNDARY_SIZES = [2047, 2048, 2049, 4095, 4096, 4097, 6143, 6145]
MAX_ELEMENTS = 150_000


@st.composite
def vocab_sizes(draw):
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        return draw(st.integers(1, 40))
    if kind <= 7:
        return draw(st.integers(41, 1000))
    if kind == 8:
        return draw(st.sampled_from(BOUNDARY_SIZES))
    return draw(st.integers(1001, 70_000))


@st.composite
def batch_shapes(draw, n_classes, max_ndim=3):
    """Leading axes for rows of ``n_classes``: zero to three axes, some of
    length 0 or 1, at most MAX_ELEMENTS elements in all."""
    ndim = draw(st.integers(0, max_ndim))
    budget = max(1, MAX_ELEMENTS // max(n_classes, 1))
    shape = []
    for _ in range(ndim):
        n = draw(st.sampled_from([2, 1, 3, 0, 5, 8, 17, 64]))
        if math.prod(shape) * n > budget:
            n = 1
        shape.append(n)
    return tuple(shape)


def dtype_named(name):
    return BFLOAT16 if name == "bfloat16" else np.dtype(name)


logit_dtype_names = st.sampled_from([d.name for d in LOGIT_DTYPES])


# ---- the softmax loss: recipes -----------------------------------------------------

# How the gradient's out= is given: not at all, a separate array (any layout),
# the logits themselves or another view of exactly their memory (in place),
# a view of the logits' buffer shifted by one element, rows that overlap each
# other (row stride 0), the odd elements of a buffer whose even elements are
# the logits, the logits while they are also the soft target, memory shared
# with the class weights; and, without out, soft targets that are the logits.
OUT_MODES = ("none", "fresh", "in_place", "same_memory", "partial_overlap", "rows_overlap",
             "interleaved", "soft_alias", "weight_overlap", "soft_is_logits")


@st.composite
def hard_target_recipes(draw):
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        dtype=draw(st.sampled_from([d.name for d in INT_DTYPES])),
        ignore_index=draw(st.sampled_from([None, -100, -1, 0, "last", 2**40])),
        ignored=draw(st.sampled_from([0.0, 0.3, 1.0])),
        bad=draw(st.integers(0, 19)) == 19,
    )


@st.composite
def soft_target_recipes(draw):
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)),
        dtype=draw(st.sampled_from(["float64", "float32", "float16"] + (["bfloat16"] if BFLOAT16 else []))),
        zeros=draw(st.sampled_from([0.0, 0.5, 0.9])),
        normalized=draw(st.booleans()),
    )


@st.composite
def grad_output_recipes(draw, reduction, batch_ndim):
    kind = draw(st.sampled_from(["none", "float", "array"]))
    if kind == "none":
        return None
    if kind == "float" or reduction != "none":
        return dict(kind=kind, value=draw(st.sampled_from([1.0, 0.5, -2.0, 0.0, 1e-3, 1e6])),
                    shape=draw(st.sampled_from([(), (1,)])))
    # For "none": a shape that broadcasts to the batch shape.
    dims = draw(st.lists(st.booleans(), min_size=batch_ndim, max_size=batch_ndim))
    return dict(kind="array", seed=draw(st.integers(0, 2**32 - 1)), keep=tuple(dims),
                drop_leading=draw(st.integers(0, batch_ndim)),
                specials=draw(st.integers(0, 9)) == 9)


@st.composite
def loss_recipes(draw, fn):
    n_classes = draw(st.integers(0, 0)) if draw(st.integers(0, 49)) == 49 else draw(vocab_sizes())
    batch = draw(batch_shapes(max(n_classes, 1)))
    ndim = len(batch) + 1
    soft = fn != "token_stats" and draw(st.integers(0, 3)) == 3
    plain = draw(st.integers(0, 4)) == 0  # the options of the small-call fast path
    recipe = dict(
        fn=fn, shape=batch + (n_classes,), dtype=draw(logit_dtype_names),
        values=draw(value_recipes()), layout=draw(layouts(ndim)),
        isa=draw(st.sampled_from(ISA_PATHS)), num_threads=draw(st.sampled_from(THREADS)),
        soft=soft, target=draw(soft_target_recipes() if soft else hard_target_recipes()),
        target_layout=draw(layouts(ndim if soft else ndim - 1)),
    )
    if fn == "token_stats":
        recipe["soft_target_for_stats"] = draw(st.integers(0, 29)) == 29
        return recipe
    reduction = "mean" if plain else draw(st.sampled_from(["mean", "sum", "none"]))
    recipe.update(
        reduction=reduction,
        label_smoothing=0.0 if plain else draw(st.sampled_from([0.0, 0.1, 1.0, 0.5])),
        z_loss=0.0 if plain else draw(st.sampled_from([0.0, 1e-4, 0.5])),
        softcap=None if plain else draw(st.sampled_from([None, None, 30.0, 1.0, 1e4, 1e-40, 5e-324])),
        weight=None if plain or draw(st.booleans()) else dict(
            seed=draw(st.integers(0, 2**32 - 1)),
            dtype=draw(st.sampled_from(["float64", "float32", "float16", "int64"]
                                       + (["bfloat16"] if BFLOAT16 else []))),
            zeros=draw(st.sampled_from([0.0, 0.2, 1.0])),
            layout=draw(layouts(1))),
    )
    if fn == "cross_entropy_with_grad":
        recipe["grad_output"] = draw(grad_output_recipes(reduction, len(batch)))
        recipe["grad_output_layout"] = draw(layouts(len(batch)))
        recipe["out"] = draw(st.sampled_from(OUT_MODES))
        recipe["out_layout"] = draw(layouts(ndim, allow_swap=False, allow_readonly=False))
    return recipe


# ---- the softmax loss: building a case from its recipe -------------------------------

@dataclass
class Case:
    """Everything one call needs and what it must give; ``repr`` is the recipe."""
    recipe: dict
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)     # Placed inputs that must stay unchanged
    outcome: Outcome = field(default_factory=Outcome)
    extra: dict = field(default_factory=dict)

    def __repr__(self):
        return f"recipe={self.recipe!r}"


def representable(value, dtype):
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def build_hard_target(recipe, batch, n_classes, case):
    r = recipe["target"]
    rng = np.random.default_rng(r["seed"])
    dtype = np.dtype(r["dtype"])
    if not representable(max(n_classes - 1, 0), dtype):
        dtype = np.dtype(np.int64)
    ignore_index = {None: -100, "last": n_classes - 1}.get(r["ignore_index"], r["ignore_index"])
    t = rng.integers(0, max(n_classes, 1), batch)
    if representable(ignore_index, dtype):
        t[rng.random(batch) < r["ignored"]] = ignore_index
    t = t.astype(dtype)
    if r["bad"] and t.size:
        candidates = [n_classes, -1, n_classes + 1000] + ([2**64 - 1] if dtype == np.uint64 else [])
        value = next((c for c in candidates if c != ignore_index and representable(c, dtype)), None)
        if value is not None:
            t.reshape(-1)[rng.integers(0, t.size)] = value
    as_float = t.astype(np.float64)
    if ((t != ignore_index) & ((as_float < 0) | (as_float >= n_classes))).any():
        case.outcome.require(IndexError, "target")
    placed = place(t, dtype, fit_layout(recipe["target_layout"], len(batch)))
    case.inputs.append(placed)
    if r["ignore_index"] is not None:
        case.kwargs["ignore_index"] = ignore_index
    # (Only an out-of-range uint64 value wraps here, and then no result is compared.)
    return placed.array, t.astype(np.int64), ignore_index


def build_soft_target(recipe, shape, logit_dtype, case):
    r = recipe["target"]
    rng = np.random.default_rng(r["seed"])
    q = rng.random(shape)
    q[rng.random(shape) < r["zeros"]] = 0.0
    if r["normalized"] and q.size:
        sums = q.sum(axis=-1, keepdims=True)
        q = np.where(sums > 0, q / np.where(sums > 0, sums, 1.0), q)
    dtype = dtype_named(r["dtype"])
    q = q.astype(dtype)
    placed = place(q, dtype, recipe["target_layout"])
    case.inputs.append(placed)
    # The kernels read the targets in their compute dtype (float32 for half
    # precision logits: never rounded to half precision).
    return placed.array, q.astype(compute_dtype(logit_dtype)).astype(np.float64)


def build_weight(recipe, n_classes, logit_dtype, case):
    r = recipe["weight"]
    if r is None:
        return None, None
    rng = np.random.default_rng(r["seed"])
    dtype = dtype_named(r["dtype"])
    w = rng.integers(0, 4, n_classes).astype(np.float64) if dtype.kind == "i" else rng.random(n_classes) * 2
    w[rng.random(n_classes) < r["zeros"]] = 0.0
    w = w.astype(dtype)
    placed = place(w, dtype, r["layout"])
    case.inputs.append(placed)
    # weights too are used in the compute dtype
    return placed.array, w.astype(compute_dtype(logit_dtype)).astype(np.float64)


def build_grad_output(recipe, batch, case):
    r = recipe["grad_output"]
    if r is None:
        return None, None
    layout = recipe["grad_output_layout"]
    if r["kind"] == "float":
        return r["value"], np.float64(r["value"])
    if "value" in r:
        g = np.full(r["shape"], r["value"])
    else:
        shape = tuple(n if keep else 1 for n, keep in zip(batch, r["keep"]))[r["drop_leading"]:]
        rng = np.random.default_rng(r["seed"])
        g = rng.standard_normal(shape)
        if r["specials"] and g.size:
            g.reshape(-1)[rng.integers(0, g.size, 2)] = rng.choice([np.nan, np.inf, 0.0], 2)
    placed = place(g, np.float64, fit_layout(layout, g.ndim))
    case.inputs.append(placed)
    return placed.array, g


def build_loss_case(recipe):
    """The call, its inputs and what it must give, from a recipe of
    :func:`loss_recipes`."""
    case = Case(recipe)
    fn = recipe["fn"]
    shape = tuple(recipe["shape"])
    batch, n_classes = shape[:-1], shape[-1]
    dtype = dtype_named(recipe["dtype"])
    x64 = make_values(recipe["values"], shape, dtype)
    out_mode = recipe.get("out", "none")
    if out_mode in ("soft_alias", "soft_is_logits") and not recipe["soft"]:
        out_mode = "in_place" if out_mode == "soft_alias" else "none"
    if out_mode == "weight_overlap" and (recipe["weight"] is None or math.prod(batch) == 0):
        out_mode = "fresh"

    # The logits, and out where its memory is tied to them.
    out = None
    native_dtype = native(dtype)
    if out_mode == "partial_overlap":
        shared = place(np.zeros(math.prod(shape) + 1), native_dtype)
        logits = shared.array[:-1].reshape(shape)
        logits[...] = x64
        out = shared.array[1:].reshape(shape)
        logits_placed = Placed(logits, shared.buffer, shared.buffer.copy())
    elif out_mode == "interleaved":
        shared = place(np.zeros(batch + (2 * n_classes,)), native_dtype)
        logits, out = shared.array[..., ::2], shared.array[..., 1::2]
        logits[...] = x64
        logits_placed = Placed(logits, shared.buffer, shared.buffer.copy())
    else:
        logits_placed = place(x64, dtype, recipe["layout"])
        logits = logits_placed.array
    case.extra.update(x64=x64, dtype=dtype, logits_placed=logits_placed, out_mode=out_mode)
    if n_classes == 0:
        case.outcome.require(ValueError, "logits", "class")

    if recipe["soft"]:
        target, target_used = build_soft_target(recipe, shape, dtype, case)
        ignore_index = -100
        if out_mode in ("soft_alias", "soft_is_logits"):
            target, target_used = logits, x64
            if out_mode == "soft_is_logits" and not np.isfinite(x64).all():
                # Infinite "probabilities" have no meaning to compare.
                target, target_used = build_soft_target(recipe, shape, dtype, case)
                out_mode = case.extra["out_mode"] = "none"
    else:
        target, target_used, ignore_index = build_hard_target(recipe, batch, n_classes, case)
    case.extra.update(target_used=target_used, ignore_index=ignore_index)

    if fn == "token_stats":
        if recipe["soft_target_for_stats"]:
            soft = place(np.zeros(shape), np.float64)
            target = soft.array
            case.outcome.require(TypeError, "target")
        case.args = (logits, target)
        if recipe["num_threads"] is not None:
            case.kwargs["num_threads"] = recipe["num_threads"]
        case.inputs.append(logits_placed)
        return case

    weight, weight_used = build_weight(recipe, n_classes, dtype, case)
    options = dict(reduction=recipe["reduction"], label_smoothing=recipe["label_smoothing"],
                   z_loss=recipe["z_loss"], softcap=recipe["softcap"])
    if recipe["softcap"] is not None and recipe["softcap"] < smallest_normal(compute_dtype(dtype)):
        # A cap below the smallest normal number: refusing it is as good as
        # computing it right.
        case.outcome.allow(ValueError, "softcap")
    case.kwargs.update(options)
    if weight is not None:
        case.kwargs["weight"] = weight
    if recipe["num_threads"] is not None:
        case.kwargs["num_threads"] = recipe["num_threads"]
    case.extra.update(weight_used=weight_used, options=options)

    if fn == "cross_entropy_with_grad":
        grad_output, grad_output_used = build_grad_output(recipe, batch, case)
        if grad_output is not None:
            case.kwargs["grad_output"] = grad_output
        case.extra["grad_output_used"] = grad_output_used
        writable_native = logits.flags.writeable and logits.dtype.isnative
        if out_mode == "fresh":
            case.extra["out_placed"] = place(np.zeros(shape), native_dtype, recipe["out_layout"])
            out = case.extra["out_placed"].array
        elif out_mode in ("in_place", "soft_alias"):
            out = logits
        elif out_mode == "same_memory":
            out = logits.view()
        elif out_mode == "rows_overlap":
            row = place(np.zeros(n_classes), native_dtype).array
            out = np.lib.stride_tricks.as_strided(row, shape, (0,) * len(batch) + row.strides)
            if math.prod(batch) >= 2 and n_classes >= 1:
                case.outcome.require(ValueError, "out")
        elif out_mode == "weight_overlap":
            out = np.zeros(shape, dtype=native_dtype)
            weight_view = out.reshape(-1)[:n_classes]
            weight_view[...] = weight_used
            case.kwargs["weight"] = weight_view
            case.inputs = [p for p in case.inputs if p.array is not weight]
            case.extra["weight_used"] = weight_view.astype(np.float64)
            case.outcome.require(ValueError, "out")
        if out_mode in ("in_place", "same_memory", "soft_alias"):
            if not writable_native:
                case.outcome.require(ValueError, "out")
            if out_mode == "soft_alias" and logits.size:
                case.outcome.require(ValueError, "out")
            elif out_mode == "soft_alias":
                # out is the soft targets, but holds nothing to overwrite
                case.outcome.allow(ValueError, "out")
        if out_mode == "partial_overlap" and np.shares_memory(out, logits):
            case.outcome.require(ValueError, "out")
        if out_mode == "interleaved" and logits.size:
            case.outcome.allow(ValueError, "out")
        if out is not None:
            case.kwargs["out"] = out
        if out_mode not in ("in_place", "same_memory", "soft_alias", "partial_overlap", "interleaved"):
            case.inputs.append(logits_placed)
    else:
        case.inputs.append(logits_placed)
    case.args = (logits, target)
    return case


# ---- the softmax loss: checking a result ---------------------------------------------

def call_case(case, fn):
    """Run the case's call on its instruction-set path; its result, or None
    after the expected error (then nothing may have been written)."""
    result = with_isa(case.recipe["isa"], lambda: case.outcome.run(lambda: fn(*case.args, **case.kwargs)))
    if result is None:
        for placed in case.inputs + [case.extra["logits_placed"]]:
            assert placed.unchanged(), "an input was written before the error"
    else:
        for placed in case.inputs:
            assert placed.unchanged(), "an input was written"
    return result


def finite_or_zero(a):
    return np.where(np.isfinite(a), a, 0.0)


def loss_scales(case):
    """Per position: (rtol, the absolute error the tolerance allows, counted,
    mean denominator). The absolute part grows with the total target weight
    sum_j |w_j q_j| the loss sums over, with the z-loss term's derivative,
    and, with softcap, with the rounding of the capped logits."""
    e = case.extra
    o = e["options"]
    x64 = e["x64"]
    n_classes = x64.shape[-1]
    cd = compute_dtype(e["dtype"])
    tol = tolerance(cd)
    w = np.ones(n_classes) if e["weight_used"] is None else e["weight_used"]
    q, counted = ref._target_distribution(e["target_used"], n_classes, o["label_smoothing"],
                                          e["ignore_index"])
    with np.errstate(all="ignore"):
        y = ref.softcapped(x64, o["softcap"])
        coef = np.abs(w * q).sum(axis=-1)
        lse = finite_or_zero(ref.logsumexp(y))
        cap_error = 0.0
        if o["softcap"] is not None and y.size:
            cap_error = 4 * np.finfo(cd).eps * float(np.max(np.abs(finite_or_zero(y))))
        row = (tol["atol"] + cap_error) * (1.0 + coef + 2.0 * o["z_loss"] * np.abs(lse))
        denominator = ref._mean_denominator(e["target_used"], w, counted)
    return tol["rtol"], np.where(counted, row, 0.0), counted, denominator


def expected_loss(case):
    e = case.extra
    with np.errstate(all="ignore"):
        return ref.cross_entropy_full(e["x64"], e["target_used"], weight=e["weight_used"],
                                 ignore_index=e["ignore_index"], **e["options"])


def check_loss(case, loss):
    e = case.extra
    reduction = e["options"]["reduction"]
    batch = e["x64"].shape[:-1]
    result_dtype = F32 if is_half(e["dtype"]) else native(e["dtype"])
    rtol, row_atol, _, denominator = loss_scales(case)
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == batch, (type(loss), np.shape(loss))
        atol = row_atol
    else:
        assert isinstance(loss, np.generic) and np.ndim(loss) == 0, type(loss)
        with np.errstate(all="ignore"):
            atol = row_atol.sum() / (abs(denominator) if reduction == "mean" else 1.0)
        atol = atol if np.isfinite(atol) else 0.0
    assert loss.dtype == result_dtype, loss.dtype
    expected = expected_loss(case)
    # label_smoothing=1 with the target's logit at -inf: PyTorch computes
    # (1 - eps) * nll + eps * smooth = 0 * inf + inf = NaN; the loss itself
    # is inf. Either is accepted.
    either = pytorch_nan_positions(case)
    if reduction == "none":
        expected = np.where(either & np.isnan(same_elements(loss)), np.nan, expected)
    elif either.any() and np.isnan(loss):
        expected = np.nan
    assert_close(loss, expected, rtol, atol, "loss", out_dtype=result_dtype)


def pytorch_nan_positions(case):
    """Positions whose loss PyTorch gives as NaN where the reference has inf."""
    e = case.extra
    t = e["target_used"]
    x64 = e["x64"]
    if t.dtype.kind == "f" or e["options"]["label_smoothing"] != 1.0 or not x64.shape[-1]:
        return np.zeros(x64.shape[:-1], dtype=bool)
    counted = t != e["ignore_index"]
    y = ref.softcapped(x64, e["options"]["softcap"])
    target_logit = np.take_along_axis(y, np.where(counted, t, 0)[..., None], axis=-1)[..., 0]
    return counted & (target_logit == -np.inf)


def check_grad(case, grad):
    e = case.extra
    o = e["options"]
    x64 = e["x64"]
    dtype = native(e["dtype"])
    assert isinstance(grad, np.ndarray) and grad.shape == x64.shape and grad.dtype == dtype
    if "out" in case.kwargs:
        assert grad is case.kwargs["out"], "the gradient is not the array given as out"
    with np.errstate(all="ignore"):
        expected = ref.cross_entropy_grad_full(
            x64, e["target_used"], weight=e["weight_used"], ignore_index=e["ignore_index"],
            grad_output=e["grad_output_used"], **o)
        multiplier = ref.row_multiplier(e["target_used"], x64.shape[-1], e["weight_used"],
                                        e["ignore_index"], o["reduction"], e["grad_output_used"])
        rtol, row_atol, _, _ = loss_scales(case)
        atol = finite_or_zero(2.0 * np.abs(multiplier) * row_atol)
    rtol = 10 * rtol
    if is_half(dtype):  # the gradient is rounded once to half precision
        rtol += unit_roundoff(dtype)
        atol = atol + smallest_subnormal(dtype)
    _, _, counted, denominator = loss_scales(case)
    if o["reduction"] == "mean" and denominator == 0:
        # A mean over a total weight of 0: PyTorch's gradient is NaN; with
        # z_loss, +-inf (a nonzero derivative over 0) is as right. Finite is not.
        rows = np.broadcast_to(counted[..., None], grad.shape)
        assert not np.isfinite(same_elements(grad)[rows]).any(), "finite gradient of a mean over weight 0"
        expected = np.where(rows, same_elements(grad), expected)
    assert_close(grad, expected, rtol, atol[..., None], "grad", out_dtype=dtype)


def check_written_memory(case, grad):
    """The gradient went only into out's elements (the logits' in place)."""
    e = case.extra
    mode = e["out_mode"]
    if mode == "fresh":
        assert outside_unchanged(e["out_placed"], grad), "written outside out"
    elif mode in ("in_place", "same_memory", "partial_overlap", "interleaved", "soft_alias"):
        assert outside_unchanged(e["logits_placed"], grad), "written outside out"
    elif mode == "weight_overlap":
        pass  # must have raised
    if mode not in ("in_place", "same_memory", "partial_overlap", "interleaved", "soft_alias"):
        assert e["logits_placed"].unchanged(), "logits written"


def check_cross_entropy(recipe):
    case = build_loss_case(recipe)
    loss = call_case(case, ck.cross_entropy)
    if loss is not None:
        check_loss(case, loss)


def check_cross_entropy_with_grad(recipe):
    case = build_loss_case(recipe)
    result = call_case(case, ck.cross_entropy_with_grad)
    if result is not None:
        loss, grad = result
        check_loss(case, loss)
        check_grad(case, grad)
        check_written_memory(case, grad)


def check_token_stats(recipe):
    case = build_loss_case(recipe)
    stats = call_case(case, ck.token_stats)
    if stats is None:
        return
    e = case.extra
    x64, t, ignore_index = e["x64"], e["target_used"], e["ignore_index"]
    batch = x64.shape[:-1]
    result_dtype = F32 if is_half(e["dtype"]) else native(e["dtype"])
    counted = t != ignore_index
    with np.errstate(all="ignore"):
        logp = ref.log_softmax_shifted(x64)
        nll = -np.take_along_axis(logp, np.where(counted, t, 0)[..., None], axis=-1)[..., 0]
        nll = np.where(counted, nll, np.nan)
        entropy = ref.predictive_entropy(x64)
    predicted = np.argmax(x64, axis=-1)
    tol = tolerance(compute_dtype(e["dtype"]))
    for name, got, kind in (("nll", stats.nll, result_dtype), ("predicted", stats.predicted, np.int64),
                            ("correct", stats.correct, np.bool_), ("entropy", stats.entropy, result_dtype)):
        assert isinstance(got, np.ndarray) and got.shape == batch and got.dtype == kind, (name, got)
    assert_close(stats.nll, nll, tol["rtol"], tol["atol"], "nll", out_dtype=result_dtype)
    np.testing.assert_array_equal(stats.predicted, predicted, err_msg="predicted (argmax, as NumPy)")
    np.testing.assert_array_equal(stats.correct, (predicted == t) & counted, err_msg="correct")
    assert_close(stats.entropy, entropy, tol["rtol"], tol["atol"] * (1 + finite_or_zero(np.abs(entropy))),
                 "entropy", out_dtype=result_dtype)


@given(recipe=loss_recipes("cross_entropy"))
def test_cross_entropy(recipe):
    check_cross_entropy(recipe)


@given(recipe=loss_recipes("cross_entropy_with_grad"))
def test_cross_entropy_with_grad(recipe):
    check_cross_entropy_with_grad(recipe)


@given(recipe=loss_recipes("token_stats"))
def test_token_stats(recipe):
    check_token_stats(recipe)


# ---- softmax, log_softmax, logsumexp ---------------------------------------------------

@st.composite
def shapes_with_axis(draw, allow_scalar=False):
    """(shape, axis): a reduced axis of any length (0 included) among up to
    three others, at most MAX_ELEMENTS elements."""
    if allow_scalar and draw(st.integers(0, 29)) == 29:
        return (), 0
    n = draw(vocab_sizes()) if draw(st.integers(0, 19)) else 0
    others = draw(batch_shapes(max(n, 1)))
    axis = draw(st.integers(0, len(others)))
    shape = others[:axis] + (n,) + others[axis:]
    return shape, axis - len(shape) if draw(st.booleans()) else axis


NORMALIZER_OUT_MODES = ("none", "fresh", "in_place", "same_memory", "partial_overlap",
                        "rows_overlap", "interleaved")


@st.composite
def normalizer_recipes(draw, fn):
    shape, axis = draw(shapes_with_axis(allow_scalar=True))
    recipe = dict(fn=fn, shape=shape, axis=axis, dtype=draw(logit_dtype_names),
                  values=draw(value_recipes()), layout=draw(layouts(len(shape))),
                  isa=draw(st.sampled_from(ISA_PATHS)), threads=draw(st.sampled_from(THREADS)))
    if fn != "logsumexp":
        recipe["out"] = draw(st.sampled_from(NORMALIZER_OUT_MODES))
        recipe["out_layout"] = draw(layouts(len(shape), allow_swap=False, allow_readonly=False))
    return recipe


def with_threads(n, call):
    """Run ``call`` with ``set_num_threads(n)`` (these functions take no
    num_threads argument), then go back to the default."""
    ck.set_num_threads(n)
    try:
        return call()
    finally:
        ck.set_num_threads(None)


def build_shared_out(recipe, x64, dtype, mode, case):
    """x and an out tied to its memory, for the overlap modes; None otherwise."""
    shape = x64.shape
    if mode == "partial_overlap":
        shared = place(np.zeros(math.prod(shape) + 1), dtype)
        x = shared.array[:-1].reshape(shape)
        x[...] = x64
        out = shared.array[1:].reshape(shape)
        if np.shares_memory(x, out):
            case.outcome.require(ValueError, "out")
    elif mode == "interleaved":
        if not shape:
            return None
        shared = place(np.zeros(shape[:-1] + (2 * shape[-1],)), dtype)
        x, out = shared.array[..., ::2], shared.array[..., 1::2]
        x[...] = x64
        if x.size:
            case.outcome.allow(ValueError, "out")
    else:
        return None
    return x, out, Placed(x, shared.buffer, shared.buffer.copy())


def build_elementwise_out(recipe, x, x_placed, x64, dtype, case, reduced_axis=None):
    """out= for softmax, log_softmax, sigmoid and log_sigmoid, from the recipe's mode."""
    mode = recipe.get("out", "none")
    shape = x64.shape
    writable_native = x.flags.writeable and x.dtype.isnative
    out = None
    if mode == "fresh":
        case.extra["out_placed"] = place(np.zeros(shape), dtype, recipe["out_layout"])
        out = case.extra["out_placed"].array
    elif mode in ("in_place", "same_memory"):
        out = x if mode == "in_place" else x.view()
        if not writable_native:
            case.outcome.require(ValueError, "out")
    elif mode == "rows_overlap" and shape:
        # Every position along the other axes writes the same memory.
        line = place(np.zeros(shape[reduced_axis] if reduced_axis is not None else 1), dtype).array
        strides = [0] * len(shape)
        if reduced_axis is not None:
            strides[reduced_axis] = line.strides[0]
        out = np.lib.stride_tricks.as_strided(line, shape, tuple(strides))
        distinct = shape[reduced_axis] if reduced_axis is not None else 1
        if math.prod(shape) > distinct:
            case.outcome.require(ValueError, "out")
    return out


def build_normalizer_case(recipe):
    case = Case(recipe)
    shape, axis = tuple(recipe["shape"]), recipe["axis"]
    dtype = dtype_named(recipe["dtype"])
    ndim = len(shape)
    if ndim == 0:
        x64 = make_values(recipe["values"], shape, dtype)
        case.outcome.require(ValueError, "x", "dimension")
    else:
        x64 = make_values(recipe["values"], shape, dtype, axis=axis)
    mode = recipe.get("out", "none")
    shared = build_shared_out(recipe, x64, native(dtype), mode, case) if ndim else None
    if shared is not None:
        x, out, x_placed = shared
    else:
        x_placed = place(x64, dtype, recipe["layout"])
        x = x_placed.array
        out = build_elementwise_out(recipe, x, x_placed, x64, native(dtype), case,
                                    reduced_axis=axis % ndim if ndim else None)
        if mode not in ("in_place", "same_memory"):
            case.inputs.append(x_placed)
    case.extra.update(x64=x64, dtype=dtype, logits_placed=x_placed,
                      out_mode=mode if shared is not None or out is not None else "none")
    case.args = (x,)
    case.kwargs = dict(axis=axis)
    if out is not None:
        case.kwargs["out"] = out
    return case


def run_normalizer(case, fn):
    return with_threads(case.recipe["threads"], lambda: call_case(case, fn))


def check_normalizer(recipe):
    fn = recipe["fn"]
    case = build_normalizer_case(recipe)
    result = run_normalizer(case, getattr(ck, fn))
    if result is None:
        return
    e = case.extra
    x64, dtype, axis = e["x64"], native(e["dtype"]), recipe["axis"]
    tol = tolerance(compute_dtype(dtype))
    with np.errstate(all="ignore"):
        if fn == "logsumexp":
            expected = ref.logsumexp(x64, axis=axis) if x64.shape[axis] else \
                np.full(np.delete(x64.shape, axis % x64.ndim), -np.inf)
        elif fn == "softmax":
            expected = ref.softmax_shifted(x64, axis=axis)
        else:
            # SciPy's semantics: NaN at +inf and -inf elsewhere in a row holding +inf
            expected = ref.log_softmax_scipy(x64, axis=axis)
    if fn == "logsumexp":
        result_dtype = F32 if is_half(dtype) else dtype
        if expected.ndim == 0:
            assert isinstance(result, np.generic), type(result)
        assert result.dtype == result_dtype and np.shape(result) == expected.shape
        assert_close(result, expected, tol["rtol"], tol["atol"], "logsumexp", out_dtype=result_dtype)
        return
    assert isinstance(result, np.ndarray) and result.dtype == dtype and result.shape == x64.shape
    if "out" in case.kwargs:
        assert result is case.kwargs["out"], "the result is not the array given as out"
    rtol, atol = tol["rtol"], tol["atol"]
    if is_half(dtype):  # rounded once to half precision
        rtol, atol = rtol + unit_roundoff(dtype), atol + smallest_subnormal(dtype)
    assert_close(result, expected, rtol, atol, fn, out_dtype=dtype)
    check_written_memory(case, result)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
@given(data=st.data())
def test_normalizers(fn, data):
    check_normalizer(data.draw(normalizer_recipes(fn), label="recipe"))


# ---- entropy, cross_entropy_probs, kl_divergence ---------------------------------------

FAMILY_DTYPES = ["float64", "float32", "float16"]  # float16: computed in float32


def family_result_dtype(dtypes):
    """The dtype of a distribution function's result: float32 for half
    precision, the operands' own dtype when they share one, else the
    promotion of their compute types."""
    if len(set(dtypes)) == 1:
        return F32 if is_half(dtypes[0]) else dtypes[0]
    return np.result_type(*[F32 if is_half(d) else d for d in dtypes])
FLAWS = ("negative", "sum", "nan", "inf")


@st.composite
def distribution_recipes(draw, fn):
    shape, axis = draw(shapes_with_axis(allow_scalar=True))
    operands = ("p",) if fn == "entropy" else ("p", "q")
    recipe = dict(fn=fn, shape=shape, axis=axis, isa=draw(st.sampled_from(ISA_PATHS)),
                  num_threads=draw(st.sampled_from(THREADS)),
                  base=draw(st.sampled_from([None, None, 2, 10, 0.5, math.e, 1, 0, -2.0])),
                  validate=draw(st.booleans()))
    for name in operands:
        recipe[name] = dict(
            seed=draw(st.integers(0, 2**32 - 1)),
            dtype=draw(st.sampled_from(FAMILY_DTYPES)) if draw(st.integers(0, 9)) == 9
            else draw(st.sampled_from(FAMILY_DTYPES[:2])),
            zeros=draw(st.sampled_from([0.0, 0.3, 0.9])),
            # Rows that are not distributions: only checked with validate=True
            # (without it the formulas are undefined for them).
            flaw=draw(st.sampled_from(FLAWS)) if recipe["validate"] and draw(st.integers(0, 4)) == 4 else None,
            unnormalized=not recipe["validate"] and draw(st.booleans()),
            layout=draw(layouts(len(shape))))
    return recipe


def make_distribution(r, shape, axis):
    """Rows along ``axis`` that are distributions in the operand's dtype
    (or non-negative, unnormalized), with zeros, and flawed rows."""
    rng = np.random.default_rng(r["seed"])
    if not shape:
        return np.asarray(rng.random()), False
    moved = rng.random(np.moveaxis(np.empty(shape), axis, -1).shape)
    moved[rng.random(moved.shape) < r["zeros"]] = 0.0
    if moved.size:
        moved[..., 0] += 0.1  # every row keeps some mass
        if not r["unnormalized"]:
            moved /= moved.sum(axis=-1, keepdims=True)
    flawed = False
    if r["flaw"] and moved.size:
        rows = moved.reshape(-1, moved.shape[-1])
        i = int(rng.integers(0, rows.shape[0]))
        j = int(rng.integers(0, rows.shape[1]))
        rows[i] *= {"sum": 1.5}.get(r["flaw"], 1.0)
        if r["flaw"] != "sum":
            rows[i, j] = {"negative": -0.25, "nan": np.nan, "inf": np.inf}[r["flaw"]]
        flawed = True
    return np.moveaxis(moved, -1, axis), flawed


def build_distribution_case(recipe):
    case = Case(recipe)
    shape, axis = tuple(recipe["shape"]), recipe["axis"]
    operands = [n for n in ("p", "q") if n in recipe]
    values = {}
    if not shape:
        case.outcome.require(ValueError, "dimension", "p", "q")
    for name in operands:
        r = recipe[name]
        dtype = np.dtype(r["dtype"])
        v, flawed = make_distribution(r, shape, axis)
        v = v.astype(dtype)
        if flawed:
            case.outcome.require(ValueError, name)
        if recipe["validate"] and shape and shape[axis] == 0 and \
                math.prod(np.delete(shape, axis % len(shape))) > 0:
            # Rows with no entries sum to 0: not distributions.
            case.outcome.require(ValueError, name)
        placed = place(v, dtype, r["layout"])
        case.inputs.append(placed)
        case.args += (placed.array,)
        values[name] = v.astype(np.float64)
    base = recipe["base"]
    if base is not None and not (base > 0 and base != 1):
        case.outcome.require(ValueError, "base")
    case.kwargs = dict(base=base, axis=axis, validate=recipe["validate"])
    if recipe["num_threads"] is not None:
        case.kwargs["num_threads"] = recipe["num_threads"]
    case.extra.update(values=values, dtypes=[np.dtype(recipe[n]["dtype"]) for n in operands])
    return case


def check_distribution(recipe):
    fn = recipe["fn"]
    case = build_distribution_case(recipe)
    result = with_isa(recipe["isa"], lambda: case.outcome.run(lambda: getattr(ck, fn)(*case.args, **case.kwargs)))
    for placed in case.inputs:
        assert placed.unchanged(), "an input was written"
    if result is None:
        return
    values, axis, base = case.extra["values"], recipe["axis"], recipe["base"]
    result_dtype = family_result_dtype(case.extra["dtypes"])
    with np.errstate(all="ignore"):
        expected = getattr(ref, fn)(*values.values(), base=base, axis=axis)
        # Terms may cancel (KL): the tolerance scales with their absolute sum.
        p = values["p"]
        logs = np.log(p) if fn == "entropy" else np.log(values["q"])
        if fn == "kl_divergence":
            logs = np.log(p) - logs
        magnitude = np.where(p > 0, np.abs(p * logs), 0.0).sum(axis=axis) / abs(math.log(base or math.e))
    tol = tolerance(result_dtype)
    if np.ndim(expected) == 0:
        assert isinstance(result, np.generic), type(result)
    assert result.dtype == result_dtype and np.shape(result) == np.shape(expected)
    assert_close(result, expected, tol["rtol"], tol["atol"] * (1 + finite_or_zero(magnitude)), fn,
                 out_dtype=result_dtype)


@pytest.mark.parametrize("fn", ["entropy", "cross_entropy_probs", "kl_divergence"])
@given(data=st.data())
def test_distributions(fn, data):
    check_distribution(data.draw(distribution_recipes(fn), label="recipe"))


# ---- binary cross-entropy, sigmoid, log_sigmoid -------------------------------------------

@st.composite
def elementwise_shapes(draw):
    """Any shape of up to four axes (0-d, empty and one-element axes included)."""
    if draw(st.integers(0, 9)) == 9:
        return ()
    last = draw(vocab_sizes()) if draw(st.integers(0, 14)) else 0
    return draw(batch_shapes(max(last, 1))) + (last,)


@st.composite
def broadcast_operand_recipes(draw, shape, name):
    """A weight that broadcasts to ``shape``: absent, a scalar, one per last
    axis, or the full shape with some axes of length 1."""
    kind = draw(st.sampled_from(["none", "none", "scalar", "last", "full"]))
    if kind == "none":
        return None
    if kind == "scalar" or not shape:
        sub = ()
    elif kind == "last":
        sub = shape[-1:]
    else:
        sub = tuple(n if keep else 1 for n, keep in zip(shape, draw(
            st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))))
    return dict(shape=sub, seed=draw(st.integers(0, 2**32 - 1)),
                dtype=draw(st.sampled_from(["float64", "float32", "int64"])),
                layout=draw(layouts(len(sub))))


BCE_OUT_MODES = ("none", "fresh", "in_place", "same_memory", "partial_overlap", "rows_overlap",
                 "target_overlap")


@st.composite
def bce_recipes(draw, fn):
    shape = draw(elementwise_shapes())
    recipe = dict(fn=fn, shape=shape,
                  dtype=draw(st.sampled_from(FAMILY_DTYPES)) if draw(st.integers(0, 19)) == 19
                  else draw(st.sampled_from(FAMILY_DTYPES[:2])),
                  values=draw(value_recipes()), layout=draw(layouts(len(shape))),
                  target=dict(seed=draw(st.integers(0, 2**32 - 1)),
                              kind=draw(st.sampled_from(["soft", "binary", "bool", "int"])),
                              layout=draw(layouts(len(shape))),
                              wrong_shape=draw(st.integers(0, 29)) == 29),
                  reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                  weight=draw(broadcast_operand_recipes(shape, "weight")),
                  isa=draw(st.sampled_from(ISA_PATHS)), num_threads=draw(st.sampled_from(THREADS)))
    if fn == "binary_cross_entropy_probs":
        recipe["outside"] = draw(st.sampled_from([None, None, None, "above", "below", "nan"]))
    else:
        recipe["pos_weight"] = draw(broadcast_operand_recipes(shape, "pos_weight"))
    if fn == "binary_cross_entropy_with_grad":
        recipe["grad_output"] = draw(grad_output_recipes(recipe["reduction"], len(shape)))
        recipe["grad_output_layout"] = draw(layouts(len(shape)))
        recipe["out"] = draw(st.sampled_from(BCE_OUT_MODES))
        recipe["out_layout"] = draw(layouts(len(shape), allow_swap=False, allow_readonly=False))
    return recipe


def build_broadcast_operand(r, dtype, case):
    if r is None:
        return None, None
    rng = np.random.default_rng(r["seed"])
    w = rng.integers(0, 4, r["shape"]) if r["dtype"] == "int64" else rng.random(r["shape"]) * 3
    w = np.asarray(w).astype(r["dtype"])
    placed = place(w, w.dtype, r["layout"])
    case.inputs.append(placed)
    return placed.array, w.astype(dtype).astype(np.float64)


def build_bce_case(recipe):
    case = Case(recipe)
    fn = recipe["fn"]
    shape = tuple(recipe["shape"])
    dtype = np.dtype(recipe["dtype"])
    rng = np.random.default_rng(recipe["target"]["seed"])
    if fn == "binary_cross_entropy_probs":
        x64 = np.asarray(rng.random(shape))
        x64[rng.random(shape) < 0.1] = 0.0
        x64[rng.random(shape) > 0.9] = 1.0
        if recipe["outside"] and x64.size:
            x64.reshape(-1)[rng.integers(0, x64.size)] = {"above": 1.5, "below": -1e-3, "nan": np.nan}[recipe["outside"]]
            case.outcome.require(ValueError, "probs")
        x64 = x64.astype(dtype).astype(np.float64)
    else:
        x64 = make_values(recipe["values"], shape, dtype)
    mode = recipe.get("out", "none")
    shared = build_shared_out(recipe, x64, dtype, mode, case) if mode == "partial_overlap" else None
    if shared is not None:
        x, out, x_placed = shared
    else:
        x_placed = place(x64, dtype, recipe["layout"])
        x = x_placed.array
        out = None
    # Targets: probabilities, exact 0/1 as floats, bools or integers.
    kind = recipe["target"]["kind"]
    t = rng.random(shape) if kind == "soft" else (rng.random(shape) < 0.5).astype(np.float64)
    t_dtype = {"bool": np.dtype(bool), "int": np.dtype(np.int64)}.get(kind, dtype if dtype != F16 else F32)
    t_shape = shape
    if recipe["target"]["wrong_shape"]:
        t_shape = shape + (2,)
        t = np.broadcast_to(np.asarray(t)[..., None], t_shape)
        case.outcome.require(ValueError, "target")
    t = np.asarray(t).astype(t_dtype)
    t_placed = place(t, t_dtype, fit_layout(recipe["target"]["layout"], len(t_shape)))
    case.inputs.append(t_placed)
    target = t_placed.array
    t64 = t.astype(np.float64)
    compute = dtype if dtype != F16 else F32
    weight, w64 = build_broadcast_operand(recipe["weight"], compute, case)
    pos_weight, pw64 = build_broadcast_operand(recipe.get("pos_weight"), compute, case)
    case.kwargs = dict(reduction=recipe["reduction"])
    if weight is not None:
        case.kwargs["weight"] = weight
    if pos_weight is not None:
        case.kwargs["pos_weight"] = pos_weight
    if recipe["num_threads"] is not None:
        case.kwargs["num_threads"] = recipe["num_threads"]
    if fn == "binary_cross_entropy_with_grad":
        grad_output, g64 = build_grad_output(recipe, shape, case)
        if grad_output is not None:
            case.kwargs["grad_output"] = grad_output
        case.extra["grad_output_used"] = g64
        if mode == "target_overlap":
            # The target is read from memory the gradient is written to.
            out = np.zeros(shape, dtype=dtype)
            if out.size and not recipe["target"]["wrong_shape"]:
                out[...] = t64
                target = out
                case.inputs = [p for p in case.inputs if p is not t_placed]
                case.outcome.require(ValueError, "out")
        elif shared is None:
            out = build_elementwise_out(recipe, x, x_placed, x64, dtype, case)
        if out is not None:
            case.kwargs["out"] = out
    if mode not in ("in_place", "same_memory", "partial_overlap"):
        case.inputs.append(x_placed)
    case.args = (x, target)
    case.extra.update(x64=x64, t64=t64, w64=w64, pw64=pw64, dtype=dtype, logits_placed=x_placed,
                      out_mode=mode if out is not None else "none")
    return case


def check_bce(recipe):
    fn = recipe["fn"]
    case = build_bce_case(recipe)
    result = call_case(case, getattr(ck, fn))
    if result is None:
        return
    e = case.extra
    x64, t64, w64, pw64, dtype = e["x64"], e["t64"], e["w64"], e["pw64"], e["dtype"]
    reduction = recipe["reduction"]
    # half precision: losses computed and returned in float32, the gradient
    # rounded once to the input's dtype
    loss_dtype = F32 if is_half(dtype) else dtype
    tol = tolerance(loss_dtype)
    with np.errstate(all="ignore"):
        if fn == "binary_cross_entropy_probs":
            expected = ref.binary_cross_entropy_probs(x64, t64, w64, reduction="none")
            other = expected
        else:
            expected = ref.binary_cross_entropy(x64, t64, w64, pw64, reduction="none")
            other = ref.binary_cross_entropy_pytorch_formula(x64, t64, w64, pw64, reduction="none")
        # Where the two written forms disagree (infinite logits), either is right.
        expected = np.where(np.isinf(x64) & ~np.isclose(expected, other, equal_nan=True), np.nan, expected)
        terms = np.abs(finite_or_zero(expected))
    loss = result[0] if fn == "binary_cross_entropy_with_grad" else result
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == x64.shape and loss.dtype == loss_dtype
        undecided = np.isnan(expected) & np.isinf(x64)
        assert_close(np.where(undecided, np.nan, same_elements(loss)), expected, tol["rtol"],
                     tol["atol"] * (1 + terms), "loss", out_dtype=loss_dtype)
    else:
        assert isinstance(loss, np.generic) and loss.dtype == loss_dtype, type(loss)
        with np.errstate(all="ignore"):
            total = expected.sum()
            scale = terms.sum() + 1
            if reduction == "mean":
                total, scale = (total / x64.size, scale / x64.size) if x64.size else (np.nan, 0)
        if not (np.isnan(total) and np.isinf(x64).any()):
            assert_close(loss, total, tol["rtol"], tol["atol"] * scale, "loss", out_dtype=loss_dtype)
    if fn != "binary_cross_entropy_with_grad":
        return
    grad = result[1]
    assert isinstance(grad, np.ndarray) and grad.shape == x64.shape and grad.dtype == dtype
    if "out" in case.kwargs:
        assert grad is case.kwargs["out"], "the gradient is not the array given as out"
    with np.errstate(all="ignore"):
        g = e["grad_output_used"]
        if g is not None and reduction != "none":
            g = float(np.asarray(g).reshape(()))
        expected = np.empty(x64.shape)
        if x64.size:
            expected = ref.binary_cross_entropy_grad(x64, t64, w64, pw64, reduction=reduction,
                                                     grad_output=g)
        scale = np.abs(finite_or_zero(np.broadcast_to(
            (1.0 if g is None else np.asarray(g)) * (1.0 if w64 is None else w64)
            * (1.0 if pw64 is None else 1 + np.abs(pw64)), x64.shape)))
        if reduction == "mean" and x64.size:
            scale = scale / x64.size
    gtol = tolerance(dtype)   # rounded to the input's dtype
    assert_close(grad, expected, 10 * gtol["rtol"], gtol["atol"] * scale, "grad", out_dtype=dtype)
    check_written_memory(case, grad)


@pytest.mark.parametrize("fn", ["binary_cross_entropy", "binary_cross_entropy_with_grad",
                                "binary_cross_entropy_probs"])
@given(data=st.data())
def test_binary_cross_entropy(fn, data):
    check_bce(data.draw(bce_recipes(fn), label="recipe"))


@st.composite
def sigmoid_recipes(draw, fn):
    shape = draw(elementwise_shapes())
    return dict(fn=fn, shape=shape,
                dtype=draw(st.sampled_from(FAMILY_DTYPES)) if draw(st.integers(0, 19)) == 19
                else draw(st.sampled_from(FAMILY_DTYPES[:2])),
                values=draw(value_recipes()), layout=draw(layouts(len(shape))),
                isa=draw(st.sampled_from(ISA_PATHS)), threads=draw(st.sampled_from(THREADS)),
                out=draw(st.sampled_from(NORMALIZER_OUT_MODES)),
                out_layout=draw(layouts(len(shape), allow_swap=False, allow_readonly=False)))


def check_sigmoid(recipe):
    fn = recipe["fn"]
    case = Case(recipe)
    shape, dtype = tuple(recipe["shape"]), np.dtype(recipe["dtype"])
    x64 = make_values(recipe["values"], shape, dtype)
    mode = recipe["out"]
    shared = build_shared_out(recipe, x64, dtype, mode, case) if shape else None
    if shared is not None:
        x, out, x_placed = shared
    else:
        x_placed = place(x64, dtype, recipe["layout"])
        x = x_placed.array
        out = build_elementwise_out(recipe, x, x_placed, x64, dtype, case)
        if mode not in ("in_place", "same_memory"):
            case.inputs.append(x_placed)
    case.args = (x,)
    if out is not None:
        case.kwargs["out"] = out
    case.extra.update(logits_placed=x_placed, out_mode=mode if out is not None else "none")
    result = with_threads(recipe["threads"], lambda: call_case(case, getattr(ck, fn)))
    if result is None:
        return
    with np.errstate(all="ignore"):
        expected = getattr(ref, fn)(x64)
    if out is None and not shape:
        assert isinstance(result, np.generic), type(result)
    else:
        assert isinstance(result, np.ndarray)
        if out is not None:
            assert result is out, "the result is not the array given as out"
    assert result.dtype == dtype and np.shape(result) == shape
    tol = tolerance(dtype)
    assert_close(result, expected, tol["rtol"], tol["atol"], fn, out_dtype=dtype)
    if out is not None:
        check_written_memory(case, result)


@pytest.mark.parametrize("fn", ["sigmoid", "log_sigmoid"])
@given(data=st.data())
def test_sigmoids(fn, data):
    check_sigmoid(data.draw(sigmoid_recipes(fn), label="recipe"))
