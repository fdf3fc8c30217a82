"""The docs name what exists: every module in docs/ARCHITECTURE.md's table (and every module is
in it), every augmentation preset and config group option in the README, and the modules each
experiment's header says its pieces live in."""

import re
from pathlib import Path

from imgcls import CONFIG_DIR, REPO_ROOT
from imgcls.data.augmentation.presets import PRESETS

SRC = REPO_ROOT / "src"
ARCHITECTURE = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
README = (REPO_ROOT / "README.md").read_text()


def module_table() -> str:
    start = ARCHITECTURE.index("| module | what it is for |")
    return ARCHITECTURE[start : ARCHITECTURE.index("\n\n", start)]


def test_the_architecture_names_every_module_and_only_those() -> None:
    named = set()
    for cell in (row.split("|")[1] for row in module_table().splitlines()[2:]):
        folder = ""
        for name in re.findall(r"`([\w/.]+)`", cell):
            if "/" in name:
                folder = name.rsplit("/", 1)[0] + "/" if not name.endswith("/") else name
            named.add(name if "/" in name or not folder else folder + name)
    for name in named:  # each is a module or folder of the package (or a Hydra plugin)
        assert (SRC / "imgcls" / name).exists() or (SRC / name).exists(), name
    modules = {
        str(p.relative_to(SRC / "imgcls"))
        for p in (SRC / "imgcls").rglob("*.py")
        if p.name != "__init__.py"
    }
    covered = {
        m for m in modules if m in named or any(m.startswith(n) for n in named if n.endswith("/"))
    }
    assert modules - covered == set()


def test_the_readme_lists_the_augmentation_presets_there_are() -> None:
    start = README.index("| preset | training augmentation |")
    table = README[start : README.index("\n\n", start)]
    listed = {re.search(r"`(\w+)`", row).group(1) for row in table.splitlines()[2:]}
    assert listed == set(PRESETS)


def test_the_readme_group_table_names_options_that_exist() -> None:
    start = README.index("| group | options | what it sets |")
    table = README[start : README.index("\n\n", start)]
    for row in table.splitlines()[2:]:
        group = re.search(r"`(\w+)`", row.split("|")[1]).group(1)
        folder = Path(CONFIG_DIR) / group
        for option in re.findall(r"`(\w+)`", row.split("|")[2]):
            exists = (folder / f"{option}.yaml").is_file() or option in {"none", "default"}
            assert exists or (CONFIG_DIR / "model" / f"{option}.yaml").is_file(), (group, option)


def test_every_experiment_says_where_its_pieces_live_and_those_modules_exist() -> None:
    for recipe in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        header = recipe.read_text().split("\ndefaults:")[0]
        assert "Where each piece lives" in header, recipe.name
        for module in re.findall(r"\b(?:data|models|callbacks|utils)/[\w/]+\.py", header):
            assert (SRC / "imgcls" / module).is_file(), (recipe.name, module)


def test_tests_are_laid_out_like_the_package() -> None:
    """tests/<path>/test_<name>.py tests src/imgcls/<path>/<name>.py (or the folder <name>/);
    the whole-run files are the ones docs/ARCHITECTURE.md lists."""
    tests = REPO_ROOT / "tests"
    start = ARCHITECTURE.index("| a test |")
    whole_run = set(
        re.findall(r"`(test_\w+\.py)`", ARCHITECTURE[start : ARCHITECTURE.index("\n", start)])
    )
    for path in sorted(tests.rglob("test_*.py")):
        relative = path.relative_to(tests)
        module = relative.parent / relative.name.removeprefix("test_")
        package = SRC / "imgcls"
        found = (package / module).is_file() or (package / module.with_suffix("")).is_dir()
        assert found or str(relative) in whole_run, f"tests/{relative} tests no module"
    for name in whole_run:
        assert (tests / name).is_file(), name
