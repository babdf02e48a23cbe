"""Sharded evaluation: exact partial sums (eval_partial, eval_merge), the
job-array path (eval --rows --partial, merge) and Dask (synchronous
scheduler, a LocalCluster of 2 processes): the summary must be bitwise the
same whatever the blocking, and agree with the float64 reference."""
import json
import math

import numpy as np
import pytest

import ce_kernels as ck
import reference as ref
from ce_kernels import _partial
from ce_kernels.cli import main
from test_eval_files import good as files  # noqa: F401  (the fixture)


def make_case(rng, n=300, v=50, dtype=np.float32):
    x = (rng.standard_normal((n, v)) * 2).astype(dtype)
    t = rng.integers(0, v, n)
    t[::7] = -100
    t[1::9] = np.argmax(x[1::9], axis=-1)      # some correct predictions
    return x, t


def blocks(n, cuts):
    edges = [0, *cuts, n]
    return list(zip(edges, edges[1:]))


def test_merge_matches_reference(rng):
    x, t = make_case(rng)
    summary = ck.eval_merge([ck.eval_partial(x, t)])
    nll, _, correct, entropy = ref.token_stats(x.astype(np.float64), t)
    counted = t != -100
    assert summary["tokens"] == counted.sum() and summary["ignored"] == (~counted).sum()
    assert summary["nll"] == pytest.approx(np.nanmean(nll), rel=1e-6)
    assert summary["entropy"] == pytest.approx(entropy[counted].mean(), rel=1e-6)
    assert summary["accuracy"] == correct.sum() / counted.sum()
    assert summary["perplexity"] == pytest.approx(math.exp(np.nanmean(nll)), rel=1e-6)
    assert summary["bits_per_token"] == pytest.approx(np.nanmean(nll) / math.log(2), rel=1e-6)


def test_any_blocking_gives_the_same_bits(rng):
    x, t = make_case(rng)
    whole = ck.eval_merge([ck.eval_partial(x, t)])
    for _ in range(5):
        cuts = sorted(rng.choice(np.arange(1, 300), size=rng.integers(1, 12), replace=False))
        parts = [ck.eval_partial(x[a:b], t[a:b]) for a, b in blocks(300, cuts)]
        order = rng.permutation(len(parts))
        assert ck.eval_merge(parts) == whole
        assert ck.eval_merge([parts[i] for i in order]) == whole
    # through JSON, as the files of a job array
    parts = [json.loads(json.dumps(ck.eval_partial(x[a:b], t[a:b]))) for a, b in
             blocks(300, [100, 101, 250])]
    assert ck.eval_merge(parts) == whole


def test_exact_sum_is_the_sum_of_the_rounded_values(rng):
    """Within half a unit per value of the exactly rounded sum (math.fsum),
    whatever the magnitudes, including values past the int64 fast path."""
    values = np.concatenate([rng.standard_normal(1000) * 10, rng.random(10) * 1e9,
                             [2.0**-45, 3e-300, 1e15, -1e15, 12345.678]])
    s = _partial.exact_sum(values)
    assert (s["nan"], s["+inf"], s["-inf"]) == (0, 0, 0)
    bound = values.size * 2.0**-41
    assert abs(s["units"] / 2**40 - math.fsum(values)) <= bound + 1e-16 * abs(math.fsum(values))
    # splitting never changes the integer
    halves = [_partial.exact_sum(values[:517]), _partial.exact_sum(values[517:])]
    assert halves[0]["units"] + halves[1]["units"] == s["units"]
    special = _partial.exact_sum(np.array([1.0, np.nan, np.inf, np.inf, -np.inf]))
    assert (special["units"], special["nan"], special["+inf"], special["-inf"]) == (2**40, 1, 2, 1)


def test_special_values():
    x = np.array([[0.0, 1.0], [np.nan, 0.0], [0.0, 0.0]])
    t = np.array([1, 0, -100])
    summary = ck.eval_merge([ck.eval_partial(x[:2], t[:2]), ck.eval_partial(x[2:], t[2:])])
    assert math.isnan(summary["nll"]) and summary["tokens"] == 2 and summary["ignored"] == 1
    x = np.array([[0.0, -np.inf]])
    assert ck.eval_merge([ck.eval_partial(x, np.array([1]))])["nll"] == math.inf
    nothing = ck.eval_merge([ck.eval_partial(x, np.array([-100]))])
    assert nothing["tokens"] == 0 and math.isnan(nothing["nll"]) and math.isnan(nothing["accuracy"])


def test_bad_partials(rng):
    x, t = make_case(rng, n=10)
    good = ck.eval_partial(x, t)
    with pytest.raises(ValueError, match="at least one"):
        ck.eval_merge([])
    with pytest.raises(ValueError, match=r"partials\[1\] is not an evaluation partial"):
        ck.eval_merge([good, {"tokens": 3}])
    with pytest.raises(ValueError, match=r"partials\[1\] has a vocabulary of 7"):
        ck.eval_merge([good, ck.eval_partial(x[:, :7], np.zeros(10, np.int64))])
    with pytest.raises(ValueError, match=r"\['tokens'\] must be a non-negative integer"):
        ck.eval_merge([dict(good, tokens=-1)])
    with pytest.raises(ValueError, match="does not add up"):
        ck.eval_merge([dict(good, tokens=good["tokens"] + 1)])
    with pytest.raises(ValueError, match="integer units"):
        ck.eval_merge([dict(good, nll_sum={"units": 1.5, "nan": 0, "+inf": 0, "-inf": 0})])
    with pytest.raises(IndexError, match=r"target\[0\] = 50"):
        ck.eval_partial(x, np.full(10, 50))


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("shift", [False, True])
def test_job_array_rows_and_merge(files, capsys, shift):
    d, _, _ = files
    shifted = ["--shift"] if shift else []
    whole = run_json(capsys, "eval", str(d / "logits.npy"), str(d / "targets.npy"), "--json",
                     *shifted)
    paths = []
    for a, b in [(0, 9), (9, 11), (11, 24)]:
        paths.append(str(d / f"part{a}.json"))
        assert main(["eval", str(d / "logits.npy"), str(d / "targets.npy"), "--rows", f"{a}:{b}",
                     "--partial", paths[-1], "--chunk-rows", "5", *shifted]) == 0
    merged = run_json(capsys, "merge", *paths, "--json")
    del whole["chunk_rows"]
    assert merged == whole


def test_job_array_errors(files, capsys):
    d, _, _ = files
    logits, targets = str(d / "logits.npy"), str(d / "targets.npy")
    assert main(["eval", logits, targets, "--rows", "20:25"]) == 2
    assert "--rows 20:25 is not a non-empty range within the 24 positions" in \
        capsys.readouterr().err
    assert main(["eval", logits, targets, "--rows", "0:5", "--per-token",
                 str(d / "o.npy")]) == 2
    assert "cannot be combined with --rows" in capsys.readouterr().err
    (d / "bad.json").write_text("{}")
    assert main(["merge", str(d / "bad.json")]) == 2
    assert f"{d / 'bad.json'} is not an evaluation partial" in capsys.readouterr().err
    assert main(["merge", str(d / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", logits, targets, "--rows", "5:2"])


def shard_files(d, x, t):
    for i, (a, b) in enumerate(blocks(x.shape[0], [7, 8, 18])):
        np.save(d / f"logits_{i}.npy", x[a:b])
        np.save(d / f"targets_{i}.npy", t[a:b])


def test_dask_synchronous_npy_shards_and_zarr(files, capsys):
    pytest.importorskip("dask")
    zarr = pytest.importorskip("zarr")
    d, x, t = files
    flat_x, flat_t = x.reshape(-1, 50), t.reshape(-1)
    whole = run_json(capsys, "eval", str(d / "logits.npy"), str(d / "targets.npy"), "--json")
    del whole["chunk_rows"]
    shard_files(d, flat_x, flat_t)
    got = run_json(capsys, "eval", str(d / "logits_*.npy"), str(d / "targets_*.npy"),
                   "--dask", "synchronous", "--block-rows", "3", "--json")
    assert got.pop("blocks") == 10
    assert got == whole
    zx = zarr.open_array(str(d / "x.zarr"), mode="w", shape=flat_x.shape, chunks=(8, 50),
                         dtype=flat_x.dtype)
    zx[:] = flat_x
    zt = zarr.open_array(str(d / "t.zarr"), mode="w", shape=flat_t.shape, chunks=(8,),
                         dtype=flat_t.dtype)
    zt[:] = flat_t
    got = run_json(capsys, "eval", str(d / "x.zarr"), str(d / "t.zarr"), "--dask",
                   "synchronous", "--block-rows", "5", "--json")
    assert got.pop("blocks") == 5
    assert got == whole


def test_dask_errors(files, capsys):
    pytest.importorskip("dask")
    d, _, _ = files
    assert main(["eval", str(d / "nothing_*.npy"), str(d / "targets.npy"), "--dask",
                 "synchronous"]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert main(["eval", str(d / "logits.npy"), str(d / "targets.npy"), "--workers", "2",
                 "--rows", "0:4"]) == 2
    assert "--rows cannot be combined with --dask or --workers" in capsys.readouterr().err


def test_dask_local_cluster_of_two_processes(files):
    pytest.importorskip("dask.distributed")
    from ce_kernels._dask_eval import evaluate_dask
    from ce_kernels.evaluate import evaluate

    d, x, t = files
    shard_files(d, x.reshape(-1, 50), t.reshape(-1))
    whole = evaluate(str(d / "logits.npy"), str(d / "targets.npy"), progress=False)
    del whole["chunk_rows"]
    got = evaluate_dask(str(d / "logits_*.npy"), str(d / "targets_*.npy"), workers=2,
                        block_rows=4)
    assert got.pop("blocks") == 8
    assert got == whole


def test_hidden_states_in_blocks_merge_to_the_whole_run(rng, tmp_path):
    """eval --hidden --head --rows A:B --partial: blocks of hidden states
    scored through the head merge to the unblocked run, bit for bit, and
    agree with the float64 reference of the logits."""
    from ce_kernels.evaluate import evaluate_hidden

    hidden = rng.standard_normal((3, 40, 16)).astype(np.float32)
    head = (rng.standard_normal((70, 16)) * 0.5).astype(np.float32)
    targets = rng.integers(0, 70, (3, 40))
    targets[:, ::6] = -100
    for name, a in (("h", hidden), ("w", head), ("t", targets)):
        np.save(tmp_path / f"{name}.npy", a)
    paths = [str(tmp_path / f"{n}.npy") for n in ("h", "w", "t")]
    whole = evaluate_hidden(*paths, chunk_rows=11, progress=False)
    partials = [evaluate_hidden(*paths, rows=(a, b), as_partial=True, chunk_rows=11,
                                progress=False) for a, b in blocks(120, [17, 64, 65])]
    merged = ck.eval_merge(partials[::-1])
    for key in ("tokens", "ignored", "nll", "accuracy", "entropy"):
        assert merged[key] == whole[key], key
    logits = hidden.reshape(-1, 16).astype(np.float64) @ head.T.astype(np.float64)
    nll, _, _, _ = ref.token_stats(logits, targets.reshape(-1))
    assert whole["nll"] == pytest.approx(np.nanmean(nll), rel=1e-5)
    assert main(["eval", "--hidden", paths[0], "--head", paths[1], paths[2], "--rows", "0:30",
                 "--partial", str(tmp_path / "p.json")]) == 0
    with open(tmp_path / "p.json") as f:
        assert json.load(f)["rows"] == [0, 30]
