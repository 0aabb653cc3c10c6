"""QATCallback: quantization-aware training inside ``trainer.fit``, then evaluation of what it trained.

What Lightning's removed ``QuantizationAwareTraining`` callback was asked for, and where it broke:
the trained state is in every checkpoint (callback state: scales and zero points; model state: the
trained weights in the model's own layout), so resuming ``fit`` continues from it and
``Trainer.test(ckpt_path=...)`` needs no recalibration; ``fit`` may run twice; ``forward`` is never
wrapped; the optimizer gets the new parameters as a param group (Lightning's ``BaseFinetuning`` way).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ..methods import PYTORCH
from ..quant import Recipe, prepare
from ..quant.distributed import is_distributed
from ..quant.qat import QuantTraining, check_learnable
from .quantization import QuantizationCallback


# the per-group learning rates torch's optimizers and schedulers keep (OneCycleLR: max_lr, min_lr)
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


class QATCallback(QuantizationCallback):
    """Calibrate with ``method`` when ``fit`` starts, then train through the fake-quant
    (:class:`hqbench.quant.qat.QuantTraining`); test, validate, predict and export afterwards run
    the trained quantized model, never recalibrated. Before any ``fit`` it evaluates as
    :class:`QuantizationCallback` does (its post-training starting point).

    Args:
        method, recipe: the calibrator that initialises the ranges, and the widths and options
            (no AdaRound or bias correction: training replaces them; no mixed precision).
        learn_scales: train activation and weight scales (LSQ, in the log domain); False keeps
            the calibrated ranges and trains the weights alone.
        distill: weight of distillation from the float model, in ``[0, 1]``: the loss is
            ``(1 - distill) * module_loss + distill * T^2 * KL(teacher || student)`` on the logits of
            the network, whose call inside ``training_step`` gives the student's logits and inputs.
            The teacher is the float network as ``fit`` first found it, and its weights are in the
            callback's state, so a resumed ``fit`` distils from the same one.
        temperature: the distillation temperature ``T``.
        scale_lr_factor: the learning rate of the parameters QAT adds (the scales, and the biases
            folding gave to bias-less layers) as a multiple of the optimizer's: in the log domain
            an Adam step moves a scale by about ``lr``, which at a fine-tuning lr barely moves it.
        **kwargs: :class:`QuantizationCallback`'s (calibration data, engine for test, ...).
            ``submodule`` names the network QAT quantizes and trains (default ``pl_module.model``);
            it is called with ``input_fn(batch)``, and an engine replaces its ``forward``.

    Validation inside ``fit`` runs the model being trained (with ``fit_suffix`` on the logged
    names). Under DDP every rank calibrates on all the calibration batches and the parameters QAT
    adds have their gradients averaged after each backward; a model with BatchNorm needs
    ``strategy="ddp_find_unused_parameters_true"`` (folded, BN's own parameters get no gradient).
    """

    def __init__(self, method: str = "D", recipe: Recipe | None = None, *, learn_scales: bool = True,
                 distill: float = 0.0, temperature: float = 1.0, scale_lr_factor: float = 1.0, **kwargs: Any):
        if kwargs.pop("recalibrate", False):
            raise ValueError("QATCallback never recalibrates a trained state; use QuantizationCallback for that")
        super().__init__(method, recipe, recalibrate=False, **kwargs)
        if self.method == PYTORCH:
            raise ValueError("quantization-aware training runs hqbench's methods; 'pytorch' is torch.ao's PTQ")
        if self.recipe.fits_weights or self.recipe.promotes:
            raise ValueError("QATCallback trains the weights itself: use a recipe without AdaRound, bias_correction "
                             "and mixed.budget")
        if not 0.0 <= float(distill) <= 1.0:
            raise ValueError(f"distill must be in [0, 1], got {distill!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        if not float(scale_lr_factor) > 0:
            raise ValueError(f"scale_lr_factor must be positive, got {scale_lr_factor!r}")
        check_learnable(self.recipe, learn_scales)
        self.learn_scales, self.distill, self.temperature = bool(learn_scales), float(distill), float(temperature)
        self.scale_lr_factor = float(scale_lr_factor)
        self.training: QuantTraining | None = None  # while fit trains
        self.steps = 0  # optimizer steps trained so far (the trainer's global step when training last stopped)
        self._teacher_state: dict | None = None
        self._teacher: torch.nn.Module | None = None
        self._fit_undo: list = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        quant = self.training.quant_state_dict() if self.training is not None else self._saved_state
        if not quant:
            return {}
        return {**quant, "qat": {"steps": self.steps, "learn_scales": self.learn_scales, "teacher": self._teacher_state}}

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        qat = state.pop("qat", None) or {}
        self.steps = int(qat.get("steps", 0))
        self._teacher_state = qat.get("teacher")
        self._teacher = None
        super().load_state_dict(state)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.training is not None:  # the trained weights, in the layout a fresh model loads
            self.steps = trainer.global_step
            prefix = self.submodule + "."
            state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefix)}
            checkpoint["state_dict"] = {**state, **{prefix + k: v for k, v in self.training.float_state_dict().items()}}

    def _quantized(self, pl_module: L.LightningModule) -> torch.nn.Module:
        """The network, ``pl_module.<submodule>``: under DDP, Lightning calls the LightningModule itself
        with ``training_step``'s arguments, which hooks on it would take for the network's inputs."""
        network = getattr(pl_module, self.submodule, None)
        if not isinstance(network, torch.nn.Module):
            raise ValueError(f"QATCallback trains the network at pl_module.{self.submodule}, which is not a module; "
                             "pass submodule=")
        return network

    # -------------------------------------------------------------- training
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        if self.distill:
            self._start_distillation(pl_module)
        batches = self._batches_on(trainer, pl_module.device, limit=None if self._saved_state is None else 1)
        example = self.input_fn(batches[0])
        network = self._quantized(pl_module)
        modes = [(m, m.training) for m in network.modules()]  # prepare() leaves the model in eval mode
        qmodel = prepare(network, example, self.method, self.recipe, inplace=True, float_scopes=self.float_scopes)
        try:
            if self._saved_state is None:
                qmodel.calibrate(batches, input_fn=self.input_fn)
                self.statistics = qmodel.calibration_statistics()
            else:  # a second fit, or a resumed one: continue from what was trained
                qmodel.load_quant_state_dict(self._saved_state)
            self.training = QuantTraining(qmodel, self.learn_scales)
            for module, training in modes:
                module.train(training)
        except BaseException:
            qmodel.remove()
            raise
        self.qmodel, self._example, self._from_checkpoint = qmodel, example, False
        self._add_to_optimizer(trainer, self.training.parameters, self.scale_lr_factor)
        if trainer.world_size > 1:
            self._check_ddp(trainer, qmodel)

    def _check_ddp(self, trainer: L.Trainer, qmodel) -> None:
        """Every rank calibrated on all the calibration batches (the same qparams); the parameters
        QAT added are reduced in :meth:`on_after_backward`. Folded BatchNorms' parameters get no
        gradient, which DDP refuses unless it looks for unused parameters."""
        if not is_distributed():
            raise RuntimeError(f"trainer.world_size is {trainer.world_size} but no torch.distributed process group runs")
        finds = getattr(trainer.strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False)
        ddp = trainer.strategy.model
        if isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and not any(True for _ in ddp.module.buffers()):
            ddp.broadcast_buffers = False  # folding took the last buffers (BN's): DDP would broadcast an empty list
        if qmodel._folds and not finds:
            self._stop_training(trainer, trainer.lightning_module)
            raise ValueError("QATCallback under DDP folds BatchNorm into the convs, so BN's parameters get no gradient: "
                             "use strategy='ddp_find_unused_parameters_true' (or DDPStrategy(find_unused_parameters=True))")

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Under DDP, average the gradients of the parameters QAT added: every one of them (scales,
        the biases folding creates) is new since DDP wrapped the model, and DDP reduces only its own."""
        if trainer.world_size <= 1 or self.training is None:
            return
        for p in self.training.parameters:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(trainer.world_size)

    @staticmethod
    def _add_to_optimizer(trainer: L.Trainer, parameters: list, factor: float) -> None:
        """The new parameters as one more group of the first optimizer, with group 0's settings
        (a scheduler's per-group keys included, every learning rate times ``factor``) and no weight decay."""
        if not trainer.optimizers:
            raise RuntimeError("QATCallback needs an optimizer: configure_optimizers returned none")
        optimizer = trainer.optimizers[0]
        if not parameters:  # fixed scales on a model without BN: nothing was added
            return
        group = {k: v * factor if k in _LR_KEYS else v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.add_param_group({**group, "params": list(parameters), "weight_decay": 0.0})
        for config in trainer.lr_scheduler_configs:
            base = getattr(config.scheduler, "base_lrs", None)
            if getattr(config.scheduler, "optimizer", None) is optimizer and base is not None:
                base.append(base[0] * factor)

    def _start_distillation(self, pl_module: L.LightningModule) -> None:
        network = self._quantized(pl_module)
        if self._teacher is None:
            teacher = copy.deepcopy(network)
            if self._teacher_state is not None:  # a resumed fit: the teacher of the first one
                teacher.load_state_dict(self._teacher_state)
            self._teacher_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
            self._teacher = teacher.eval().requires_grad_(False)
        teacher, weight, t = self._teacher.to(pl_module.device), self.distill, self.temperature
        seen: dict = {}
        hook = network.register_forward_hook(lambda module, args, out: seen.update(args=args, out=out)
                                             if torch.is_grad_enabled() else None)
        step = pl_module.training_step

        def training_step(*args, **kwargs):
            seen.clear()
            out = step(*args, **kwargs)
            if "out" not in seen or not isinstance(seen["out"], torch.Tensor):
                raise RuntimeError(f"distill: training_step never called pl_module.{self.submodule} for tensor logits")
            loss = out["loss"] if isinstance(out, Mapping) else out
            with torch.no_grad():
                target = teacher(*seen["args"])
            kl = F.kl_div(F.log_softmax(seen["out"].float() / t, -1), F.log_softmax(target.float() / t, -1),
                          log_target=True, reduction="batchmean") * t * t
            pl_module.log("train/distill_kl", kl)
            total = (1.0 - weight) * loss + weight * kl
            return {**out, "loss": total} if isinstance(out, Mapping) else total

        pl_module.training_step = training_step
        self._fit_undo += [hook.remove, lambda: pl_module.__dict__.pop("training_step", None)]

    def _stop_training(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The trained weights into the model's own layout, the trained qparams into the state."""
        while self._fit_undo:
            self._fit_undo.pop()()
        if self.training is None:
            return
        training, self.training = self.training, None
        self.steps = trainer.global_step
        with torch.no_grad():
            weights = training.float_state_dict()
            qmodel = training.finish()
            self._saved_state = qmodel.quant_state_dict()
            self.summary = qmodel.summary()
            qmodel.remove()
            self._quantized(pl_module).load_state_dict(weights)
        self.qmodel = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.steps = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_training(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.training is None:
            super().on_validation_start(trainer, pl_module)
        elif self.fit_suffix:
            self._rename_logged(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.training is None:
            super().on_validation_end(trainer, pl_module)
        else:
            while self._undo:  # the renamed log
                self._undo.pop()()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop_training(trainer, pl_module)  # what was trained so far stays in the model
        super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop_training(trainer, pl_module)
        super().teardown(trainer, pl_module, stage)
