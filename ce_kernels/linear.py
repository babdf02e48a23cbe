"""Cross-entropy of a linear output layer, without its (tokens x vocab) logits.

A language model's logits are ``hidden @ weight.T + bias``. These functions
compute the loss (and the gradients with respect to ``hidden``, ``weight``
and ``bias``) from the hidden states directly: the rows go in chunks, each
chunk's logits are computed into one reused buffer by NumPy's ``matmul``
(its BLAS, with the GIL released), the fused kernel turns that buffer in
place into the gradient of the loss with respect to those logits, and the
two backward products consume it before the next chunk. The buffer is the
only memory of size (rows x vocab); its size is set by ``chunk_rows``,
by default a fixed memory budget of 256 MB (never the thread count, so results do
not depend on it).
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple

import numpy as np

from . import _validation as v
from ._rows import Problem, Targets, TokenStats

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad", "linear_token_stats"]

#: Bytes of the logits buffer of one chunk of rows when ``chunk_rows`` is
#: not given. The products need a few hundred rows to run at full speed
#: (at V = 128256 float32 this gives 523 rows; 64 MB, 130 rows, made them
#: about half as fast per row).
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Bytes of the one temporary slab through which the weight gradient
#: accumulates.
SLAB_BYTES = 64 * 2**20


# ---- validation --------------------------------------------------------------------

class Layer:
    """The inputs of a linear layer, checked and in the form the products
    take: ``hidden`` as 2-D rows, ``weight`` (V, D) and ``bias`` (V,) or
    None, all of one dtype (float32 or float64)."""

    def __init__(self, hidden: Any, weight: Any, bias: Any, allow_half: bool = False):
        h = _float_input(hidden, "hidden", allow_half)
        self.dtype = v.native(h.dtype)
        w = _float_input(weight, "weight", allow_half)
        if w.ndim != 2:
            raise ValueError(f"weight must have shape (V, D) (one row per class), got {w.shape}")
        if w.shape[1] != h.shape[-1]:
            raise ValueError(f"weight has shape {w.shape}; its second axis must match the last "
                             f"axis of hidden {h.shape} (D = {h.shape[-1]})")
        if v.native(w.dtype) != self.dtype:
            raise TypeError(f"weight has dtype {w.dtype} but hidden has {h.dtype}; convert one "
                            f"of them (weight.astype(np.{self.dtype.name}))")
        if w.shape[0] == 0:
            raise ValueError("weight must have at least one row (one class), got shape "
                             f"{w.shape}")
        self.batch_shape = h.shape[:-1]
        self.hidden = v.rows_view(h)
        # One copy now rather than one per chunk inside matmul.
        self.weight = w if (w.flags.c_contiguous or w.flags.f_contiguous) and w.dtype.isnative \
            else v.kernel_contiguous(w)
        self.bias = None if bias is None else _bias(bias, w.shape[0], self.dtype)
        self.inputs = {"hidden": h, "weight": w, "bias": bias}

    @property
    def n_classes(self) -> int:
        return self.weight.shape[0]


def _float_input(value: Any, name: str, allow_half: bool) -> np.ndarray:
    arr = v.as_float_array(value, name, allow_half=True)
    if v.is_half(arr.dtype) and not allow_half:
        raise TypeError(f"{name} has dtype {arr.dtype}; the NumPy functions take float32 or "
                        f"float64 (half precision goes through ce_kernels.torch."
                        f"linear_cross_entropy, whose products use PyTorch's)")
    return arr


def _bias(bias: Any, n_classes: int, dtype: np.dtype) -> np.ndarray:
    b = bias if isinstance(bias, np.ndarray) and v.is_half(bias.dtype) else \
        v.as_array(bias, "bias", "fiu", "a real numeric array")
    if b.shape != (n_classes,):
        raise ValueError(f"bias must have shape ({n_classes},) (one per row of weight), "
                         f"got {b.shape}")
    return v.kernel_contiguous(b, dtype)


def layer_targets(problem: Problem, target: Any, layer: Layer) -> Targets:
    shape = np.shape(target)
    if shape not in (layer.batch_shape, layer.batch_shape + (layer.n_classes,)):
        raise ValueError(f"target has shape {shape}, expected {layer.batch_shape} "
                         f"(hidden.shape[:-1]) for class indices or "
                         f"{layer.batch_shape + (layer.n_classes,)} for probabilities")
    return problem.targets(target, layer.batch_shape)


def chunk_rows_for(chunk_rows: Any, n_classes: int, itemsize: int) -> int:
    """Rows per chunk: ``chunk_rows`` checked, or as many as fit the
    default budget (at least one)."""
    if chunk_rows is None:
        return max(1, DEFAULT_CHUNK_BYTES // (n_classes * itemsize))
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral):
        raise TypeError(f"chunk_rows must be a positive integer or None, got {chunk_rows!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return int(chunk_rows)


def layer_problem(layer: Layer, class_weight: Any, ignore_index: Any, reduction: Any,
             label_smoothing: Any, z_loss: Any, softcap: Any, num_threads: Any) -> Problem:
    return Problem(layer.dtype, layer.n_classes, weight=class_weight, ignore_index=ignore_index,
                   reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
                   softcap=softcap, num_threads=num_threads, weight_name="class_weight")


def _output(out: Any, shape: Tuple[int, ...], dtype: np.dtype, name: str,
            inputs: dict) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=dtype)
    arr = v.output_array(out, shape, dtype, name)
    v.check_no_overlap(arr, inputs, None, name)
    return arr


# ---- the products ------------------------------------------------------------------

class NumpyProducts:
    """The matrix products of the chunks with NumPy's ``matmul``, into
    buffers allocated once: the logits of a chunk (``rows`` x V), the
    hidden rows and their gradient of a compacted chunk, and a slab of the
    weight gradient (at most the default budget)."""

    def __init__(self, layer: Layer, rows: int):
        self.layer = layer
        n_classes, width = layer.weight.shape
        self.logits_buffer = np.empty((rows, n_classes), dtype=layer.dtype)
        self._hidden_buffer = None
        self._grad_buffer = None
        slab_rows = max(1, SLAB_BYTES // max(1, width * layer.dtype.itemsize))
        self._slab_rows = min(slab_rows, n_classes)
        self._slab = None

    def logits(self, h: np.ndarray) -> np.ndarray:
        """The logits of the rows ``h`` (a view of the buffer)."""
        out = self.logits_buffer[:h.shape[0]]
        np.matmul(h, self.layer.weight.T, out=out)
        if self.layer.bias is not None:
            np.add(out, self.layer.bias, out=out)
        return out

    @staticmethod
    def kernel_rows(logits: np.ndarray) -> np.ndarray:
        """The logits as the rows the kernels read and write."""
        return logits

    def gather(self, rows: np.ndarray, index: np.ndarray) -> np.ndarray:
        if self._hidden_buffer is None:
            self._hidden_buffer = np.empty((self.logits_buffer.shape[0], rows.shape[1]),
                                           dtype=rows.dtype)
        return np.take(rows, index, axis=0, out=self._hidden_buffer[:index.size])

    def grad_scratch(self, n: int) -> np.ndarray:
        if self._grad_buffer is None:
            self._grad_buffer = np.empty((self.logits_buffer.shape[0],
                                          self.layer.weight.shape[1]), dtype=self.layer.dtype)
        return self._grad_buffer[:n]

    @staticmethod
    def scatter(dest: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
        dest[index] = rows

    @staticmethod
    def zero(a: np.ndarray) -> None:
        a[...] = 0

    def grad_hidden(self, g: np.ndarray, out: np.ndarray) -> None:
        """``out = g @ weight``."""
        np.matmul(g, self.layer.weight, out=out)

    def grad_weight(self, g: np.ndarray, h: np.ndarray, d_weight: np.ndarray,
                    first: bool) -> None:
        """``d_weight = g.T @ h`` for the first chunk, else ``+=``, by slabs of
        classes through one temporary of bounded size."""
        if first:
            np.matmul(g.T, h, out=d_weight)
            return
        step = self._slab_rows
        if self._slab is None:
            self._slab = np.empty((step, d_weight.shape[1]), dtype=d_weight.dtype)
        for start in range(0, d_weight.shape[0], step):
            stop = min(start + step, d_weight.shape[0])
            slab = self._slab[:stop - start]
            np.matmul(g[:, start:stop].T, h, out=slab)
            np.add(d_weight[start:stop], slab, out=d_weight[start:stop])

    @staticmethod
    def grad_bias(g: np.ndarray, d_bias: np.ndarray) -> None:
        """``d_bias += g.sum(0)`` (``d_bias`` float64)."""
        d_bias += np.sum(g, axis=0, dtype=np.float64)


# ---- the chunk driver ----------------------------------------------------------------

class Grads:
    """Where the gradients go: ``hidden`` as 2-D rows, ``weight`` (V, D),
    ``bias`` a float64 accumulator of shape (V,) or None; the scalar and
    per-row multipliers of the gradient of the loss."""

    def __init__(self, hidden: Any, weight: Any, bias: Optional[np.ndarray], scale: float,
                 row_scale: Optional[np.ndarray]):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.scale, self.row_scale = scale, row_scale


def kept_rows(problem: Problem, targets: Targets, n_rows: int) -> Optional[np.ndarray]:
    """Indices of the rows that are not ignored, or None when no row is
    (then the chunks are plain slices, nothing is gathered)."""
    if targets.hard is None:
        return None
    counted = targets.hard != problem.ignore_index
    if counted.all():
        return None
    return np.flatnonzero(counted)


def run_chunks(products: Any, problem: Problem, targets: Targets, hidden: Any,
               chunk_rows: int, row_loss: np.ndarray, grads: Optional[Grads]) -> None:
    """The loss of every row into ``row_loss`` (float64, 0 for ignored rows)
    and, with ``grads``, the gradients, chunk by chunk. Ignored rows are
    left out of the products altogether: their loss and gradient are 0."""
    n_rows = hidden.shape[0]
    kept = kept_rows(problem, targets, n_rows)
    if kept is not None:
        row_loss[...] = 0.0
        if grads is not None:
            products.zero(grads.hidden)
    n = n_rows if kept is None else kept.size
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        if kept is None:
            _chunk(products, problem, slice(start, stop), None, hidden, targets, row_loss,
                   grads, first=start == 0)
        else:
            index = kept[start:stop]
            _chunk(products, problem, index, products.gather(hidden, index), hidden, targets,
                   row_loss, grads, first=start == 0)
    if grads is not None and n == 0:
        products.zero(grads.weight)


def _chunk(products: Any, problem: Problem, rows: Any, gathered: Any, hidden: Any,
           targets: Targets, row_loss: np.ndarray, grads: Optional[Grads],
           first: bool) -> None:
    """One chunk: ``rows`` is a slice of the batch, or an index array whose
    hidden states are ``gathered``."""
    compact = gathered is not None
    h = gathered if compact else hidden[rows]
    t = targets.take(rows) if compact else targets.rows(rows.start, rows.stop)
    losses = np.empty(h.shape[0]) if compact else row_loss[rows]
    logits = products.logits(h)
    x = products.kernel_rows(logits)
    if grads is None:
        problem.loss_rows(x, t, losses)
    else:
        row_scale = None if grads.row_scale is None else grads.row_scale[rows]
        problem.loss_grad_rows(x, t, x, losses, grads.scale, row_scale)
        d_hidden = products.grad_scratch(h.shape[0]) if compact else grads.hidden[rows]
        products.grad_hidden(logits, d_hidden)
        products.grad_weight(logits, h, grads.weight, first)
        if grads.bias is not None:
            products.grad_bias(logits, grads.bias)
        if compact:
            products.scatter(grads.hidden, rows, d_hidden)
    if compact:
        row_loss[rows] = losses


# ---- public functions ----------------------------------------------------------------

def _loss_call(hidden, weight, target, bias, class_weight, ignore_index, reduction,
               label_smoothing, z_loss, softcap, chunk_rows, num_threads, want_grad,
               grad_output=None, out_hidden=None, out_weight=None):
    layer = Layer(hidden, weight, bias)
    problem = layer_problem(layer, class_weight, ignore_index, reduction, label_smoothing, z_loss,
                       softcap, num_threads)
    targets = layer_targets(problem, target, layer)
    rows = chunk_rows_for(chunk_rows, layer.n_classes, layer.dtype.itemsize)
    n_rows = layer.hidden.shape[0]
    row_loss = np.empty(n_rows)
    grads = None
    if want_grad:
        scale, row_scale = problem.grad_scales(grad_output, layer.batch_shape, targets)
        inputs = dict(layer.inputs, target=target, class_weight=class_weight,
                      grad_output=grad_output)
        d_hidden = _output(out_hidden, layer.inputs["hidden"].shape, layer.dtype, "out_hidden",
                           inputs)
        d_weight = _output(out_weight, layer.weight.shape, layer.dtype, "out_weight",
                           dict(inputs, out_hidden=d_hidden))
        d_hidden_rows = v.KernelOutput(d_hidden, d_hidden.shape, layer.dtype, {}, None)
        d_bias = None if layer.bias is None else np.zeros(layer.n_classes)
        grads = Grads(d_hidden_rows.rows, d_weight, d_bias, scale, row_scale)
    run_chunks(NumpyProducts(layer, min(rows, max(n_rows, 1))), problem, targets, layer.hidden,
               rows, row_loss, grads)
    loss = problem.reduce(row_loss, targets, layer.batch_shape)
    if not want_grad:
        return loss
    bias_grad = None if d_bias is None else d_bias.astype(layer.dtype)
    return loss, d_hidden_rows.finish(), d_weight, bias_grad


def linear_cross_entropy(hidden: Any, weight: Any, target: Any, *, bias: Any = None,
                         class_weight: Any = None, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0,
                         z_loss: float = 0.0, softcap: Optional[float] = None,
                         chunk_rows: Optional[int] = None, num_threads: Optional[int] = None):
    """Cross-entropy of the logits ``hidden @ weight.T + bias``, without
    storing them.

    Equal to ``cross_entropy(hidden @ weight.T + bias, target, ...)``; only
    ``chunk_rows`` rows of logits exist at a time.

    Parameters
    ----------
    hidden : array_like of float32 or float64, shape (..., D)
        Hidden states (the input of the output layer).
    weight : array_like, shape (V, D)
        The output layer's weight, one row per class, dtype of ``hidden``.
    target : array_like
        Class indices of shape ``hidden.shape[:-1]`` (any integer dtype),
        or probabilities of shape ``hidden.shape[:-1] + (V,)``.
    bias : array_like of shape (V,), optional
        Added to every row of logits.
    class_weight : array_like of shape (V,), optional
        Weight per class (the ``weight`` of :func:`cross_entropy`).
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`cross_entropy`.
    chunk_rows : int, optional
        Rows of logits computed at a time. Defaults to as many as fit in
        256 MB (``DEFAULT_CHUNK_BYTES``), at least one; it never depends on
        the number of threads.
    num_threads : int, optional
        Threads of the loss kernels. The matrix products run on NumPy's
        BLAS with its own thread setting (``OPENBLAS_NUM_THREADS``,
        threadpoolctl).

    Returns
    -------
    loss : numpy scalar or ndarray
        As :func:`cross_entropy`, in the dtype of ``hidden``.

    Raises
    ------
    TypeError
        Non-float or half-precision ``hidden``/``weight``, or their dtypes
        differ; targets neither integer nor float.
    ValueError
        Shapes that do not match, no classes, ``chunk_rows < 1``, and the
        option errors of :func:`cross_entropy`.
    IndexError
        A class index outside ``[0, V)`` that is not ``ignore_index``.

    Notes
    -----
    Rows whose target is ``ignore_index`` are left out of the products.
    Results are identical run to run; the loss kernels' do not depend on
    ``num_threads``, and the products are those of the BLAS.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> hidden = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> weight = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> round(float(ck.linear_cross_entropy(hidden, weight, np.array([0, 2]))), 6)
    0.810309
    """
    return _loss_call(hidden, weight, target, bias, class_weight, ignore_index, reduction,
                      label_smoothing, z_loss, softcap, chunk_rows, num_threads, want_grad=False)


def linear_cross_entropy_with_grad(hidden: Any, weight: Any, target: Any, *, bias: Any = None,
                                   class_weight: Any = None, ignore_index: int = -100,
                                   reduction: str = "mean", label_smoothing: float = 0.0,
                                   z_loss: float = 0.0, softcap: Optional[float] = None,
                                   grad_output: Any = None,
                                   out_hidden: Optional[np.ndarray] = None,
                                   out_weight: Optional[np.ndarray] = None,
                                   chunk_rows: Optional[int] = None,
                                   num_threads: Optional[int] = None):
    """:func:`linear_cross_entropy` and its gradients with respect to
    ``hidden``, ``weight`` and ``bias``, in one pass over the rows.

    Takes the arguments of :func:`linear_cross_entropy`, plus:

    Parameters
    ----------
    grad_output : float or array_like, optional
        The upstream gradient, as in :func:`cross_entropy_with_grad`.
    out_hidden : ndarray, optional
        Where to write ``d_hidden``: shape and dtype of ``hidden``; must not
        overlap an input.
    out_weight : ndarray, optional
        Where to write ``d_weight``: shape and dtype of ``weight``; must
        not overlap an input or ``out_hidden``.

    Returns
    -------
    loss : numpy scalar or ndarray
    d_hidden : ndarray
        Shape of ``hidden`` (``out_hidden`` when given); 0 on ignored rows.
    d_weight : ndarray
        Shape of ``weight`` (``out_weight`` when given).
    d_bias : ndarray or None
        Shape (V,); None without a bias.

    Notes
    -----
    Memory beyond the results: the chunk's logits (``chunk_rows`` x V) and
    one temporary of the weight gradient: at most 256 MB and 64 MB by
    default.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> hidden, weight = np.zeros((1, 2)), np.ones((2, 2))
    >>> loss, d_hidden, d_weight, d_bias = ck.linear_cross_entropy_with_grad(
    ...     hidden, weight, np.array([1]), bias=np.zeros(2))
    >>> d_bias
    array([ 0.5, -0.5])
    """
    return _loss_call(hidden, weight, target, bias, class_weight, ignore_index, reduction,
                      label_smoothing, z_loss, softcap, chunk_rows, num_threads, want_grad=True,
                      grad_output=grad_output, out_hidden=out_hidden, out_weight=out_weight)


def linear_token_stats(hidden: Any, weight: Any, target: Any, *, bias: Any = None,
                       softcap: Optional[float] = None, ignore_index: int = -100,
                       chunk_rows: Optional[int] = None,
                       num_threads: Optional[int] = None) -> TokenStats:
    """:func:`token_stats` of the logits ``hidden @ weight.T + bias`` (soft-
    capped when ``softcap`` is given), without storing them.

    Parameters
    ----------
    hidden, weight, bias, chunk_rows, num_threads
        As in :func:`linear_cross_entropy`.
    target : array_like of int, shape ``hidden.shape[:-1]``
    softcap : float > 0, optional
        Scores ``softcap * tanh(logits / softcap)`` instead of the logits.
    ignore_index : int, default -100

    Returns
    -------
    TokenStats
        ``(nll, predicted, correct, entropy)`` as :func:`token_stats`.

    Examples
    --------
    >>> import numpy as np, ce_kernels as ck
    >>> stats = ck.linear_token_stats(np.eye(2), np.eye(2), np.array([0, 0]))
    >>> stats.predicted, stats.correct
    (array([0, 1]), array([ True, False]))
    """
    layer = Layer(hidden, weight, bias)
    problem = Problem(layer.dtype, layer.n_classes, ignore_index=ignore_index,
                      num_threads=num_threads)
    cap = v.check_softcap(softcap, layer.dtype)
    t = v.as_array(target, "target", "iu", "integer class indices")
    targets = layer_targets(problem, t, layer)
    rows = chunk_rows_for(chunk_rows, layer.n_classes, layer.dtype.itemsize)
    n = layer.hidden.shape[0]
    products = NumpyProducts(layer, min(rows, max(n, 1)))
    flat = TokenStats(np.empty(n), np.empty(n, dtype=np.int64), np.empty(n, dtype=bool),
                      np.empty(n))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        part = _chunk_stats(products, problem, layer.hidden[start:stop],
                            targets.rows(start, stop), cap)
        for whole, piece in zip(flat, part):
            whole[start:stop] = piece
    return problem.shaped_stats(flat, layer.batch_shape)


def _chunk_stats(products: NumpyProducts, problem: Problem, h: np.ndarray, targets: Targets,
                 cap: float) -> TokenStats:
    logits = products.logits(h)
    if cap:
        np.multiply(np.tanh(np.divide(logits, cap, out=logits), out=logits), cap, out=logits)
    return problem.token_stats_rows(logits, targets)
