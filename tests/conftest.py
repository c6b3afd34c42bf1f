"""Backend fixture: the parity and error suites run once per backend.

``FASTSARNN_TEST_BACKENDS`` (comma list, default ``numpy,numba,c``) says which backends the
suites are parametrised over; ``FASTSARNN_REQUIRE_BACKENDS`` names those that must be
available: for them "unavailable" fails the test instead of skipping it.
"""

import os
import sys

import pytest

import fastsarnn as fs


def _names(var, default=""):
    return [n.strip() for n in os.environ.get(var, default).split(",") if n.strip()]


TEST_BACKENDS = _names("FASTSARNN_TEST_BACKENDS", "numpy,numba,c")
REQUIRED_BACKENDS = _names("FASTSARNN_REQUIRE_BACKENDS")


@pytest.fixture(params=TEST_BACKENDS)
def backend(request):
    name = request.param
    info = fs.backends()[name]
    if not info.available:
        if name in REQUIRED_BACKENDS:
            pytest.fail(f"backend {name!r} is required (FASTSARNN_REQUIRE_BACKENDS) but "
                        f"unavailable: {info.reason}")
        pytest.skip(f"backend {name!r} unavailable: {info.reason}")
    return name


#: The interpreter's thread switch interval on the CUDA simulator (Python's default: 5 ms).
SIMULATOR_SWITCH_INTERVAL = 0.0005


def pytest_configure(config):
    """The CUDA simulator runs a Python thread per CUDA thread, and one more that polls them
    and never blocks; a thread waiting at a barrier (or a shuffle) gets the interpreter
    back only when that poller is made to yield, every switch interval. At 0.5 ms instead
    of 5 ms its launches run several times faster (a 4-thread forward 1.2 s -> 0.37 s, a
    64-thread one with shuffles 38 s -> 6 s, here)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        config._fastsarnn_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL)


def pytest_unconfigure(config):
    if hasattr(config, "_fastsarnn_switch_interval"):
        sys.setswitchinterval(config._fastsarnn_switch_interval)


def pytest_report_header(config):
    lines = [f"fastsarnn {fs.__version__} from {os.path.dirname(fs.__file__)}"]
    for name, info in fs.backends().items():
        lines.append(f"  backend {name}: " + ("available" if info.available
                                              else f"unavailable ({info.reason})"))
    return lines


@pytest.fixture(autouse=True)
def _small_cuda_blocks(request, monkeypatch):
    """CUDA runs use tiny blocks (FASTSARNN_TEST_CUDA_BLOCK, default 4) so that small inputs
    span several blocks and leave partial ones (H, Ha and n not multiples of the block);
    FASTSARNN_TEST_CUDA_SEQUENCES_PER_BLOCK (default 1) runs them on the packed kernel,
    that many sequences per block, and a test whose (last) launch ran another kernel
    fails."""
    if "backend" in request.fixturenames and request.getfixturevalue("backend") == "cuda":
        from fastsarnn import _config
        monkeypatch.setattr(_config, "CUDA_BLOCK_SIZE",
                            int(os.environ.get("FASTSARNN_TEST_CUDA_BLOCK", "4")))
        per_block = int(os.environ.get("FASTSARNN_TEST_CUDA_SEQUENCES_PER_BLOCK", "1"))
        monkeypatch.setattr(_config, "CUDA_SEQUENCES_PER_BLOCK", per_block)
        from fastsarnn.backends import cuda as cuda_backend
        cuda_backend._LAST_LAUNCH.plan = {}
        yield
        # the kernel the setting asks for is the one that ran (a launch in this thread)
        ran = cuda_backend.last_launch().get("sequences_per_block", per_block)
        assert ran == per_block, (f"the cuda launch ran {ran} sequences per block, not "
                                  f"{per_block}")
    else:
        yield
