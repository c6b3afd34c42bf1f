"""Command line: ``fastsarnn info`` and ``fastsarnn bench``."""

from __future__ import annotations

import argparse
import os
import platform
import sys

from . import __version__, _registry

_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f")


def cpu_info() -> dict:
    """CPU model, logical cores and the SIMD flags fastsarnn cares about."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(),
            "simd": [f for f in _SIMD_FLAGS if f in flags]}


def _version_of(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def info(out=sys.stdout) -> None:
    """Print versions, CPU and every backend's availability."""
    cpu = cpu_info()
    print(f"fastsarnn {__version__} ({os.path.dirname(os.path.abspath(__file__))})", file=out)
    print(f"python    {platform.python_version()} ({sys.executable})", file=out)
    for dist in ("numpy", "numba", "llvmlite", "cffi", "numba-cuda", "torch", "jax", "dask"):
        print(f"{dist:<10}{_version_of(dist)}", file=out) if len(dist) < 10 else print(f"{dist} {_version_of(dist)}", file=out)
    print(f"cpu       {cpu['model']}", file=out)
    print(f"cores     {cpu['cores']}", file=out)
    print(f"simd      {' '.join(cpu['simd']) or 'none detected'}", file=out)
    print(f"backend   {_registry.get_backend()} (what 'auto' and the current setting pick)",
          file=out)
    print("backends:", file=out)
    for name, bi in _registry.backends().items():
        status = "available" if bi.available else f"unavailable: {bi.reason}"
        print(f"  {name:<6} {status}", file=out)
        if bi.available:
            extra = getattr(_registry._load(name), "describe", None)
            if extra is not None:
                print(f"         {extra()}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastsarnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, CPU and backends")
    bench = sub.add_parser("bench", help="benchmark suite (SPEC section 6)")
    try:
        from . import bench as _bench
        _bench.add_arguments(bench)
    except ImportError:
        _bench = None
    demo = sub.add_parser("demo", help="the shipped recall models: accuracy and attention map")
    demo.add_argument("--n", type=int, default=500, help="fresh examples to evaluate")
    demo.add_argument("--seed", type=int, default=2024)
    demo.add_argument("--backend", default=None, help="backend (default: the fastest)")
    demo.add_argument("--plot", metavar="FILE.png", help="write a matplotlib heat map")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as _demo
        if args.n < 1:
            parser.error(f"--n must be >= 1; got {args.n}")
        _demo.run(n=args.n, seed=args.seed, backend=args.backend, plot=args.plot)
        return 0
    if args.command == "info":
        info()
        return 0
    if args.command == "bench":
        if _bench is None:
            parser.error("the benchmark suite is not available in this build")
        return _bench.run_cli(args, parser)
    return 2
