"""LightningModules, one per task config (hqbench/configs/<task>.yaml names its class by ``module._target_``).

A task class declares what the runner needs as class attributes: ``METRIC`` (logged as
``test/<METRIC>``, a fraction), ``EXTRA_METRICS``, ``PYTORCH_VIA`` ("fx" or "hooks": how the PyTorch
column quantizes it) and ``FIT_WITH`` ("lightning": ``hqbench train`` runs ``Trainer.fit``;
"ultralytics": ultralytics' trainer). Its constructor takes ``(model, card)``.
"""
