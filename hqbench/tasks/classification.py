"""ClassificationTask: Top-1/Top-5 evaluation (and optional fine-tuning) of any classifier."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.aggregation import CatMetric
from torchmetrics.classification import MulticlassAccuracy

from hqbench.data.base import EvaluationShare, evaluation_order
from hqbench.data.resolve import build_data
from hqbench.evidence import encode_outcomes
from hqbench.models import create_model
from hqbench.models._weights import write_half_state_dict
from hqbench.models.card import ModelCard
from hqbench.tasks.base import BenchmarkTask, quiet_lightning, training_output

_OPTIMIZERS = ("sgd", "adamw")


class ClassificationTask(BenchmarkTask):
    """Wraps a classifier returning logits; logs ``{stage}/top1`` and ``{stage}/top5``.

    Accuracies are logged as **fractions** in [0, 1] (torchmetrics' convention); reports multiply
    by 100. Metrics are epoch-level, micro-averaged (correct / total images), so the number does not
    depend on batch size.

    Args:
        model: classifier mapping ``(N, C, H, W)`` images to ``(N, num_classes)`` logits. Kept as
            ``self.model``, so checkpoint keys are ``model.<key>`` (what ``create_model`` reads).
        card: the model's ModelCard; ``card.num_classes`` sizes the metrics.
        lr: learning rate for :meth:`configure_optimizers`.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adamw"``.
        weight_decay: optimizer weight decay.

    Raises:
        ValueError: on an unknown ``optimizer``.
    """

    # What the runner reads (hqbench.tasks.base.BenchmarkTask; the task YAML names the class by ``module._target_``):
    METRIC = "top1"  # the row's metric; logged as test/top1
    EXTRA_METRICS = ("top5",)  # also recorded in the row's extra, from test/<name>
    PYTORCH_VIA = "fx"  # how the "pytorch" column quantizes: torch.ao's FX recipe

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        lr: float = 1e-3,
        optimizer: str = "sgd",
        weight_decay: float = 0.0,
    ):
        super().__init__()
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(_OPTIMIZERS)}")
        # The model is an nn.Module and the card a dataclass: neither belongs in hparams (the
        # checkpoint holds the weights already; plain hparams keep weights_only loading working).
        self.save_hyperparameters(ignore=["model", "card"])
        self.model = model
        self.card = card
        k = min(5, card.num_classes)  # top-5 is undefined below 5 classes; it degenerates to top-k
        metrics = MetricCollection({
            "top1": MulticlassAccuracy(card.num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(card.num_classes, top_k=k, average="micro"),
        })
        # One collection per stage so validation during fit never mixes into a test result.
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # Per-image Top-1 outcomes in evaluation order, for paired tests between methods (McNemar).
        self.test_outcomes = CatMetric()
        self._share = EvaluationShare()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.model(x)

    def _check_outputs(self, logits: torch.Tensor) -> None:
        """The model's outputs per image must be the data's classes (the datamodule's ``num_classes``
        when it has one, else the card's): a mismatch would fail deep inside torchmetrics, or score
        labels against the wrong logits.

        Raises:
            ValueError: one line naming the model and both numbers.
        """
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        expected = getattr(dm, "num_classes", None) or self.card.num_classes
        if logits.ndim != 2 or logits.shape[1] != expected:
            got = logits.shape[1] if logits.ndim == 2 else f"a {tuple(logits.shape)} tensor"
            where = f"the data ({dm.class_source})" if hasattr(dm, "class_source") else "the data"
            raise ValueError(f"model {self.card.name!r} outputs {got} classes per image but {where} has {expected}")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        self._check_outputs(logits)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch, metrics: MetricCollection) -> None:
        images, labels = batch
        logits = self(images)
        self._check_outputs(logits)
        metrics.update(logits, labels)
        # Logging the collection lets Lightning call compute()/reset() at epoch end, across ranks.
        self.log_dict(metrics, on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self.test_outcomes.reset()
        self._share.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self._check_outputs(logits)
        real = ~self._share.padding(self._trainer, len(labels)).to(labels.device)  # DDP's repeated samples out
        self.test_metrics.update(logits[real], labels[real])
        self.log_dict(self.test_metrics, on_step=False, on_epoch=True)
        self.test_outcomes.update((logits[real].argmax(1) == labels[real]).float())

    def outcomes(self, n_eval: int | None = None) -> torch.Tensor:
        """Top-1 correct (bool) per test image of the last test run, in evaluation order.

        Under DDP rank r evaluated images r, r+W, ... (its sampler's repeats masked out, see
        :class:`~hqbench.data.base.EvaluationShare`), and the synced list is rank 0's, then
        rank 1's: put back in order.

        Raises:
            ValueError: if the run saw other than ``n_eval`` images.
        """
        values = self.test_outcomes.compute().bool().reshape(-1)
        if n_eval is not None and values.numel() != n_eval:
            raise ValueError(f"the test run evaluated {values.numel()} images, not {n_eval}")
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            shares = values.split([len(range(r, values.numel(), world)) for r in range(world)])
            values = torch.stack(evaluation_order(shares))
        return values

    def paired_evidence(self, n_eval: int | None = None) -> dict:
        """``{"outcomes": ...}`` for the result row: the encoded :meth:`outcomes` (McNemar tests)."""
        return {"outcomes": encode_outcomes(self.outcomes(n_eval).cpu().numpy())}

    def sample_scores(self, batch, output: torch.Tensor) -> torch.Tensor:
        """Top-1 correct (1.0 / 0.0) per image of a ``(images, labels)`` batch."""
        return (output.argmax(1) == batch[1]).float()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Logits for a batch of ``(images, labels)`` or of images alone."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images)

    @classmethod
    def fit(cls, cfg, console, command: str = "") -> Path:
        """Train ``cfg.model`` (from random init unless model.weights is set) with ``Trainer.fit`` on the
        data's training split; write half-precision weights and a Markdown card beside them. With
        ``train.qat=true``: quantization-aware fine-tuning instead (:mod:`hqbench.tasks.qat_training`)."""
        if cfg.train.get("qat", False):
            from hqbench.tasks.qat_training import fit_qat

            return fit_qat(cfg, console, command)
        out = training_output(cfg)
        quiet_lightning()
        L.seed_everything(cfg.seed, verbose=False)
        model, card = create_model(cfg.model.name, weights=cfg.model.weights or "random")
        dm, source = build_data(cfg, card)
        task = instantiate(cfg.module, _partial_=True)(model, card, lr=cfg.train.lr, optimizer=cfg.train.optimizer,
                                                        weight_decay=cfg.train.weight_decay)
        trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, max_epochs=cfg.train.epochs,
                            logger=False, enable_checkpointing=False, enable_model_summary=False,
                            enable_progress_bar=sys.stdout.isatty())
        task.train()  # create_model returns eval mode, and Lightning keeps module modes as it finds them
        start = time.perf_counter()
        trainer.fit(task, train_dataloaders=dm.train_dataloader())
        seconds = time.perf_counter() - start
        value = 100.0 * float(trainer.test(task, datamodule=dm, verbose=False)[0][f"test/{task.METRIC}"])
        write_half_state_dict(task.model.state_dict(), out)
        n_train = len(dm.train_dataloader().dataset)
        out.with_suffix(".md").write_text(
            f"# {cfg.model.name}\n\n"
            f"- data: {source}, {n_train} training images (seed {cfg.seed}); evaluated on {len(dm.eval_files)} test images\n"
            f"- input: {card.input_size}x{card.input_size}, mean {card.mean[0]}, std {card.std[0]}\n"
            f"- start: {cfg.model.weights or 'random initialisation'}\n"
            f"- training: {cfg.train.epochs} epochs, {cfg.train.optimizer} with a one-cycle schedule, max lr {cfg.train.lr}, "
            f"weight decay {cfg.train.weight_decay}, batch {cfg.data.batch_size}, {seconds / 60:.1f} min on this machine\n"
            f"- FP32 {task.METRIC}: {value:.2f} %\n- weights: float16 state dict\n"
            f"- command: `{command or f'hqbench train task={cfg.task} model={cfg.model.name}'}`\n")
        console.print(f"{cfg.model.name}: trained {seconds / 60:.1f} min, FP32 {task.METRIC} {value:.2f} -> {out}")
        return out

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.hparams.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=self.hparams.lr, momentum=0.9,
                                        weight_decay=self.hparams.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        # One-cycle: warm up, then anneal to ~0, so a short CPU run still ends converged.
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
