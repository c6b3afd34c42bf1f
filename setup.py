"""Minimal setup.py: only what pyproject.toml cannot say, the optional cffi C extension.

A failed compile does not abort the install: the package installs without the C backend
and ``fastsarnn.backends()`` reports why (the build error is saved next to the package).
"""

import os
import traceback

from setuptools import setup
from setuptools.command.build_ext import build_ext

_ERROR_FILE = "_csarnn_build_error.txt"
_HERE = os.path.dirname(os.path.abspath(__file__))


class OptionalBuildExt(build_ext):
    """Build the C extension if possible; record the reason if not. Always rebuilds, so a
    change of flags (FASTSARNN_SANITIZE) never reuses objects compiled with other flags.

    A failed build removes the extension an earlier build left (in the build folder, and
    in the source tree for an in-place or editable build): an old kernel must never stand
    in for the sources that failed to compile. A build that succeeds removes the error
    an earlier one recorded."""

    def initialize_options(self):
        super().initialize_options()
        self.force = True
        self._failed = False
        self._in_place = False

    def _package_dirs(self):
        """Where the package's built files go: the build folder, and the source tree for
        an in-place (editable) build. fastsarnn is a flat layout: the package is
        ``fastsarnn/`` beside this file."""
        dirs = [self.build_lib]
        if self._in_place:
            dirs.append(_HERE)
        return dirs

    def _remove(self, relative):
        for d in self._package_dirs():
            path = os.path.join(d, relative)
            if os.path.exists(path):
                os.remove(path)

    def _fail(self, message):
        if self._failed:      # the first error is the one to keep (later ones follow from it)
            return
        self._failed = True
        for ext in self.extensions:
            self._remove(self.get_ext_filename(self.get_ext_fullname(ext.name)))
        for d in self._package_dirs():
            os.makedirs(os.path.join(d, "fastsarnn"), exist_ok=True)
            with open(os.path.join(d, "fastsarnn", _ERROR_FILE), "w") as f:
                f.write(traceback.format_exc())
        self.warn(message)

    def run(self):
        self.force = True
        # setuptools' run() builds with inplace off, then copies to the source tree
        self._in_place = bool(self.inplace or getattr(self, "editable_mode", False))
        try:
            super().run()
        except Exception:
            self._fail("fastsarnn: the C extension was not built; the 'c' backend will be "
                       "unavailable (see fastsarnn info)")
        if not self._failed:
            self._remove(os.path.join("fastsarnn", _ERROR_FILE))

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:
            self._fail(f"fastsarnn: building {ext.name} failed; the 'c' backend will be "
                       "unavailable (see fastsarnn info)")


setup(
    cffi_modules=["fastsarnn/_build_c.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
