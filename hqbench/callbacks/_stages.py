"""The stage lifecycle every hqbench callback shares: quantize when an evaluation stage starts, give
the float model back when it ends, fails or is torn down."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class EvaluationStageCallback(Callback):
    """Calls ``_activate`` at test/validation (not the sanity check)/predict start and ``_restore``
    at their end, on an exception and at teardown. Subclasses implement the two."""

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
