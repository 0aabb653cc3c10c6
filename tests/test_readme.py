"""Every python block in README.md runs as written; every documented `hqbench test` command is a valid run."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Lightning may write next to the cwd
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def _documented_commands() -> list[tuple[str, str]]:
    """Every `hqbench test ...` line of a bash block in README.md and docs/*.md, as (file, line)."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            found += [(path.name, line.strip()) for line in block.replace("\\\n", " ").splitlines()
                      if re.match(r"^(\S+=\S+ )*hqbench test ", line.strip())]
    return found


COMMANDS = _documented_commands()


@pytest.mark.parametrize("where, line", COMMANDS, ids=[f"{w}:{i}" for i, (w, _) in enumerate(COMMANDS)])
def test_documented_commands_are_valid_runs(where, line):
    """Each documented command composes and plans its cells (keys, values, methods, widths, options)."""
    import shlex

    from hqbench.config import compose
    from hqbench.runner import plan_cells

    words = shlex.split(line)
    args = words[words.index("test") + 1:]
    swept = "-m" in args  # a multirun sweeps comma lists: each value is a run of its own; plan the first

    def one_run(override: str) -> str:
        key, _, value = override.partition("=")
        return f"{key}={value.split(',')[0]}" if swept and key not in ("method", "bits", "keep_8bit") else override

    # a shell variable stands for what its loop gives; hydra.* and hydra/* choose the launcher, not the run
    overrides = [one_run(a) for a in args if "=" in a and not a.startswith(("-", "hydra")) and "$" not in a]
    task = next((o.split("=", 1)[1] for o in overrides if o.startswith("task=")), "classification")
    assert plan_cells(compose(task, [o for o in overrides if not o.startswith("task=")])), (where, line)
