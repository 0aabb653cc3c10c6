"""``hqbench train ... train.qat=true``: quantization-aware fine-tuning of a classifier, written as a
weights file plus its trained quantized state, which ``hqbench test model.weights=THAT`` runs.

The state lies beside the weights as ``<weights>.qat.pt`` (tensors, strings and numbers only: read
with ``weights_only=True``). A row of ``hqbench test`` whose method, widths and recipe are the state's
loads it instead of calibrating, and carries ``qat=...`` (epochs, images, lr) in its key.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hqbench.callbacks.qat import QATCallback
from hqbench.data.resolve import build_data
from hqbench.methods import FP32, PYTORCH, row_method
from hqbench.models import create_model
from hqbench.models._weights import TRAINED_STATE_SUFFIX
from hqbench.paths import atomic_write
from hqbench.peers import is_peer
from hqbench.quant import Recipe, canonical_name, parse_bit_widths
from hqbench.quant.profiles import PAPER
from hqbench.tasks.base import config_recipe, quiet_lightning, training_output



def qat_state_path(weights: str | Path) -> Path:
    """Where the trained quantized state of ``weights`` lies: ``<weights>.qat.pt``."""
    weights = Path(weights)
    return weights.with_name(weights.name + TRAINED_STATE_SUFFIX)


@dataclass(frozen=True)
class QATState:
    """A weights file's trained quantized state, and how it was trained."""

    path: Path
    state: dict
    record: dict  # method, bits, epochs, images, lr, distill, learn_scales, steps

    def matches(self, method: str, recipe: Recipe) -> bool:
        """Whether a cell (method, recipe) is the one this state was trained as."""
        s = self.state
        return (canonical_name(method) == s["method"] and (recipe.weight_bits, recipe.act_bits) ==
                (s["weight_bits"], s["act_bits"]) and list(recipe.keep_8bit) == list(s["keep_8bit"])
                and recipe.weight_range == s["weight_range"] and recipe.profile == self.record.get("profile")
                and not recipe.fits_weights and not recipe.promotes)

    @property
    def option(self) -> str:
        """The row key's ``qat=`` value: what a different training would change."""
        r = self.record
        factor = r.get("scale_lr_factor", 1.0)
        return (f"e{r['epochs']}-n{r['images']}-lr{r['lr']:g}" + (f"x{factor:g}" if factor != 1.0 else "")
                + ("-distill" if r["distill"] else "") + ("" if r["learn_scales"] else "-fixed"))


def read_qat_state(weights: str | Path | None) -> QATState | None:
    """The state beside ``weights``, or None when there is none (or ``weights`` is not a file).

    Raises:
        ValueError: the file is not a state ``hqbench train`` wrote (names the file).
    """
    if weights is None or not Path(str(weights)).is_file():
        return None
    path = qat_state_path(weights)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a QAT state hqbench train wrote ({type(err).__name__}: {err})") from None
    if not isinstance(saved, dict) or not {"state", "record"} <= set(saved):
        raise ValueError(f"{path}: not a QAT state hqbench train wrote (no 'state' and 'record')")
    return QATState(path, saved["state"], saved["record"])


def _one(value, key: str) -> str:
    items = list(value) if OmegaConf.is_list(value) else [value]
    if len(items) != 1:
        raise ValueError(f"train.qat trains one cell: give one {key}= (got {', '.join(map(str, items))})")
    return str(items[0])


def _write_card(out: Path, cfg, recipe: Recipe, record: dict, source: str, n_eval: int, command: str) -> None:
    """The Markdown card beside the weights: where they started, what trained them, what they scored."""
    r = record
    out.with_suffix(".md").write_text(
        f"# {cfg.model.name}, quantization-aware trained\n\n"
        f"- start: {r['start']}, calibrated with {r['method']} at {r['bits']}"
        + (f", {'+'.join(recipe.keep_8bit)} kept at 8 bits" if recipe.keep_8bit else "") + "\n"
        f"- data: {source}, {r['images']} training images (seed {cfg.seed}); evaluated on {n_eval} test images\n"
        f"- training: {r['epochs']} epochs ({r['steps']} steps), {r['optimizer']} with a one-cycle schedule, max lr "
        f"{r['lr']:g}, BN folded (frozen statistics), "
        + (f"scales learnt (LSQ, lr x{r['scale_lr_factor']:g})" if r["learn_scales"] else "fixed scales")
        + (f", distilled from the float model (T={r['temperature']:g})" if r["distill"] else "")
        + f", {r['seconds'] / 60:.1f} min on this machine\n"
        f"- quantized {r['metric']}: {r['value']:.2f} %\n"
        f"- files: float32 state dict; trained quantized state in {qat_state_path(out).name}\n"
        f"- command: `{command or 'hqbench train ... train.qat=true'}`\n")


def fit_qat(cfg, console, command: str = "") -> Path:
    """Calibrate ``cfg.model`` with ``method`` at ``bits``, fine-tune it through the fake-quant on the
    data's training split (:class:`~hqbench.callbacks.QATCallback`), test it quantized, and write the
    float32 weights, their ``.qat.pt`` state and a Markdown card. Nothing existing is replaced."""
    method = row_method(_one(cfg.method, "method"))
    if method in (FP32, PYTORCH) or is_peer(method):
        raise ValueError(f"train.qat: method={method} has no hqbench calibrator to start from; use A, B, C, D or "
                         "another registered calibrator")
    weight_bits, act_bits = parse_bit_widths(_one(cfg.get("bits", "w8a8"), "bits"))
    recipe = config_recipe(cfg).replace(weight_bits=weight_bits, act_bits=act_bits,
                                        profile=str(_one(cfg.get("profile", PAPER), "profile")))
    out = training_output(cfg)
    if qat_state_path(out).exists() and not cfg.train.get("overwrite", False):
        raise FileExistsError(f"{qat_state_path(out)} exists; pass train.checkpoint=NEW_PATH, or train.overwrite=true")
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)  # fine-tuned from the trained model
    dm, source = build_data(cfg, card)
    task = instantiate(cfg.module, _partial_=True)(model, card, lr=cfg.train.lr, optimizer=cfg.train.optimizer,
                                                    weight_decay=cfg.train.weight_decay)
    callback = QATCallback(method, recipe, calib_dataloader=dm.calibration_dataloader(),
                           learn_scales=cfg.train.learn_scales, distill=1.0 if cfg.train.distill else 0.0,
                           temperature=cfg.train.temperature, scale_lr_factor=cfg.train.scale_lr_factor)
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, max_epochs=cfg.train.epochs,
                        precision=cfg.trainer.get("precision", "32-true"), callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=sys.stdout.isatty())
    task.train()
    train = dm.train_dataloader()
    start = time.perf_counter()
    trainer.fit(task, train_dataloaders=train)
    seconds = time.perf_counter() - start
    value = 100.0 * float(trainer.test(task, datamodule=dm, verbose=False)[0][f"test/{task.METRIC}"])
    record = {"method": method, "bits": f"w{weight_bits}a{act_bits}", "epochs": int(cfg.train.epochs),
              "images": len(train.dataset), "lr": float(cfg.train.lr), "optimizer": str(cfg.train.optimizer),
              "distill": bool(cfg.train.distill), "temperature": float(cfg.train.temperature),
              "learn_scales": bool(cfg.train.learn_scales), "scale_lr_factor": float(cfg.train.scale_lr_factor),
              "profile": recipe.profile, "steps": callback.steps, "seconds": round(seconds, 1),
              "start": str(card.weights), "metric": task.METRIC, "value": round(value, 4),
              "model_weights": None if cfg.model.weights is None else str(Path(cfg.model.weights).expanduser().resolve())}
    state = {k: v for k, v in callback.state_dict().items() if k != "qat"}  # the teacher stays out of it
    atomic_write(out, lambda f: torch.save(task.model.state_dict(), f), binary=True)  # float32: trained on this grid
    atomic_write(qat_state_path(out), lambda f: torch.save({"state": state, "record": record}, f), binary=True)
    _write_card(out, cfg, recipe, record, f"{source}", len(dm.eval_files), command)
    console.print(f"{cfg.model.name}: QAT {method} w{weight_bits}a{act_bits} {seconds / 60:.1f} min, "
                  f"quantized {task.METRIC} {value:.2f} -> {out}")
    return out


__all__ = ["QATState", "fit_qat", "qat_state_path", "read_qat_state"]
