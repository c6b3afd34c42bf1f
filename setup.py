"""Minimal setup.py: only what pyproject.toml cannot say, the optional cffi C extension.

A failed compile does not abort the install: the package installs without the C backend
and ``fastsarnn.backends()`` reports why (the build error is saved next to the package).
"""

import os
import traceback

from setuptools import setup
from setuptools.command.build_ext import build_ext

_ERROR_FILE = "_csarnn_build_error.txt"


class OptionalBuildExt(build_ext):
    """Build the C extension if possible; record the reason if not. Always rebuilds, so a
    change of flags (FASTSARNN_SANITIZE) never reuses objects compiled with other flags."""

    def initialize_options(self):
        super().initialize_options()
        self.force = True

    def _record(self, text):
        target = os.path.join(self.build_lib, "fastsarnn")
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, _ERROR_FILE), "w") as f:
            f.write(text)

    def run(self):
        self.force = True
        try:
            super().run()
        except Exception:
            self._record(traceback.format_exc())
            self.warn("fastsarnn: the C extension was not built; the 'c' backend will be "
                      "unavailable (see fastsarnn info)")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:
            self._record(traceback.format_exc())
            self.warn(f"fastsarnn: building {ext.name} failed; the 'c' backend will be "
                      "unavailable (see fastsarnn info)")


setup(
    cffi_modules=["fastsarnn/_build_c.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
