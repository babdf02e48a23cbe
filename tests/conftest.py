import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

THREAD_COUNTS = [1, 2, 3, 8]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tolerance(dtype):
    """Agreement we promise with the float64 reference."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-6, atol=2e-6)
    return dict(rtol=1e-12, atol=1e-12)
