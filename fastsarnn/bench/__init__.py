"""The benchmark suite (``fastsarnn bench``), its peers and plots.

Nothing in the runtime package imports this subpackage: it is for measuring. The modules:
:mod:`~fastsarnn.bench.suite` (configurations, timing, tables, the command),
:mod:`~fastsarnn.bench.peers` (PyTorch and JAX peers), :mod:`~fastsarnn.bench.plotting`.
"""

from .suite import (CONFIGS, DEVICE_RUNNERS, GPU_RUNNERS, QUICK, Config, NotApplicable,
                    add_arguments, available_runners, default_configs, format_table,
                    history_bytes, machine_info, make_problem, measure_sgemm, run_cli,
                    run_config, runner, runners_for, single_thread_blas, useful_flops,
                    with_single_thread_blas)

__all__ = ["CONFIGS", "DEVICE_RUNNERS", "GPU_RUNNERS", "QUICK", "Config", "NotApplicable",
           "add_arguments", "available_runners", "default_configs", "format_table",
           "history_bytes", "machine_info", "make_problem", "measure_sgemm", "run_cli",
           "run_config", "runner", "runners_for", "single_thread_blas", "useful_flops",
           "with_single_thread_blas"]
