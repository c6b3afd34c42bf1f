"""cffi builder for the C backend (API, out-of-line mode), run by setup.py at install time.

The kernels are real C files in ``csrc/``: ``sarnn.h`` (preprocessor-free) is read into
``cdef``; ``sarnn.c`` is compiled as a source of the extension. Environment:

``FASTSARNN_SANITIZE=1``
    Build with ``-fsanitize=address,undefined`` (and report it through ``sarnn_sanitized``).
``FASTSARNN_C_TESTING=1``
    Compile the test hooks in (``-DSARNN_TESTING``: allocation-failure injection, a helper
    stall, hiding a kernel variant); the sanitizer build enables them too.
``FASTSARNN_CFLAGS``
    Extra compile flags (for example ``-march=native`` for a local, non-portable build).
"""

import os
import shlex

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")


def _read(name):
    with open(os.path.join(CSRC, name)) as f:
        return f.read()


def _flags():
    # Fast-math at compile time only: linking with -ffast-math would pull in crtfastmath.o,
    # which sets flush-to-zero for the whole Python process. Portable: no -march=native; the
    # AVX2+FMA and AVX-512 variants are chosen at run time (sarnn_isa).
    compile_args = ["-O3", "-ffast-math", "-fopenmp", "-pthread", "-std=gnu11", "-Wall",
                    "-fvisibility=hidden"]
    link_args = ["-fopenmp", "-pthread"]
    macros = []
    sanitize = os.environ.get("FASTSARNN_SANITIZE", "") not in ("", "0")
    if sanitize:
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
               "-fno-sanitize-recover=undefined"]
        compile_args = [a for a in compile_args if a != "-O3"] + ["-O1", "-g"] + san
        link_args += san
        macros.append(("SARNN_SANITIZED", "1"))
    if sanitize or os.environ.get("FASTSARNN_C_TESTING", "") not in ("", "0"):
        macros.append(("SARNN_TESTING", "1"))
    compile_args += shlex.split(os.environ.get("FASTSARNN_CFLAGS", ""))
    return compile_args, link_args, macros


ffibuilder = FFI()
ffibuilder.cdef(_read("sarnn.h"))
_compile, _link, _macros = _flags()
ffibuilder.set_source(
    "fastsarnn._csarnn",
    "#include <stdint.h>\n#include \"sarnn.h\"\n",
    sources=[os.path.relpath(os.path.join(CSRC, "sarnn.c"), os.getcwd())],
    include_dirs=[CSRC],
    depends=[os.path.join(CSRC, n) for n in ("sarnn.h", "sarnn_kernel.h", "sarnn_phases.h",
                                                   "sarnn_driver.h")],
    extra_compile_args=_compile,
    extra_link_args=_link,
    define_macros=_macros,
    # glibc's vector math (libmvec) is what vectorised expf/tanhf calls resolve to.
    libraries=["mvec", "m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
