"""Plain float64 NumPy references of every public function.

Written for clarity, not speed: each follows the textbook formula (and
PyTorch's documented semantics for the options) step by step. Nothing here
calls ce_kernels.
"""
import numpy as np


def logsumexp(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return np.squeeze(out, axis=axis)


def log_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    return x - np.expand_dims(logsumexp(x, axis), axis)


def softmax(x, axis=-1):
    return np.exp(log_softmax(x, axis))


def _target_distribution(target, n_classes, label_smoothing, ignore_index):
    """(per-position class distribution q, per-position 'counted' mask)."""
    target = np.asarray(target)
    if target.dtype.kind == "f":
        q = target.astype(np.float64)
        counted = np.ones(q.shape[:-1], dtype=bool)
    else:
        counted = target != ignore_index
        safe = np.where(counted, target, 0)
        q = np.zeros(target.shape + (n_classes,))
        np.put_along_axis(q, safe[..., None].astype(np.int64), 1.0, axis=-1)
    q = (1.0 - label_smoothing) * q + label_smoothing / n_classes
    return q, counted


def _mean_denominator(target, w, counted):
    """What "mean" divides by: the number of positions for soft targets,
    the summed weight of the counted targets for class indices."""
    t = np.asarray(target)
    if t.dtype.kind == "f":
        return counted.size
    return np.sum(np.where(counted, w[np.where(counted, t, 0)], 0.0))


def _reduce_positions(per_position, counted, reduction, target, w):
    """Per-position losses reduced as PyTorch does: ignored positions count 0,
    "mean" divides by :func:`_mean_denominator`."""
    per_position = np.where(counted, per_position, 0.0)
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return per_position.sum() / _mean_denominator(target, w, counted)


def cross_entropy(logits, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None):
    """torch.nn.functional.cross_entropy with the class axis last, in float64.

    Per position: loss = -sum_j w_j * q_j * log_softmax(x)_j, where q is the
    (smoothed) target distribution. With class indices PyTorch splits this
    into (1-eps) * w_t * nll + eps/V * sum_j w_j * (-log p_j), which is the
    same thing; the mean divides by sum of w_t over counted positions. With
    soft targets the mean divides by the number of positions.
    """
    x = softcapped(logits, softcap)
    n_classes = x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    q, counted = _target_distribution(target, n_classes, label_smoothing, ignore_index)
    logp = log_softmax(x)
    coef = w * q
    with np.errstate(invalid="ignore"):
        terms = np.where(coef != 0, -coef * logp, 0.0)
    per_position = terms.sum(axis=-1) + z_loss * logsumexp(x) ** 2
    return _reduce_positions(per_position, counted, reduction, target, w)


def cross_entropy_grad(logits, target, weight=None, ignore_index=-100, reduction="mean",
                       label_smoothing=0.0, grad_output=None):
    """Analytic gradient of :func:`cross_entropy`: for each position,
    d loss / d x_j = p_j * sum_k(w_k q_k) - w_j q_j, scaled by the reduction
    (and grad_output). Checked against finite differences in the tests."""
    x = np.asarray(logits, dtype=np.float64)
    n_classes = x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    q, counted = _target_distribution(target, n_classes, label_smoothing, ignore_index)
    p = softmax(x)
    coef = w * q
    grad = p * coef.sum(axis=-1, keepdims=True) - coef
    grad = np.where(counted[..., None], grad, 0.0)
    if reduction == "none":
        g = np.ones(x.shape[:-1]) if grad_output is None else np.broadcast_to(grad_output, x.shape[:-1])
        return grad * np.asarray(g, dtype=np.float64)[..., None]
    g = 1.0 if grad_output is None else float(grad_output)
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.float64(g) / np.float64(_mean_denominator(target, w, counted))
    return grad * g


def numerical_grad(f, x, h=1e-5):
    """Central 4th-order finite differences of scalar f at float64 x."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        vals = []
        for step in (2 * h, h, -h, -2 * h):
            flat[i] = orig + step
            vals.append(f(x))
        flat[i] = orig
        gflat[i] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)
    return grad


# ---- the rest of the family ---------------------------------------------------

def entropy(p, base=None, axis=-1):
    """-sum p log p, with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    h = terms.sum(axis=axis)
    return h / np.log(base) if base else h


def cross_entropy_probs(p, q, base=None, axis=-1):
    """-sum p log q, with 0 log q = 0 and p log 0 = -inf for p > 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(q), 0.0)
    h = terms.sum(axis=axis)
    return h / np.log(base) if base else h


def kl_divergence(p, q, base=None, axis=-1):
    """sum p log(p / q), with 0 log(0 / q) = 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    d = terms.sum(axis=axis)
    return d / np.log(base) if base else d


def softplus(x):
    """log(1 + exp(x)), written with logaddexp so large x does not overflow."""
    return np.logaddexp(0.0, x)


def sigmoid(x):
    return np.exp(-softplus(-np.asarray(x, dtype=np.float64)))


def _reduce(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if loss.size else np.nan


def binary_cross_entropy(x, y, weight=None, pos_weight=None, reduction="mean"):
    """-w [pw y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], with
    log sigmoid(x) = -softplus(-x) and log(1 - sigmoid(x)) = -softplus(x)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    loss = w * (pw * y * softplus(-x) + (1 - y) * softplus(x))
    return _reduce(np.broadcast_to(loss, x.shape), reduction)


def binary_cross_entropy_grad(x, y, weight=None, pos_weight=None, reduction="mean", grad_output=None):
    """d/dx of the above: w [(1 - y) sigmoid(x) - pw y sigmoid(-x)]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    grad = np.broadcast_to(w * ((1 - y) * sigmoid(x) - pw * y * sigmoid(-x)), x.shape)
    g = 1.0 if grad_output is None else np.asarray(grad_output, dtype=np.float64)
    if reduction == "mean":
        g = g / x.size
    return grad * g


def binary_cross_entropy_probs(p, y, weight=None, reduction="mean"):
    """-w [y log p + (1 - y) log(1 - p)], each log clamped at -100 (PyTorch)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), -100.0)
        log_1mp = np.maximum(np.log(1 - p), -100.0)
    loss = -w * (y * log_p + (1 - y) * log_1mp)
    return _reduce(np.broadcast_to(loss, p.shape), reduction)


def token_stats(logits, target, ignore_index=-100):
    """(nll with NaN at ignored positions, argmax, correct, entropy)."""
    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(target)
    logp = log_softmax(x)
    counted = t != ignore_index
    safe = np.where(counted, t, 0)
    nll = -np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    nll = np.where(counted, nll, np.nan)
    predicted = np.argmax(x, axis=-1)
    correct = (predicted == t) & counted
    p = np.exp(logp)
    entropy = -np.sum(np.where(p > 0, p * logp, 0.0), axis=-1)
    return nll, predicted, correct, entropy


# ---- additions for the property tests --------------------------------------------
# Spelled out for inputs the functions above do not take (z_loss, softcap and
# grad_output together in the gradient), where NaN must propagate, or where
# logits of magnitude 1e30 and more would lose the answer: log_softmax above
# adds the maximum back into logsumexp and subtracts it again, which leaves
# nothing of log(2) next to 1e30.

def log_softmax_scipy(x, axis=-1):
    """log softmax with SciPy's treatment of infinities: a row holding +inf
    (and no NaN) has log-sum-exp +inf, so x - lse is NaN at +inf and -inf
    elsewhere; otherwise as :func:`log_softmax_shifted`."""
    x = np.asarray(x, dtype=np.float64)
    out = log_softmax_shifted(x, axis=axis)
    if x.size == 0:
        return out
    plus_inf = np.any(x == np.inf, axis=axis, keepdims=True) & ~np.any(np.isnan(x), axis=axis,
                                                                        keepdims=True)
    with np.errstate(invalid="ignore"):
        scipy_rows = x - np.inf
    return np.where(plus_inf, scipy_rows, out)


def log_softmax_shifted(x, axis=-1):
    """log softmax as (x - max) - log(sum(exp(x - max))), PyTorch's formula.

    The maximum is never added back, so the result keeps its digits at any
    magnitude. As in PyTorch, a row holding +inf (inf - inf) or only -inf
    (-inf + inf) is NaN throughout, and NaN propagates.
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True) if x.shape[axis] else np.zeros_like(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        shifted = x - m
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax_shifted(x, axis=-1):
    return np.exp(log_softmax_shifted(x, axis))


def cross_entropy_full(logits, target, weight=None, ignore_index=-100, reduction="mean",
                       label_smoothing=0.0, z_loss=0.0, softcap=None):
    """:func:`cross_entropy`, term for term, with :func:`log_softmax_shifted`."""
    x = softcapped(logits, softcap)
    n_classes = x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    q, counted = _target_distribution(target, n_classes, label_smoothing, ignore_index)
    logp = log_softmax_shifted(x)
    coef = w * q
    with np.errstate(invalid="ignore"):
        # A class with no weight or no target mass adds 0, even where its
        # log-probability is -inf; NaN (from NaN logits) still propagates.
        terms = np.where(coef != 0, -coef * logp, np.where(np.isnan(logp), np.nan, 0.0))
    per_position = terms.sum(axis=-1)
    if z_loss:
        per_position = per_position + z_loss * logsumexp(x) ** 2
    return _reduce_positions(per_position, counted, reduction, target, w)


def softcapped(logits, softcap=None):
    """The logits the softmax sees: softcap * tanh(x / softcap), or x."""
    x = np.asarray(logits, dtype=np.float64)
    if softcap is None:
        return x
    return softcap * np.tanh(x / softcap)


def row_multiplier(target, n_classes, weight=None, ignore_index=-100, reduction="mean",
                   grad_output=None):
    """What each position's gradient is scaled by: grad_output (broadcast for
    "none", a scalar otherwise), divided by the mean's denominator for "mean".
    A mean over a total weight of 0 makes the gradient NaN, as in PyTorch."""
    t = np.asarray(target)
    batch_shape = t.shape[:-1] if t.dtype.kind == "f" else t.shape
    if reduction == "none":
        g = np.ones(batch_shape) if grad_output is None else np.asarray(grad_output, dtype=np.float64)
        return np.broadcast_to(g, batch_shape).astype(np.float64)
    g = np.float64(1.0 if grad_output is None else np.asarray(grad_output, dtype=np.float64).reshape(()))
    if reduction == "mean":
        w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
        counted = np.ones(batch_shape, dtype=bool) if t.dtype.kind == "f" else t != ignore_index
        denominator = np.float64(_mean_denominator(t, w, counted))
        g = g / denominator if denominator != 0 else np.float64(np.nan)
    return np.full(batch_shape, g)


def cross_entropy_grad_full(logits, target, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=None):
    """d/d logits of :func:`cross_entropy` with every option.

    With y = softcap(x), per counted position:
    d loss / d y_j = p_j * sum_k(w_k q_k) - w_j q_j + 2 z_loss * logsumexp(y) * p_j,
    and d y_j / d x_j = 1 - tanh(x_j / softcap)^2. Each position is scaled by
    :func:`row_multiplier`; ignored positions are exactly 0 whatever the scale.
    """
    x = np.asarray(logits, dtype=np.float64)
    y = softcapped(x, softcap)
    n_classes = x.shape[-1]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    q, counted = _target_distribution(target, n_classes, label_smoothing, ignore_index)
    p = softmax_shifted(y)
    coef = w * q
    with np.errstate(invalid="ignore", over="ignore"):
        grad = p * coef.sum(axis=-1, keepdims=True) - coef
        if z_loss:
            grad = grad + 2.0 * z_loss * logsumexp(y)[..., None] * p
        if softcap is not None:
            grad = grad * (1.0 - np.tanh(x / softcap) ** 2)
        mult = row_multiplier(target, n_classes, weight, ignore_index, reduction, grad_output)
        grad = grad * mult[..., None]
    return np.where(counted[..., None], grad, 0.0)


def predictive_entropy(logits):
    """Entropy of softmax(logits) along the last axis: -sum p log p, where a
    term with p == 0 is 0 and NaN propagates."""
    logp = log_softmax_shifted(logits)
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p == 0, 0.0, p * logp)
    return -terms.sum(axis=-1)


def log_sigmoid(x):
    """log sigmoid(x) = -softplus(-x)."""
    return -softplus(-np.asarray(x, dtype=np.float64))


def binary_cross_entropy_pytorch_formula(x, y, weight=None, pos_weight=None, reduction="mean"):
    """The same loss written as PyTorch computes it,
    w [(1 - y) x + (1 + (pw - 1) y) softplus(-x)]: equal to
    :func:`binary_cross_entropy` for finite x, but for x = -inf with y > 0 it
    gives NaN (-inf + inf) where the textbook form gives inf."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        loss = w * ((1 - y) * x + (1 + (pw - 1) * y) * softplus(-x))
    return _reduce(np.broadcast_to(loss, x.shape), reduction)


# ---- vocabulary shards ------------------------------------------------------------

def shard_row_stats(logits_shard, target, vocab_start, weight=None, label_smoothing=0.0,
                    softcap=None):
    """The per-row statistics of one shard of the vocabulary, field by field
    (max, sumexp, lin, wsum, target_logit, target_weight, target_found,
    argmax), straight from their definitions in float64. ``weight`` covers
    the whole vocabulary; ``target`` holds global class ids."""
    x = softcapped(logits_shard, softcap)
    raw = np.asarray(logits_shard, dtype=np.float64)
    n_rows, n_cols = x.shape
    t = np.asarray(target)
    w_all = None if weight is None else np.asarray(weight, dtype=np.float64)
    w = np.ones(n_cols) if w_all is None else w_all[vocab_start:vocab_start + n_cols]
    m = x.max(axis=-1)
    local = t - vocab_start
    found = (local >= 0) & (local < n_cols)
    safe = np.where(found, local, 0)
    out = np.zeros((n_rows, 8))
    out[:, 0] = m
    out[:, 1] = np.exp(x - m[:, None]).sum(axis=-1)
    if label_smoothing > 0:
        out[:, 2] = (w * (m[:, None] - x)).sum(axis=-1)
        out[:, 3] = w.sum()
    out[:, 4] = np.where(found, x[np.arange(n_rows), safe], 0.0)
    tw = np.ones(n_rows) if w_all is None else w_all[np.where(found, t, 0)]
    out[:, 5] = np.where(found, tw, 0.0)
    out[:, 6] = found
    out[:, 7] = vocab_start + np.argmax(raw, axis=-1)
    return out


def linear_logits(hidden, head, bias=None):
    """The logits of a linear output layer in float64: hidden @ head.T + bias
    (``head`` is the layer's weight; ``weight`` stays the class weights)."""
    x = np.asarray(hidden, dtype=np.float64) @ np.asarray(head, dtype=np.float64).T
    return x if bias is None else x + np.asarray(bias, dtype=np.float64)


def linear_cross_entropy(hidden, head, target, bias=None, **options):
    """:func:`cross_entropy_full` of :func:`linear_logits`."""
    return cross_entropy_full(linear_logits(hidden, head, bias), target, **options)


def linear_cross_entropy_grads(hidden, head, target, bias=None, grad_output=None, **options):
    """(d_hidden, d_head, d_bias) of :func:`linear_cross_entropy` by the
    chain rule through the logits: with G = d loss / d logits,
    d_hidden = G @ head, d_head = G.T @ hidden, d_bias = sum of G's rows."""
    h = np.asarray(hidden, dtype=np.float64)
    w = np.asarray(head, dtype=np.float64)
    g = cross_entropy_grad_full(linear_logits(h, w, bias), target, grad_output=grad_output,
                                **options)
    rows = g.reshape(-1, w.shape[0])
    d_hidden = (rows @ w).reshape(h.shape)
    d_weight = rows.T @ h.reshape(-1, w.shape[1])
    return d_hidden, d_weight, (None if bias is None else rows.sum(axis=0))


# ---- distillation ---------------------------------------------------------------

def _kl_rows(log_p, log_q):
    """sum_j p_j (log p_j - log q_j) per row, with 0 where p_j = 0."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(axis=-1)


def distill_row_losses(student, teacher, temperature=1.0, mode="forward", beta=0.5):
    """Per-row distillation losses, times temperature**2: "forward"
    KL(p_t || p_s), "reverse" KL(p_s || p_t), or "jsd" with mixture weight
    beta (beta = 0: forward, beta = 1: reverse)."""
    s = np.asarray(student, dtype=np.float64) / temperature
    t = np.asarray(teacher, dtype=np.float64) / temperature
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    log_ps, log_pt = log_softmax(s), log_softmax(t)
    if mode == "jsd" and beta == 0:
        mode = "forward"
    if mode == "jsd" and beta == 1:
        mode = "reverse"
    if mode == "forward":
        loss = _kl_rows(log_pt, log_ps)
    elif mode == "reverse":
        loss = _kl_rows(log_ps, log_pt)
    else:
        # log(beta p_t + (1 - beta) p_s), without the products underflowing
        log_m = np.logaddexp(np.log(beta) + log_pt, np.log1p(-beta) + log_ps)
        loss = beta * _kl_rows(log_pt, log_m) + (1 - beta) * _kl_rows(log_ps, log_m)
    return loss * temperature ** 2


def distill_loss(student, teacher, temperature=1.0, mode="forward", beta=0.5, target=None,
                 ignore_index=-100, reduction="batchmean"):
    """The reduced loss: rows whose target is ignore_index count 0 and are
    left out of the denominators ("batchmean": counted rows, "mean":
    counted rows times V)."""
    rows = distill_row_losses(student, teacher, temperature, mode, beta)
    counted = np.ones(rows.shape, dtype=bool)
    if target is not None:
        counted = np.asarray(target).reshape(-1) != ignore_index
    rows = np.where(counted, rows, 0.0)
    n_classes = np.shape(student)[-1]
    if reduction == "none":
        return rows.reshape(np.shape(student)[:-1])
    total = rows.sum()
    if reduction == "sum":
        return total
    denominator = counted.sum() * (n_classes if reduction == "mean" else 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.float64(total) / np.float64(denominator)
