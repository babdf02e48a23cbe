"""ce-kernels eval on bad, odd and hostile files, through the real command
line: every refusal is one line on stderr and exit status 2, nothing hangs,
nothing is unpickled, and no input is ever modified. Files laid out in
unusual ways but holding valid data are scored correctly (checked against a
float64 NumPy computation), and --per-token output is replaced atomically."""
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import reference as ref

OUTSIDE_SOURCE_TREE = tempfile.gettempdir()
TIMEOUT = 120          # seconds; a run that hangs (a FIFO opened for reading) fails the test
UINT64_HUGE = 2**64 - 100   # wraps to -100 when cast to int64


def run_eval(*args):
    return subprocess.run([sys.executable, "-m", "ce_kernels", "eval", *map(str, args)],
                          capture_output=True, text=True, cwd=OUTSIDE_SOURCE_TREE,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def expected_numbers(logits, targets, ignore_index=-100):
    """(metrics, per-position NLL with NaN where ignored), plainly in float64."""
    x = np.asarray(logits).astype(np.float64).reshape(-1, logits.shape[-1])
    t = np.asarray(targets).reshape(-1).astype(np.int64)
    counted = t != ignore_index
    logp = ref.log_softmax(x)
    nll_all = np.full(len(t), np.nan)
    nll_all[counted] = -logp[np.arange(len(t))[counted], t[counted]]
    nll = nll_all[counted]
    entropy = -(np.exp(logp) * logp).sum(-1)[counted]
    metrics = {"tokens": int(counted.sum()), "ignored": int((~counted).sum()),
               "nll": nll.mean(), "perplexity": np.exp(nll.mean()),
               "accuracy": np.mean(x.argmax(-1)[counted] == t[counted]),
               "entropy": entropy.mean()}
    return metrics, nll_all.reshape(np.shape(targets))


def check_json(proc, expected):
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=2e-6), key
    return got


def snapshot(directory):
    """Name -> (kind, size, mtime, sha256) of everything in ``directory``: a
    run that writes, truncates, creates or leaves behind anything differs."""
    out = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = os.lstat(path)
        digest = None
        if stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        out[name] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return out


def assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ce-kernels eval: error: "), proc.stderr
    assert fragment in lines[0], (fragment, proc.stderr)
    assert proc.stdout == ""


def npy_with_header(header, data=b"", version=(1, 0), data_offset=None):
    """Bytes of a .npy file with a header dict written by hand. The header is
    padded so the data starts at ``data_offset`` (default: a multiple of 64)."""
    text = header.encode("latin1")
    length_bytes = 2 if version == (1, 0) else 4
    prefix = 6 + 2 + length_bytes
    if data_offset is None:
        data_offset = -(-(prefix + len(text) + 1) // 64) * 64
    pad = data_offset - prefix - len(text) - 1
    assert pad >= 0
    text = text + b" " * pad + b"\n"
    return (b"\x93NUMPY" + bytes(version) + len(text).to_bytes(length_bytes, "little")
            + text + data)


@pytest.fixture
def good(tmp_path, rng):
    logits = (rng.standard_normal((4, 6, 50)) * 2).astype(np.float32)
    targets = rng.integers(0, 50, (4, 6))
    targets[0, :2] = -100
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "targets.npy", targets)
    return tmp_path, logits, targets


class Evil:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- the matrix of bad files ---------------------------------------------------------
# Each case builds its files in tmp_path and returns (arguments, a fragment of
# the expected error line).

def case_missing(d):
    return [d / "nope.npy", d / "targets.npy"], "not found"


def case_missing_targets(d):
    return [d / "logits.npy", d / "nope.npy"], "not found"


def case_path_through_a_file(d):
    return [d / "logits.npy" / "x.npy", d / "targets.npy"], "Not a directory"


def case_directory_logits(d):
    (d / "sub").mkdir()
    return [d / "sub", d / "targets.npy"], "is a directory"


def case_directory_targets(d):
    (d / "sub").mkdir()
    return [d / "logits.npy", d / "sub"], "is a directory"


def case_fifo_logits(d):
    os.mkfifo(d / "fifo")
    return [d / "fifo", d / "targets.npy"], "not a regular file"


def case_fifo_targets(d):
    os.mkfifo(d / "fifo")
    return [d / "logits.npy", d / "fifo"], "not a regular file"


def case_symlink_to_fifo(d):
    os.mkfifo(d / "fifo")
    os.symlink(d / "fifo", d / "link.npy")
    return [d / "link.npy", d / "targets.npy"], "not a regular file"


def case_socket(d):
    path = str(d / "sock")
    if len(path) > 100:
        pytest.skip("temporary directory path too long for a Unix socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()
    return [d / "sock", d / "targets.npy"], "not a regular file"


def case_dev_zero_logits(d):
    return ["/dev/zero", d / "targets.npy"], "not a regular file"


def case_dev_zero_targets(d):
    return [d / "logits.npy", "/dev/zero"], "not a regular file"


def case_symlink_to_dev_zero(d):
    os.symlink("/dev/zero", d / "zero.npy")
    return [d / "zero.npy", d / "targets.npy"], "not a regular file"


def case_empty(d):
    (d / "empty.npy").write_bytes(b"")
    return [d / "empty.npy", d / "targets.npy"], "empty"


def case_not_npy(d):
    (d / "text.npy").write_text("just some text, long enough to hold a header\n" * 3)
    return [d / "text.npy", d / "targets.npy"], "not a .npy file"


def case_truncated_magic(d):
    (d / "short.npy").write_bytes(b"\x93NUM")
    return [d / "short.npy", d / "targets.npy"], "not a .npy file"


def case_truncated_header(d):
    (d / "cut.npy").write_bytes((d / "logits.npy").read_bytes()[:30])
    return [d / "cut.npy", d / "targets.npy"], "bad .npy header"


def case_truncated_data(d):
    data = (d / "logits.npy").read_bytes()
    (d / "cut.npy").write_bytes(data[:len(data) // 2])
    return [d / "cut.npy", d / "targets.npy"], "truncated"


def case_truncated_targets(d):
    data = (d / "targets.npy").read_bytes()
    (d / "cut.npy").write_bytes(data[:-8])
    return [d / "logits.npy", d / "cut.npy"], "truncated"


def case_header_shape_exceeds_file(d):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 4, 6, 50), }"
    (d / "huge.npy").write_bytes(npy_with_header(header, b"\0" * 4800))
    return [d / "huge.npy", d / "targets.npy"], "truncated"


def case_header_shape_overflows_int64(d):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904, 50), }"
    (d / "huge.npy").write_bytes(npy_with_header(header, b"\0" * 4800))
    return [d / "huge.npy", d / "targets.npy"], "truncated"


def case_negative_shape(d):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 50), }"
    (d / "neg.npy").write_bytes(npy_with_header(header, b"\0" * 800))
    return [d / "neg.npy", d / "targets.npy"], "bad .npy header"


def case_garbage_header(d):
    (d / "garbage.npy").write_bytes(npy_with_header("{'descr': <f4, shape: )(", b"\0" * 64))
    return [d / "garbage.npy", d / "targets.npy"], "bad .npy header"


def case_header_calls_code(d):
    marker = d / "executed"
    header = f"{{'descr': __import__('os').mkdir({str(marker)!r}), 'fortran_order': False, 'shape': (4, 6, 50), }}"
    (d / "code.npy").write_bytes(npy_with_header(header, b"\0" * 4800))
    return [d / "code.npy", d / "targets.npy"], "bad .npy header"


def case_unknown_version(d):
    data = bytearray((d / "logits.npy").read_bytes())
    data[6] = 9
    (d / "v9.npy").write_bytes(bytes(data))
    return [d / "v9.npy", d / "targets.npy"], "version"


def case_object_logits(d):
    arr = np.empty((4, 6, 50), dtype=object)
    arr[...] = 1.0
    arr[0, 0, 0] = Evil(str(d / "unpickled"))
    np.save(d / "obj.npy", arr, allow_pickle=True)
    return [d / "obj.npy", d / "targets.npy"], "object"


def case_object_targets(d):
    arr = np.empty((4, 6), dtype=object)
    arr[...] = 1
    arr[0, 0] = Evil(str(d / "unpickled"))
    np.save(d / "obj.npy", arr, allow_pickle=True)
    return [d / "logits.npy", d / "obj.npy"], "object"


def case_structured_logits(d):
    np.save(d / "rec.npy", np.zeros((4, 6, 50), dtype=[("a", "<f2"), ("b", "<f2")]))
    return [d / "rec.npy", d / "targets.npy"], "structured"


def case_structured_targets(d):
    np.save(d / "rec.npy", np.zeros((4, 6), dtype=[("id", "<i8")]))
    return [d / "logits.npy", d / "rec.npy"], "structured"


def case_subarray_logits(d):
    header = "{'descr': [('x', '<f4', (50,))], 'fortran_order': False, 'shape': (4, 6), }"
    (d / "sub.npy").write_bytes(npy_with_header(header, b"\0" * 4800))
    return [d / "sub.npy", d / "targets.npy"], "structured"


def case_fortran_logits(d):
    logits = np.load(d / "logits.npy").reshape(24, 50)
    np.save(d / "fortran.npy", np.asfortranarray(logits))
    return [d / "fortran.npy", d / "targets.npy"], "np.ascontiguousarray"


def case_transposed_logits(d):
    """A (V, T) matrix saved as .T: the usual way a Fortran-ordered file arises."""
    by_vocab = np.ascontiguousarray(np.load(d / "logits.npy").reshape(24, 50).T)
    np.save(d / "t.npy", by_vocab.T)
    np.save(d / "t24.npy", np.load(d / "targets.npy").reshape(24))
    return [d / "t.npy", d / "t24.npy"], "Fortran"


def case_zero_d_logits(d):
    np.save(d / "scalar.npy", np.float32(1.5))
    np.save(d / "scalar_t.npy", np.int64(0))
    return [d / "scalar.npy", d / "scalar_t.npy"], "0-d"


def case_zero_d_targets(d):
    np.save(d / "one.npy", np.arange(50, dtype=np.float32))
    np.save(d / "scalar_t.npy", np.int64(3))
    return [d / "one.npy", d / "scalar_t.npy"], "0-d"


def case_uint64_id_wraps_to_ignore_index(d):
    t = np.load(d / "targets.npy").astype(np.uint64)
    t[0, :2] = 7
    t[3, 4] = UINT64_HUGE
    np.save(d / "u64.npy", t)
    return [d / "logits.npy", d / "u64.npy"], f"token id {UINT64_HUGE} at TARGETS[3, 4]"


def case_uint64_first_bad_position_named(d):
    t = np.load(d / "targets.npy").astype(np.uint64)
    t[0, :2] = 7
    t[2, 1] = 2**63
    t[2, 3] = 999
    np.save(d / "u64.npy", t)
    return [d / "logits.npy", d / "u64.npy", "--chunk-rows", 100], f"token id {2**63} at TARGETS[2, 1]"


def case_ignore_index_above_int64(d):
    return [d / "logits.npy", d / "targets.npy", "--ignore-index", 2**63], "--ignore-index"


def case_ignore_index_below_int64(d):
    return [d / "logits.npy", d / "targets.npy", "--ignore-index", -2**63 - 1], "--ignore-index"


def case_unreadable(d):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    (d / "logits.npy").chmod(0)
    return [d / "logits.npy", d / "targets.npy"], "Permission denied"


def case_output_is_logits(d):
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "logits.npy"], "same file as LOGITS"


def case_output_is_targets(d):
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "targets.npy"], "same file as TARGETS"


def case_output_is_logits_by_another_name(d):
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "." / "logits.npy"], "same file as LOGITS"


def case_output_symlink_to_logits(d):
    os.symlink(d / "logits.npy", d / "link.npy")
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "link.npy"], "same file as LOGITS"


def case_input_symlink_output_real(d):
    os.symlink(d / "logits.npy", d / "link.npy")
    return [d / "link.npy", d / "targets.npy", "--per-token", d / "logits.npy"], "same file as LOGITS"


def case_output_hard_link_to_logits(d):
    os.link(d / "logits.npy", d / "hard.npy")
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "hard.npy"], "same file as LOGITS"


def case_output_is_directory(d):
    (d / "outdir").mkdir()
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "outdir"], "is a directory"


def case_output_in_missing_directory(d):
    return ([d / "logits.npy", d / "targets.npy", "--per-token", d / "no" / "such" / "out.npy"],
            "does not exist")


def case_output_read_only(d):
    if os.geteuid() == 0:
        pytest.skip("root writes files whatever their permissions")
    np.save(d / "nll.npy", np.arange(3.0))
    (d / "nll.npy").chmod(0o444)
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "nll.npy"], "Permission denied"


def case_output_is_fifo(d):
    os.mkfifo(d / "out.fifo")
    return [d / "logits.npy", d / "targets.npy", "--per-token", d / "out.fifo"], "not a regular file"


BAD_CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items())
             if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_file_is_one_line_error_and_changes_nothing(good, name):
    d = good[0]
    args, fragment = BAD_CASES[name](d)
    before = snapshot(d)
    proc = run_eval(*args)
    assert_one_line_error(proc, fragment)
    assert snapshot(d) == before     # inputs intact, nothing created or left behind


# ---- valid data in unusual layouts: read correctly --------------------------------------

def test_fortran_ordered_targets_are_read_in_logical_order(good):
    d, logits, targets = good
    flat_logits = logits.reshape(24, 50)
    np.save(d / "flat.npy", flat_logits)
    square_targets = targets.reshape(4, 6)
    np.save(d / "tf.npy", np.asfortranarray(square_targets))
    assert np.load(d / "tf.npy", mmap_mode="r").flags.f_contiguous
    np.save(d / "l2.npy", np.ascontiguousarray(logits))
    metrics, nll = expected_numbers(logits, square_targets)
    check_json(run_eval(d / "l2.npy", d / "tf.npy", "--json", "--chunk-rows", 5,
                        "--per-token", d / "nll.npy"), metrics)
    np.testing.assert_allclose(np.load(d / "nll.npy"), nll, rtol=2e-6)


def test_fortran_ordered_3d_targets_with_shift(tmp_path, rng):
    logits = rng.standard_normal((2, 3, 7, 40)).astype(np.float32)
    targets = rng.integers(0, 40, (2, 3, 7))
    targets[1, 2, 3] = -100
    np.save(tmp_path / "l.npy", logits)
    np.save(tmp_path / "t.npy", np.asfortranarray(targets))
    metrics, nll = expected_numbers(logits[..., :-1, :], targets[..., 1:])
    check_json(run_eval(tmp_path / "l.npy", tmp_path / "t.npy", "--shift", "--json",
                        "--chunk-rows", 4, "--per-token", tmp_path / "nll.npy"), metrics)
    got = np.load(tmp_path / "nll.npy")
    assert got.shape == (2, 3, 6)
    np.testing.assert_allclose(got, nll, rtol=2e-6)


def test_uint64_and_big_endian_targets(good):
    d, logits, targets = good
    t = np.where(targets == -100, 3, targets)
    np.save(d / "u64.npy", t.astype(np.uint64))
    np.save(d / "be.npy", t.astype(">i4"))
    metrics, _ = expected_numbers(logits, t)
    for name in ("u64.npy", "be.npy"):
        check_json(run_eval(d / "logits.npy", d / name, "--json", "--chunk-rows", 5), metrics)


def test_ignore_index_at_the_ends_of_int64(good):
    d, logits, targets = good
    t = np.where(targets == -100, 3, targets)
    np.save(d / "t.npy", t)
    metrics, _ = expected_numbers(logits, t)
    for ignore in (2**63 - 1, -2**63):
        check_json(run_eval(d / "logits.npy", d / "t.npy", "--json", "--ignore-index", ignore),
                   metrics)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_big_endian_logits(good, dtype):
    d, logits, targets = good
    stored = logits.astype(dtype)
    np.save(d / "be.npy", stored)
    metrics, _ = expected_numbers(stored.astype(np.float64), targets)
    check_json(run_eval(d / "be.npy", d / "targets.npy", "--json", "--chunk-rows", 7), metrics)


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_unaligned_logits(good, dtype):
    """A hand-made header that leaves the data off its natural alignment."""
    d, logits, targets = good
    stored = logits.astype(dtype)
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': (4, 6, 50), }}"
    itemsize = stored.dtype.itemsize
    (d / "odd.npy").write_bytes(npy_with_header(header, stored.tobytes(), data_offset=128 + itemsize // 2))
    assert not np.load(d / "odd.npy", mmap_mode="r").flags.aligned
    metrics, _ = expected_numbers(stored, targets)
    check_json(run_eval(d / "odd.npy", d / "targets.npy", "--json", "--chunk-rows", 7), metrics)


def test_version_2_header(good):
    d, logits, targets = good
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 6, 50), }"
    (d / "v2.npy").write_bytes(npy_with_header(header, logits.tobytes(), version=(2, 0)))
    metrics, _ = expected_numbers(logits, targets)
    check_json(run_eval(d / "v2.npy", d / "targets.npy", "--json"), metrics)


def test_kernel_rows_accepts_only_what_the_kernels_read(rng):
    """Whatever the layout of a chunk, what reaches the kernels is 2-D, native,
    aligned, with a contiguous last axis, and holds the same numbers."""
    from ce_kernels.evaluate import _kernel_ready, _kernel_rows

    base = rng.standard_normal((12, 30)).astype(np.float32)
    raw = np.zeros(base.nbytes + 4, dtype=np.uint8)
    unaligned = raw[2:2 + base.nbytes].view(np.float32).reshape(12, 30)
    unaligned[...] = base
    layouts = {                                         # name: (chunk, its values)
        "fortran": (np.asfortranarray(base), base),
        "columns strided": (np.repeat(base, 2, axis=1)[:, ::2], base),
        "big-endian": (base.astype(">f4"), base),
        "unaligned": (unaligned, base),
        "rows reversed": (base[::-1], base[::-1]),
        "columns reversed": (base[:, ::-1], base[:, ::-1]),
        "one row of many": (base[3:4], base[3:4]),
    }
    for name, (chunk, values) in layouts.items():
        rows = _kernel_rows(chunk)
        assert _kernel_ready(rows), name
        np.testing.assert_array_equal(rows.astype(np.float32), values, err_msg=name)
    assert _kernel_rows(base) is base                   # the common case is not copied
    assert not _kernel_ready(base[:, ::2])
    assert not _kernel_ready(base.reshape(12, 30, 1))
    assert not _kernel_ready(base.astype(">f4"))


# ---- --per-token: written atomically --------------------------------------------------

def test_failed_run_keeps_existing_output_and_leaves_no_temp(good):
    """The out-of-range id sits in the last chunk: the run fails after having
    written the output of earlier chunks, and the old output survives."""
    d, logits, targets = good
    t = targets.astype(np.uint64)
    t[0, :2] = 1
    t[3, 5] = UINT64_HUGE
    np.save(d / "u64.npy", t)
    old = np.arange(5, dtype=np.float64)
    np.save(d / "nll.npy", old)
    before = snapshot(d)
    proc = run_eval(d / "logits.npy", d / "u64.npy", "--chunk-rows", 1, "--per-token", d / "nll.npy")
    assert_one_line_error(proc, "TARGETS[3, 5]")
    assert snapshot(d) == before
    np.testing.assert_array_equal(np.load(d / "nll.npy"), old)


def test_successful_run_replaces_existing_output(good):
    d, logits, targets = good
    np.save(d / "nll.npy", np.arange(5.0))
    os.chmod(d / "nll.npy", 0o640)
    metrics, nll = expected_numbers(logits, targets)
    check_json(run_eval(d / "logits.npy", d / "targets.npy", "--json", "--chunk-rows", 5,
                        "--per-token", d / "nll.npy"), metrics)
    got = np.load(d / "nll.npy")
    assert got.dtype == np.float32 and got.shape == (4, 6)
    np.testing.assert_allclose(got, nll, rtol=2e-6)
    assert stat.S_IMODE(os.stat(d / "nll.npy").st_mode) == 0o640
    assert sorted(os.listdir(d)) == ["logits.npy", "nll.npy", "targets.npy"]


def test_new_output_gets_the_usual_permissions(good):
    d, logits, targets = good
    proc = run_eval(d / "logits.npy", d / "targets.npy", "--per-token", d / "nll.npy")
    assert proc.returncode == 0, proc.stderr
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(d / "nll.npy").st_mode) == 0o666 & ~mask


def test_output_through_a_symlink_writes_its_target(good):
    d, logits, targets = good
    (d / "results").mkdir()
    os.symlink(d / "results" / "nll.npy", d / "link.npy")
    proc = run_eval(d / "logits.npy", d / "targets.npy", "--per-token", d / "link.npy")
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink(d / "link.npy")
    np.testing.assert_allclose(np.load(d / "results" / "nll.npy"),
                               expected_numbers(logits, targets)[1], rtol=2e-6)


def test_interrupted_run_removes_its_temporary_file(good, monkeypatch):
    from ce_kernels import _rows, evaluate

    d, logits, targets = good
    np.save(d / "nll.npy", np.arange(3.0))
    before = snapshot(d)
    real = _rows.Problem.token_stats_rows
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_rows.Problem, "token_stats_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(str(d / "logits.npy"), str(d / "targets.npy"), chunk_rows=4,
                          per_token=str(d / "nll.npy"), progress=False)
    assert len(calls) == 3
    assert snapshot(d) == before


# ---- failures the checks cannot foresee -----------------------------------------------

def test_permission_denied_is_an_eval_error(good, monkeypatch):
    """Tests may run as root, who reads any file: the refusal is forced."""
    from ce_kernels import evaluate

    d = good[0]
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("logits.npy"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(evaluate.EvalError, match="cannot read LOGITS file .*Permission denied"):
        evaluate.evaluate(str(d / "logits.npy"), str(d / "targets.npy"), progress=False)


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), ValueError("mmap failed")])
def test_unexpected_loading_failure_is_an_eval_error(good, monkeypatch, exc):
    from ce_kernels import evaluate

    d = good[0]

    def failing_memmap(*args, **kwargs):
        raise exc

    monkeypatch.setattr(np, "memmap", failing_memmap)
    with pytest.raises(evaluate.EvalError, match="cannot read LOGITS file"):
        evaluate.evaluate(str(d / "logits.npy"), str(d / "targets.npy"), progress=False)


@pytest.mark.parametrize("exc, status, line", [
    (KeyboardInterrupt(), 130, "ce-kernels eval: interrupted"),
    (OSError(5, "Input/output error"), 2, "ce-kernels eval: error: [Errno 5] Input/output error"),
])
def test_cli_reports_interrupts_and_late_io_errors_on_one_line(good, monkeypatch, capsys,
                                                                 exc, status, line):
    from ce_kernels import cli, evaluate

    d = good[0]

    def failing(*args, **kwargs):
        raise exc

    monkeypatch.setattr(evaluate, "evaluate", failing)
    assert cli.main(["eval", str(d / "logits.npy"), str(d / "targets.npy")]) == status
    assert capsys.readouterr().err.splitlines() == [line]
