"""The stage lifecycle every hqbench callback shares: quantize when an evaluation stage starts, give
the float model back when it ends, fails or is torn down."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class EvaluationStageCallback(Callback):
    """Calls ``_activate`` at test/validation (not the sanity check)/predict start and ``_restore``
    at their end, on an exception and at teardown. Subclasses implement the two, and set
    ``calib_dataloader`` (``None``: the datamodule's ``calibration_dataloader()``)."""

    calib_dataloader: Any = None

    def _calibration_batches(self, trainer: L.Trainer, limit: int | None,
                             convert: Callable[[Any], Any] = lambda batch: batch) -> list:
        """The first ``limit`` calibration batches (all when None), each passed through ``convert``.

        Raises:
            ValueError: no loader to take them from, or it yielded nothing.
        """
        loader = self.calib_dataloader
        if loader is None:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "calibration_dataloader"):
                raise ValueError(f"{type(self).__name__} needs calib_dataloader=, or a datamodule with "
                                 "calibration_dataloader()")
            loader = dm.calibration_dataloader()
        batches = [convert(batch) for batch in itertools.islice(loader, limit)]
        if not batches:
            raise ValueError("calibration data is empty: no batch was seen")
        return batches

    def _activate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # pragma: no cover
        raise NotImplementedError

    def _restore(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._activate(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._activate(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._activate(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_predict_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()  # a failure mid-calibration or mid-test must not leave the model quantized

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()
