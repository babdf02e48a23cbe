import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import ce_kernels as ck

try:
    from hypothesis import HealthCheck, Phase, settings
except ImportError:  # the property tests are skipped without hypothesis
    settings = None

if settings is not None:
    # "ci", the default: 400 examples per property, the same ones
    # on every run (derandomize), nothing stored between runs, no deadline
    # (a large vocabulary or a cold cache may take a while). "long"
    # (pytest --hypothesis-profile=long): twenty times as many, drawn afresh
    # on each run; a failure prints the seed to reproduce it.
    _common = dict(
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example],
    )
    settings.register_profile("ci", max_examples=400, derandomize=True, **_common)
    settings.register_profile("long", max_examples=8000, derandomize=False, **_common)
    # "sanitize" (tools/sanitize.sh): a short run under ASan and UBSan, which
    # make every call many times slower; no shrinking, since a sanitizer ends
    # the process at its first report anyway.
    settings.register_profile("sanitize", max_examples=50, derandomize=True,
                              phases=[Phase.explicit, Phase.generate], **_common)
    settings.load_profile("ci")

THREAD_COUNTS = [1, 2, 3, 8]


def _available_isas():
    order = ["sse2", "avx2", "avx512"]
    best = ck.build_info()["best_isa"]
    return order[: order.index(best) + 1] if best in order else [best]


@pytest.fixture(params=_available_isas())
def isa(request):
    """Runs a test on one instruction-set path. Each path has its own vector
    width and exponential, so modules that exercise the kernels' arithmetic
    run on all of them (``pytestmark = pytest.mark.usefixtures("isa")``)."""
    active = ck.build_info()["isa"]
    ck.set_isa(request.param)
    yield request.param
    ck.set_isa(active)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tolerance(dtype):
    """Agreement we promise with the float64 reference."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-6, atol=2e-6)
    return dict(rtol=1e-12, atol=1e-12)
