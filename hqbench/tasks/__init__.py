"""LightningModules, one per task config (``tasks/<task>.yaml`` names its class by ``module._target_``).

Every task derives from :class:`~hqbench.tasks.base.BenchmarkTask`, which declares what the runner
reads: ``METRIC``, ``EXTRA_METRICS``, ``PYTORCH_VIA``, ``UNSUPPORTED``, ``float_scopes``,
``paired_evidence`` and ``fit``. Its constructor takes ``(model, card)``.
"""

from hqbench.tasks.base import BenchmarkTask

__all__ = ["BenchmarkTask"]
