"""Command line: ``fastsarnn info``, ``fastsarnn bench`` and ``fastsarnn demo``.

Every user mistake ends in one line starting with ``error:`` on stderr and a non-zero exit
status (2 for a bad command line, 1 for a setting that cannot run), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import sys

from . import __version__, _registry
from ._sysinfo import cpu_info  # noqa: F401  (kept importable from here)

DESCRIPTION = """\
Fast inference for a Simple RNN with self-attention: NumPy reference, Numba, C and CUDA
kernels behind one API. Run 'fastsarnn COMMAND --help' for a command's options."""

DEFAULT_DEMO_PLOT = "attention.png"


class _Parser(argparse.ArgumentParser):
    """argparse with one ``error:`` line after the usage of the (sub)command that failed."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


class UserError(Exception):
    """A mistake in the command line or the environment: printed as one ``error:`` line."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def _version_of(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _selected_backend():
    """(requested name, where it comes from) for the current setting; raises UserError for
    an unknown name (in $FASTSARNN_BACKEND, say)."""
    try:
        name = _registry._requested(None)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    env = os.environ.get(_registry._config.ENV_BACKEND)
    source = "set_backend" if _registry._global_choice else (
        f"${_registry._config.ENV_BACKEND}" if env else "default")
    return name, source


def info(out=sys.stdout) -> int:
    """Print versions, CPU and every backend's availability; returns the exit status
    (1 when the selected backend cannot run here)."""
    requested, source = _selected_backend()         # fails before printing half a report
    cpu = cpu_info()
    print(f"fastsarnn {__version__} ({os.path.dirname(os.path.abspath(__file__))})", file=out)
    print(f"python    {platform.python_version()} ({sys.executable})", file=out)
    for dist in ("numpy", "numba", "llvmlite", "cffi", "numba-cuda", "torch", "jax", "dask"):
        print(f"{dist:<10}{_version_of(dist)}" if len(dist) < 10
              else f"{dist} {_version_of(dist)}", file=out)
    print(f"cpu       {cpu['model']}", file=out)
    print(f"cores     {cpu['cores']}", file=out)
    print(f"simd      {' '.join(cpu['simd']) or 'none detected'}", file=out)
    infos = _registry.backends()
    selected = _registry.get_backend()
    how = "automatic choice" if requested == "auto" else f"chosen by {source}"
    print(f"backend   {selected} ({how})", file=out)
    print("backends:", file=out)
    for name, bi in infos.items():
        status = "available" if bi.available else f"unavailable: {bi.reason}"
        print(f"  {name:<6} {status}", file=out)
        if bi.available:
            extra = getattr(_registry._load(name), "describe", None)
            if extra is not None:
                print(f"         {extra()}", file=out)
    if not infos[selected].available:
        raise UserError(f"the selected backend {selected!r} ({how}) cannot run here: "
                        f"{infos[selected].reason}; every forward and step will raise "
                        "BackendUnavailableError")
    return 0


def _check_backend(parser, name):
    """A --backend value: unknown names and unavailable backends are command-line errors."""
    if name is None:
        return None
    try:
        _registry.resolve(name)
    except ValueError as exc:
        parser.error(str(exc))
    except _registry.BackendUnavailableError as exc:
        parser.error(str(exc))
    return name


def build_parser():
    parser = _Parser(prog="fastsarnn", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastsarnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser, title="commands")
    sub.add_parser("info", help="versions, CPU, and every backend with whether it can run",
                   description="Versions, CPU, and every backend with whether it can run "
                               "here (and why not).")
    bench = sub.add_parser("bench", help="benchmark suite (every backend, the reference and "
                                         "the peers)",
                           description="The benchmark configurations on every available "
                                       "backend, the NumPy reference and the installed peers; "
                                       "tables are printed as each configuration finishes.")
    from .bench import add_arguments
    add_arguments(bench)
    demo = sub.add_parser("demo", help="the shipped recall models: accuracy and attention map",
                          description="Evaluate the shipped recall models on fresh examples "
                                      "and show where the attention model looks.")
    demo.add_argument("--n", type=int, default=500, help="fresh examples to evaluate")
    demo.add_argument("--seed", type=int, default=2024)
    demo.add_argument("--backend", default=None,
                      help=f"one of {', '.join(_registry._CHOICES)} (default: the setting, "
                           "else the fastest available)")
    demo.add_argument("--plot", metavar="FILE.png", nargs="?", const=DEFAULT_DEMO_PLOT,
                      help=f"write a matplotlib heat map (default file: {DEFAULT_DEMO_PLOT})")
    return parser, {"bench": bench, "demo": demo}


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end was closed (poll reports an
    error condition on its writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):     # no poll, no file descriptor
        return False


def main(argv=None) -> int:
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command != "info":
            _selected_backend()             # an unknown $FASTSARNN_BACKEND is an error: say so
        if args.command == "info":
            status = info()
        elif args.command == "demo":
            dp = subparsers["demo"]
            if args.n < 1:
                dp.error(f"--n must be >= 1; got {args.n}")
            _check_backend(dp, args.backend)
            from . import demo as _demo
            _demo.run(n=args.n, seed=args.seed, backend=args.backend, plot=args.plot)
            status = 0
        elif args.command == "bench":
            from .bench import run_cli
            status = run_cli(args, subparsers["bench"])
        else:
            return 2
        sys.stdout.flush()          # a reader gone shows here, not at the exit's flush
        return status
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():    # another pipe broke: an error like any other
            print(f"error: {exc}", file=sys.stderr)
            return 1
        # the reader of the output went away (`fastsarnn bench | head`): stop quietly, as
        # Python's documentation advises, with stdout pointed at /dev/null so that the
        # interpreter's flush at exit raises nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except (_registry.BackendUnavailableError, OSError) as exc:
        # a setting that cannot run here, a file that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 1
