"""The sections of ``scripts/benchmark.py``, one module each, over the shared harness (``harness``, ``report``)."""
