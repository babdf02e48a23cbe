"""Cross-entropy over a vocabulary split into shards: row statistics, their
merge, the loss from merged statistics and each shard's gradient from the
global log-sum-exp, against the float64 reference and the unsharded call."""
import numpy as np
import pytest

import ce_kernels as ck
import reference as ref

pytestmark = pytest.mark.usefixtures("isa")

ml_dtypes = pytest.importorskip("ml_dtypes")
CHUNK = 2048


def shards(x, t, cuts, **options):
    """merge_row_stats of the shards [cuts[i], cuts[i+1]) of x."""
    v = x.shape[-1]
    return ck.merge_row_stats([
        ck.row_stats(x[..., a:b], t, vocab_start=a, vocab_size=v, **options)
        for a, b in zip(cuts, cuts[1:])])


def shard_grads(x, t, cuts, lse, **options):
    v = x.shape[-1]
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        loss, g = ck.cross_entropy_with_grad(x[..., a:b], t, vocab_start=a, vocab_size=v,
                                             lse=lse, **options)
        assert loss is None
        parts.append(g)
    return np.concatenate(parts, axis=-1)


def make_case(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    t = rng.integers(0, shape[-1], shape[:-1])
    t.reshape(-1)[::4] = -100
    return x, t


def random_cuts(rng, v, n_shards):
    inner = np.sort(rng.choice(np.arange(1, v), size=n_shards - 1, replace=False))
    return [0, *inner.tolist(), v]


OPTIONS = {
    "plain": {},
    "weighted-smoothed": {"weight": "w", "label_smoothing": 0.1},
    "softcap": {"softcap": 4.0},
    "everything": {"weight": "w", "label_smoothing": 0.2, "softcap": 5.0},
}


def options_for(name, rng, v):
    opts = dict(OPTIONS[name])
    if opts.get("weight") == "w":
        opts["weight"] = (rng.random(v) + 0.5).astype(np.float32)
    return opts


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("shape,n_shards", [((9, 50), 3), ((5, 5000), 4), ((2, 3, 300), 2)],
                         ids=str)
def test_any_split_matches_unsharded(rng, dtype, options, shape, n_shards):
    x, t = make_case(rng, shape, dtype)
    v = shape[-1]
    opts = options_for(options, rng, v)
    cuts = random_cuts(rng, v, n_shards)
    # targets right at the shard boundaries
    t.reshape(-1)[1::4] = np.array(cuts[1:-1] + [c - 1 for c in cuts[1:]])[
        np.arange(t.reshape(-1)[1::4].size) % (2 * n_shards - 1)]
    z = 1e-3
    merged = shards(x, t, cuts, **opts)
    x64 = x.astype(np.float64)
    expected = ref.cross_entropy_full(x64, t, opts.get("weight"), reduction="none",
                                      label_smoothing=opts.get("label_smoothing", 0.0),
                                      z_loss=z, softcap=opts.get("softcap"))
    rtol = 1e-12 if dtype is np.float64 else 2e-6
    for reduction in ("none", "mean", "sum"):
        loss = ck.loss_from_row_stats(merged, t, reduction=reduction, z_loss=z)
        unsharded = ck.cross_entropy(x, t, reduction=reduction, z_loss=z, **opts)
        assert np.asarray(loss).dtype == np.asarray(unsharded).dtype
        np.testing.assert_allclose(loss, unsharded, rtol=1e-6 if dtype is not np.float64
                                   else 1e-13, atol=1e-30)
    loss = ck.loss_from_row_stats(merged, t, reduction="none", z_loss=z)
    np.testing.assert_allclose(loss, expected, rtol=rtol, atol=rtol)

    for reduction in ("mean", "none"):
        _, g = ck.cross_entropy_with_grad(x, t, reduction=reduction, z_loss=z, **opts)
        gs = shard_grads(x, t, cuts, merged.lse, reduction=reduction, z_loss=z, **opts)
        assert gs.dtype == g.dtype and gs.shape == g.shape
        scale = float(np.max(np.abs(g.astype(np.float64))))
        atol = scale * (1e-12 if dtype is np.float64 else 1e-6 if dtype is np.float32 else 1e-2)
        np.testing.assert_allclose(gs.astype(np.float64), g.astype(np.float64), rtol=0,
                                   atol=atol)
        assert np.all(gs[t == -100] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_against_reference(rng, dtype):
    x, t = make_case(rng, (6, 3000), dtype)
    w = rng.random(3000) + 0.5
    merged = shards(x, t, [0, 1000, 2048, 3000], weight=w, label_smoothing=0.1, softcap=6.0)
    g = shard_grads(x, t, [0, 1000, 2048, 3000], merged.lse, weight=w, label_smoothing=0.1,
                    softcap=6.0, z_loss=1e-2, grad_output=2.0)
    expected = ref.cross_entropy_grad_full(x.astype(np.float64), t, w, label_smoothing=0.1,
                                           z_loss=1e-2, softcap=6.0, grad_output=2.0)
    tol = 1e-12 if dtype is np.float64 else 1e-6
    np.testing.assert_allclose(g, expected, rtol=0, atol=tol * np.abs(expected).max())


def test_shard_gradient_does_not_depend_on_the_split(rng):
    """Given the same lse, every element of the gradient is computed from its
    own logit alone: bitwise the same for any split."""
    x, t = make_case(rng, (7, 6000), np.float32)
    w = rng.random(6000).astype(np.float32) + 0.5
    lse = shards(x, t, [0, 6000], weight=w, label_smoothing=0.1).lse
    opts = dict(weight=w, label_smoothing=0.1, z_loss=1e-3)
    whole = shard_grads(x, t, [0, 6000], lse, **opts)
    for cuts in ([0, 2048, 4096, 6000], [0, 1, 3333, 5999, 6000]):
        np.testing.assert_array_equal(shard_grads(x, t, cuts, lse, **opts), whole)


#: The fields of a row's statistics that describe its shard (the rest is
#: the exact form the merge works on).
DESCRIBED = ("max", "sumexp", "lin", "wsum", "target_logit", "target_weight", "target_found",
             "argmax")


def described(stats):
    return np.stack([stats.field(name) for name in DESCRIBED], axis=-1)


def test_row_stats_fields_match_reference(rng):
    x, t = make_case(rng, (8, 3000), np.float64)
    w = rng.random(3000) + 0.5
    t[1], t[2] = 1000, 2499
    for a, b in [(0, 1000), (1000, 2500), (2500, 3000)]:
        s = ck.row_stats(x[:, a:b], t, vocab_start=a, vocab_size=3000, weight=w,
                         label_smoothing=0.3, softcap=5.0)
        expected = ref.shard_row_stats(x[:, a:b], t, a, w, 0.3, 5.0)
        np.testing.assert_allclose(described(s), expected, rtol=1e-12, atol=1e-12)
        assert (s.vocab_start, s.n_classes, s.vocab_size) == (a, b - a, 3000)
    merged = shards(x, t, [0, 1000, 2500, 3000], weight=w, label_smoothing=0.3, softcap=5.0)
    whole = ref.shard_row_stats(x, t, 0, w, 0.3, 5.0)
    np.testing.assert_allclose(described(merged), whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(merged.lse, ref.logsumexp(ref.softcapped(x, 5.0)), rtol=1e-13)


def test_exact_fields_hold_the_sums_from_their_frame(rng):
    """The exact form: sum_hi + sum_lo is the sum of exp(x - frame), frame a
    multiple of ln 2 at or above the maximum, and wsum_lo, lin_hi/lo, wshift
    the pieces of the linear sums."""
    x, t = make_case(rng, (6, 5000), np.float64)
    x[1] += 700.0
    s = ck.row_stats(x, t, label_smoothing=0.1)
    frame, k = s.field("frame"), s.field("frame_exp2")
    np.testing.assert_array_equal(k, np.round(k))
    np.testing.assert_allclose(frame, k * np.log(2.0), rtol=1e-15)
    assert np.all(frame >= x.max(axis=-1) - 1e-12) and np.all(frame < x.max(axis=-1) + np.log(2.0))
    expected = np.exp(x - frame[:, None]).sum(axis=-1)
    np.testing.assert_allclose(s.field("sum_hi") + s.field("sum_lo"), expected, rtol=1e-13)
    assert np.all(np.abs(s.field("sum_lo")) <= np.spacing(s.field("sum_hi")))
    m = x.max(axis=-1)
    lin = s.field("lin_hi") + s.field("lin_lo") + m * s.field("wsum") - s.field("wshift_hi")
    np.testing.assert_allclose(lin, (m[:, None] - x).sum(axis=-1), rtol=1e-12)
    huge = ck.row_stats(np.array([[3e30, 1.0]]), np.array([0]))
    assert np.isnan(huge.field("frame_exp2")[0]) and huge.field("frame")[0] == 3e30


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16],
                         ids=["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_chunk_aligned_shards_are_bitwise_the_unsharded_loss(rng, dtype, options):
    """Shards cut at the row driver's chunk boundaries hold the chunks the
    unsharded call reduces, and the merge is exact: the loss, the lse and
    every described field are bitwise those of the unsharded call, whatever
    the number of shards, their sizes, the thread count or the grouping of
    the merge."""
    chunk = ck.build_info()["chunk_size"]
    v = 6 * chunk + 123
    x, t = make_case(rng, (40, v), dtype)
    x[1, 5000] = 40.0                      # a confident row
    x[2, : 3 * chunk] = -np.inf            # a row whose first shards are empty
    x[3, 10] = 1e4                          # far above the rest
    t[1:4] = [5000, 7000, 10]
    opts = options_for(options, rng, v)
    z = 1e-3
    whole_loss = ck.cross_entropy(x, t, reduction="none", z_loss=z, **opts)
    opts.pop("z_loss", None)
    whole = ck.row_stats(x, t, **opts)
    for n_shards in (2, 3, 7):
        inner = np.sort(rng.choice(np.arange(1, 7), size=n_shards - 1, replace=False))
        cuts = [0, *(chunk * inner).tolist(), v]
        for threads in (1, 2):
            parts = [ck.row_stats(x[..., a:b], t, vocab_start=a, vocab_size=v,
                                  num_threads=threads, **opts)
                     for a, b in zip(cuts, cuts[1:])]
            merged = ck.merge_row_stats(parts)
            regrouped = ck.merge_row_stats([ck.merge_row_stats(parts[:2]), *parts[2:]])
            for m in (merged, regrouped):
                np.testing.assert_array_equal(described(m), described(whole))
                loss = ck.loss_from_row_stats(m, t, reduction="none", z_loss=z)
                np.testing.assert_array_equal(loss, whole_loss)


def test_deterministic_run_to_run_and_across_threads(rng):
    x, t = make_case(rng, (3, 20000), np.float32)
    cuts = [0, 7000, 14000, 20000]
    first = shards(x, t, cuts, label_smoothing=0.1, num_threads=1)
    for threads in (1, 2, 3):
        again = shards(x, t, cuts, label_smoothing=0.1, num_threads=threads)
        np.testing.assert_array_equal(again.data, first.data)
        g1 = shard_grads(x, t, cuts, first.lse, num_threads=1)
        np.testing.assert_array_equal(shard_grads(x, t, cuts, first.lse, num_threads=threads), g1)


def test_one_shard_is_the_unsharded_call(rng):
    """A single shard merges to exactly the unsharded row statistics, so
    its loss is bitwise the unsharded loss; a shard per chunk merges the
    chunks with the row driver's own merge."""
    x, t = make_case(rng, (5, 5000), np.float32)
    for opts in ({}, {"label_smoothing": 0.1, "softcap": 3.0}):
        loss = ck.loss_from_row_stats(shards(x, t, [0, 5000], **opts), t, reduction="none")
        np.testing.assert_array_equal(loss, ck.cross_entropy(x, t, reduction="none", **opts))


def test_special_rows():
    """A shard of -inf only adds nothing; +inf or NaN anywhere make the row
    NaN (the lse +inf or NaN), as unsharded; the argmax is the first largest."""
    inf, nan = np.inf, np.nan
    x = np.array([[1.0, 2.0, -inf, -inf],
                  [0.0, 1.0, inf, 2.0],
                  [0.0, 1.0, nan, 2.0],
                  [3.0, 0.0, 3.0, 0.0]], dtype=np.float32)
    t = np.array([1, 0, 0, 3])
    merged = shards(x, t, [0, 2, 4])
    np.testing.assert_array_equal(merged.field("argmax"), [1, 2, 2, 0])
    loss = ck.loss_from_row_stats(merged, t, reduction="none")
    np.testing.assert_array_equal(np.isnan(loss), [False, True, True, False])
    np.testing.assert_allclose(loss, ck.cross_entropy(x, t, reduction="none"), rtol=1e-6)
    assert merged.lse[1] == inf and np.isnan(merged.lse[2])


def test_ignored_rows_and_empty_batch(rng):
    x, t = make_case(rng, (4, 10), np.float32)
    t[:] = -100
    merged = shards(x, t, [0, 4, 10])
    assert np.all(ck.loss_from_row_stats(merged, t, reduction="none") == 0)
    assert np.isnan(ck.loss_from_row_stats(merged, t))
    _, g = ck.cross_entropy_with_grad(x[:, 4:], t, vocab_start=4, lse=merged.lse)
    assert np.all(g == 0)
    empty = shards(np.zeros((0, 10), np.float32), np.zeros(0, np.int64), [0, 3, 10])
    assert ck.loss_from_row_stats(empty, np.zeros(0, np.int64), reduction="sum") == 0


def test_bad_input():
    x = np.zeros((2, 10), np.float32)
    t = np.array([1, 9])
    a = ck.row_stats(x[:, :6], t, vocab_size=10)
    b = ck.row_stats(x[:, 6:], t, vocab_start=6, vocab_size=10)
    with pytest.raises(ValueError, match="overlapping"):
        ck.merge_row_stats([a, ck.row_stats(x[:, 5:], t, vocab_start=5, vocab_size=10)])
    with pytest.raises(ValueError, match="cover 6 of 10"):
        ck.loss_from_row_stats(a, t)
    with pytest.raises(ValueError, match="same rows"):
        ck.merge_row_stats([a, ck.row_stats(x[:, 6:], t, vocab_start=6, vocab_size=10,
                                            label_smoothing=0.1)])
    with pytest.raises(TypeError, match=r"stats\[1\]"):
        ck.merge_row_stats([a, b.data])
    with pytest.raises(ValueError, match="at least one"):
        ck.merge_row_stats([])
    with pytest.raises(IndexError, match=r"target\[1\] = 10"):
        ck.row_stats(x[:, 6:], np.array([1, 10]), vocab_start=6, vocab_size=10)
    with pytest.raises(ValueError, match=r"\[6, 10\) exceed vocab_size \(8\)"):
        ck.row_stats(x[:, 6:], t, vocab_start=6, vocab_size=8)
    with pytest.raises(ValueError, match="vocab_start must be >= 0"):
        ck.row_stats(x, t, vocab_start=-1)
    with pytest.raises(TypeError, match="vocab_start must be an integer"):
        ck.row_stats(x, t, vocab_start=1.5)
    with pytest.raises(ValueError, match="lse has shape"):
        ck.cross_entropy_with_grad(x[:, 6:], t, vocab_start=6, vocab_size=10, lse=np.zeros(3))
    with pytest.raises(ValueError, match="needs lse"):
        ck.cross_entropy_with_grad(x[:, 6:], t, vocab_start=6, vocab_size=10)
    with pytest.raises(ValueError, match=r"weight must have shape \(10,\)"):
        ck.row_stats(x[:, 6:], t, vocab_start=6, vocab_size=10, weight=np.ones(4))
    merged = ck.merge_row_stats([a, b])
    # targets other than those the statistics were taken with
    c = ck.merge_row_stats([ck.row_stats(x[:, :6], np.array([-100, 9]), vocab_size=10),
                            ck.row_stats(x[:, 6:], np.array([-100, 9]), vocab_start=6,
                                         vocab_size=10)])
    with pytest.raises(ValueError, match="row 0: its target 1 was found in 0 shards"):
        ck.loss_from_row_stats(c, t)
    assert np.isfinite(ck.loss_from_row_stats(merged, t))


def test_shard_gradient_in_place(rng):
    x, t = make_case(rng, (3, 5000), np.float32)
    lse = shards(x, t, [0, 5000], softcap=5.0).lse
    shard = np.ascontiguousarray(x[:, 1000:])
    _, expected = ck.cross_entropy_with_grad(shard, t, vocab_start=1000, vocab_size=5000, lse=lse,
                                             softcap=5.0, num_threads=2)
    _, g = ck.cross_entropy_with_grad(shard, t, vocab_start=1000, vocab_size=5000, lse=lse,
                                      softcap=5.0, out=shard, num_threads=2)
    assert g is shard
    np.testing.assert_array_equal(shard, expected)
