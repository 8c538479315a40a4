"""Step accounting: per rank and step, where the wall time went (sets.py, causes.py,
table.py), and the cost budget that keeps findings honest (budget.py)."""

from tracekit.accounting.sets import GpuSets, exposed_spans, exposed_us, gpu_sets
from tracekit.accounting.table import RunAccounting, account_rank, run_accounting

__all__ = ["GpuSets", "RunAccounting", "account_rank", "exposed_spans", "exposed_us",
           "gpu_sets", "run_accounting"]
