"""The optional extras the command line uses: the progress bar of
``ce-kernels eval`` (tqdm) and ``ce-kernels bench --plot`` (matplotlib).
Each test skips when its extra is not installed."""
import io
import math

import numpy as np
import pytest

import reference as ref
from ce_kernels import bench, evaluate


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so eval draws its progress bar."""

    def isatty(self):
        return True


def test_eval_progress_bar_counts_every_position_and_keeps_the_result(tmp_path, monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    bars = []

    class RecordedBar(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["delay"] = 0  # draw at once: the run is shorter than the real delay
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm, "tqdm", RecordedBar)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 50, 97)).astype(np.float32)
    targets = rng.integers(0, 97, size=(3, 50))
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "targets.npy", targets)
    terminal = _Terminal()
    monkeypatch.setattr(evaluate.sys, "stderr", terminal)
    result = evaluate.evaluate(str(tmp_path / "logits.npy"), str(tmp_path / "targets.npy"),
                               chunk_rows=7, progress=True)
    x = logits.astype(np.float64).reshape(-1, 97)
    t = targets.reshape(-1)
    expected_nll = float(np.mean(-ref.log_softmax(x)[np.arange(len(t)), t]))
    assert result["tokens"] == 150
    assert math.isclose(result["nll"], expected_nll, rel_tol=1e-6)
    assert len(bars) == 1 and bars[0].total == 150 and bars[0].n == 150
    drawn = terminal.getvalue()
    assert "150/150" in drawn, drawn  # drawn on the terminal, up to the total


def test_eval_without_a_terminal_draws_no_bar(tmp_path, monkeypatch):
    pytest.importorskip("tqdm")
    np.save(tmp_path / "logits.npy", np.zeros((4, 5), dtype=np.float32))
    np.save(tmp_path / "targets.npy", np.arange(4))
    quiet = io.StringIO()
    monkeypatch.setattr(evaluate.sys, "stderr", quiet)
    result = evaluate.evaluate(str(tmp_path / "logits.npy"), str(tmp_path / "targets.npy"))
    assert math.isclose(result["nll"], math.log(5), rel_tol=1e-7)
    assert quiet.getvalue() == ""


def test_bench_plot_draws_a_png_from_measured_throughputs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    # a small sweep, so the test stays quick; the figure is the same code path
    monkeypatch.setattr(bench, "SWEEP_VOCABS", (1000, 4000))
    monkeypatch.setattr(bench, "SWEEP_ELEMENTS", 1 << 16)
    path = tmp_path / "throughput.png"
    data = bench.plot(str(path), threads=2, repeat=2, with_torch=False)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert data["vocabs"] == [1000, 4000]
    assert data["thread_counts"] == [1, 2]
    for series in list(data["by_vocab"].values()) + list(data["by_threads"].values()):
        assert all(np.isfinite(g) and g > 0 for g in series), series
