"""YOLOv3-tiny on ultralytics: the offline guard, the model builders and the registry entry.

ultralytics is imported only through :func:`offline_ultralytics`, which first pins it offline: no
DNS probe, no pip auto-install, no settings sync, no font download (it gets matplotlib's DejaVu Sans
under the names it asks for). Nothing here downloads.

The Darknet file format and the layer correspondence are in :mod:`hqbench.models.darknet`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hqbench.models._registry import register_model
from hqbench.models.card import ModelCard
from hqbench.models.darknet import DarknetYoloHead, load_darknet_weights
from hqbench.models._weights import RANDOM, load_fitting_state, project_checkpoint, read_state_dict
from hqbench.paths import cache_dir

LEAKY = "nn.LeakyReLU(0.1)"  # Darknet's "leaky"; ultralytics' yolov3-tiny.yaml would give SiLU
SAR_INPUT_SIZE = 512  # SSDD images are at most 653 px wide, mostly 500: 512 keeps small ships at scale
SYNTH_INPUT_SIZE = 256  # hqbench.data.synthetic_sar's default scene size
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # what ultralytics' check_font would download


def offline_ultralytics() -> ModuleType:
    """Import ultralytics so that it never touches the network; returns the ``ultralytics`` module.

    Sets ``YOLO_OFFLINE=1`` (skips the DNS probe at import), ``YOLO_AUTOINSTALL=false`` and, unless
    already set, ``YOLO_CONFIG_DIR`` to ``cache_dir("ultralytics")`` (``~/.cache/hqbench/ultralytics``);
    puts matplotlib's DejaVu Sans there as ``Ultralytics/Arial.ttf`` and ``Arial.Unicode.ttf``;
    turns settings sync off.
    Call it before any ultralytics import: the environment is read once, at import.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    config = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir("ultralytics")))) / "Ultralytics"
    config.mkdir(parents=True, exist_ok=True)
    missing = [config / f for f in _FONTS if not (config / f).is_file()]
    if missing:
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        for target in missing:
            shutil.copyfile(source, target)
    import ultralytics
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", True):
        SETTINGS.update({"sync": False})  # no analytics or crash reports
    return ultralytics


def build_yolov3_tiny(nc: int = 1, verbose: bool = False) -> nn.Module:
    """ultralytics' YOLOv3-tiny topology with Darknet's LeakyReLU(0.1), randomly initialised.

    Each ``Conv`` gets its own activation module (ultralytics shares one instance among all), so
    per-layer hooks and quantization reports name layers as ``model.<i>.act``.

    Args:
        nc: classes of the (anchor-free, DFL) ``Detect`` head; 1 for ships.
        verbose: let ultralytics print the layer table.

    Returns:
        An ultralytics ``DetectionModel`` in eval mode; ``model.yaml`` records the activation, so
        ultralytics rebuilds the same network when it fine-tunes a checkpoint of it.
    """
    offline_ultralytics()
    from ultralytics.nn.modules import Conv
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    spec = yaml_model_load("yolov3-tiny.yaml")
    spec.update(activation=LEAKY, nc=nc)
    model = DetectionModel(spec, nc=nc, verbose=verbose)
    for m in model.modules():
        if isinstance(m, Conv) and isinstance(m.act, nn.LeakyReLU):
            m.act = nn.LeakyReLU(m.act.negative_slope)
    return model.eval()


class DarknetYolo(nn.Module):
    """The untouched Darknet network: ultralytics backbone+neck and Darknet's anchor-based head.

    Returns ``(N, 4 + 80, boxes)`` like ultralytics' ``Detect`` in eval (xywh pixels, scores), so
    ``ultralytics.utils.nms.non_max_suppression`` and :class:`~hqbench.tasks.detection.DetectionTask`
    post-processing apply. Used to check a conversion against COCO classes, not for SAR.
    """

    def __init__(self, model: nn.Module, head: DarknetYoloHead):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.model.model)
        saved = []
        for m in layers[:-1]:  # ultralytics' _predict_once, stopping before its Detect
            if m.f != -1:
                x = saved[m.f] if isinstance(m.f, int) else [x if j == -1 else saved[j] for j in m.f]
            x = m(x)
            saved.append(x)
        return self.head([saved[j] for j in layers[-1].f])


def darknet_yolov3_tiny(cfg_path: str | Path, weights_path: str | Path) -> DarknetYolo:
    """The Darknet COCO-80 YOLOv3-tiny, all weights from ``weights_path``, in eval mode."""
    model = build_yolov3_tiny(nc=80)
    head = load_darknet_weights(model, cfg_path, weights_path)
    return DarknetYolo(model, head).eval()


def convert_darknet(cfg_path: str | Path, weights_path: str | Path, nc: int = 1) -> nn.Module:
    """A fine-tuning start: Darknet backbone+neck in a YOLOv3-tiny ``DetectionModel`` with a fresh ``nc`` head."""
    model = build_yolov3_tiny(nc=nc)
    load_darknet_weights(model, cfg_path, weights_path)
    return model


def save_ultralytics_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` as ``{"model": model}``, the checkpoint layout ``ultralytics.YOLO(path)`` loads.

    ultralytics unpickles such a file with ``weights_only=False``; hqbench hands it only files
    written here, from a network whose weights came from :func:`read_detection_state`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {}, "date": None, "version": None}, path)
    return path


def read_detection_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a plain or Lightning file, read with ``weights_only=True`` only.

    There is deliberately no fallback to ultralytics' loader: it unpickles whole objects (code can
    run), and for a damaged file named like one of its assets it deletes the file and downloads.
    A full ultralytics checkpoint is refused with the one-line conversion to a state dict.

    Raises:
        ValueError: the file is not a readable state dict (one line naming it).
    """
    return read_state_dict(Path(path))


def load_yolov3_tiny(path: Path, owner: str) -> nn.Module:
    """One-class YOLOv3-tiny with the weights of ``path`` (any file :func:`read_detection_state` reads).

    Raises:
        ValueError: the file does not fit the architecture (naming ``owner``, the file and the keys).
    """
    state = {k: v.float() for k, v in read_detection_state(Path(path)).items()}  # before ultralytics is imported
    model = build_yolov3_tiny(nc=1)
    load_fitting_state(model, state, owner, path)  # keys and shapes checked before anything is copied
    return model


def _yolo_sar_model(name: str, input_size: int, weights: str | None) -> tuple[nn.Module, ModelCard]:
    path = project_checkpoint(name, weights, f"hqbench train task=detection model={name} ...")
    model = load_yolov3_tiny(path, name) if path is not None else build_yolov3_tiny(nc=1)
    # Pixels scaled to [0, 1], no normalisation; letterboxed to input_size (grey 114 padding).
    card = ModelCard(name=name, input_size=input_size, resize=input_size, mean=(0.0,) * 3, std=(1.0,) * 3,
                     num_classes=1, weights=str(path) if path else RANDOM)
    return model.eval(), card


@register_model("yolov3_tiny_sar")
def yolov3_tiny_sar(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """YOLOv3-tiny (LeakyReLU, one class: ship) fine-tuned on SAR ships; 512x512 letterboxed input.

    Args:
        weights: a state dict or a Lightning checkpoint (keys ``model.<...>``); a full ultralytics
            checkpoint is refused (loading it would unpickle objects), the error says how to convert
            it; ``None`` means ``checkpoints/yolov3_tiny_sar.pt``; ``"random"`` builds it untrained.

    Raises:
        FileNotFoundError: the weights file is missing (naming it and how to make it).
        ValueError: the file does not fit the architecture.
    """
    return _yolo_sar_model("yolov3_tiny_sar", SAR_INPUT_SIZE, weights)


@register_model("yolov3_tiny_synth")
def yolov3_tiny_synth(weights: str | None = None) -> tuple[nn.Module, ModelCard]:
    """YOLOv3-tiny trained on the embedded synthetic SAR scenes (256x256); weights as :func:`yolov3_tiny_sar`."""
    return _yolo_sar_model("yolov3_tiny_synth", SYNTH_INPUT_SIZE, weights)
