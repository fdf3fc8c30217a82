"""The docs name what exists: every module in docs/ARCHITECTURE.md's table (and every module is
in it), every augmentation preset in docs/recipes.md and every named experiment there, the config
group options in the README's table, the modules each experiment's header says its pieces live
in, and every command line of README.md and docs/*.md composes as written."""

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from imgcls import CONFIG_DIR, REPO_ROOT
from imgcls.data.augmentation.presets import PRESETS
from imgcls.run.compose import compose_config

SRC = REPO_ROOT / "src"
ARCHITECTURE = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
README = (REPO_ROOT / "README.md").read_text()
RECIPES = (REPO_ROOT / "docs" / "recipes.md").read_text()
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the markdown table that starts with `header`, each a list of its cells."""
    start = text.index(header)
    rows = text[start : text.index("\n\n", start)].splitlines()[2:]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


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


def test_the_recipes_guide_lists_the_augmentation_presets_there_are() -> None:
    listed = {re.search(r"`(\w+)`", row[0]).group(1) for row in table(RECIPES, "| preset |")}
    assert listed == set(PRESETS)


def test_the_recipes_guide_lists_every_named_experiment() -> None:
    listed = {
        name
        for row in table(RECIPES, "| experiment | recipe |")
        for name in re.findall(r"`(\w+)`", row[0])
    }
    assert listed == {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}


def group_rows() -> dict[str, list[str]]:
    rows = table(README, "| group | options | what it sets |")
    return {re.search(r"`(\w+)`", row[0]).group(1): row for row in rows}


def test_the_readme_group_table_names_options_that_exist() -> None:
    for group, row in group_rows().items():
        folder = Path(CONFIG_DIR) / group
        for option in re.findall(r"`(\w+)`", row[1]):
            exists = (folder / f"{option}.yaml").is_file() or option in {"none", "default"}
            assert exists or (CONFIG_DIR / "model" / f"{option}.yaml").is_file(), (group, option)


def test_the_readme_group_table_names_every_option_of_the_small_groups() -> None:
    """Every option of these groups is in its row (experiment: docs/recipes.md's table)."""
    rows = group_rows()
    for group in ("data", "model", "optimizer", "scheduler", "trainer", "logger", "debug"):
        named = set(re.findall(r"`(\w+)`", rows[group][1]))
        options = {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}
        assert options <= named, (group, options - named)
    named = set(re.findall(r"`(\w+)`", rows["hparams_search"][1]))
    assert {p.stem for p in (CONFIG_DIR / "hparams_search").glob("*.yaml")} <= named


def test_the_readme_callbacks_row_names_what_the_default_holds() -> None:
    row = group_rows()["callbacks"]
    held = OmegaConf.load(CONFIG_DIR / "callbacks" / "default.yaml").defaults
    held = [name for name in held if name != "_self_"]
    assert f"`default` holds {len(held)}:" in row[2]
    for name in held:
        assert f"`{name}`" in row[2], name
    optional = {p.stem for p in (CONFIG_DIR / "callbacks").glob("*.yaml")} - {*held, "default"}
    for name in optional:
        assert f"[default,{name}]" in row[1], name


def test_every_experiment_says_where_its_pieces_live_and_those_modules_exist() -> None:
    for recipe in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        header = recipe.read_text().split("\ndefaults:")[0]
        assert "Where each piece lives" in header, recipe.name
        for module in re.findall(r"\b(?:data|models|callbacks|run|utils)/[\w/]+\.py", header):
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


def test_every_module_has_a_test_file_or_names_the_whole_run_that_shows_it() -> None:
    """The promise of docs/ARCHITECTURE.md's "a test" row: src/imgcls/<path>/<name>.py has
    tests/<path>/test_<name>.py, or the row names the test file that shows its behaviour."""
    start = ARCHITECTURE.index("| a test |")
    row = ARCHITECTURE[start : ARCHITECTURE.index("\n", start)]
    shown_by = dict(re.findall(r"`([\w/]+\.py)` \(`([\w/]+\.py)`", row))
    tests, package = REPO_ROOT / "tests", SRC / "imgcls"
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package)
        if module.name == "__init__.py":
            continue
        beside = tests / module.parent / f"test_{module.name}"
        folder = (
            tests / module.parent.parent / f"test_{module.parent.name}.py"
        )  # nets/ -> test_nets
        if beside.is_file() or (module.parent != Path(".") and folder.is_file()):
            continue
        assert str(module) in shown_by, f"src/imgcls/{module} has no tests/.../test_{module.name}"
        assert (tests / shown_by[str(module)]).is_file(), shown_by[str(module)]


def outside_code(text: str) -> str:
    """The text with its fenced code blocks blanked (lines kept, so line numbers hold)."""
    lines, in_block = text.splitlines(), False
    for index, line in enumerate(lines):
        fence = line.lstrip().startswith("```")
        if fence or in_block:
            lines[index] = ""
        in_block ^= fence
    return "\n".join(lines)


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the text's headings: lower case, punctuation dropped, spaces as -."""
    headings = re.findall(r"^#+ (.+)$", outside_code(text), flags=re.MULTILINE)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings
    }


def test_the_links_between_the_docs_lead_somewhere() -> None:
    for path in DOCS:
        text = outside_code(path.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            name, _, anchor = target.partition("#")
            linked = (path.parent / name).resolve() if name else path
            assert linked.is_file(), f"{path.name} links to {target}: no such file"
            if anchor:
                assert anchor in anchors(linked.read_text()), f"{path.name} links to {target}"


# Command lines in the docs' code: a command the config would refuse fails here, naming its line.
COMMAND = re.compile(
    r"(?<!\S)((?:train|eval|predict|export)\.py|imgcls-(?:train|eval|predict|export|verify))(?!\S)"
)
CONFIG_OF = {"imgcls-" + name: name for name in ("train", "eval", "predict", "export", "verify")}
# Hydra's own flags, and those that take a value
FLAG_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"}
PLACEHOLDER_VALUES = {"DIR": "/tmp/dir", "FILE": "/tmp/file", "PATH": "/tmp/path", "N": "2"}
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}


def commands(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command) of every command line in the text's code: each line of a fenced
    block (joined with its backslash continuations), and each inline code span."""
    lines, in_block, index = text.splitlines(), False, 0
    while index < len(lines):
        line, start = lines[index], index
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif in_block:
            while line.endswith("\\") and index + 1 < len(lines):
                index += 1
                line = line[:-1] + " " + lines[index]
            if COMMAND.search(line):
                yield start + 1, line
        index += 1
    prose = outside_code(text)
    for span in re.finditer(r"`([^`]+)`", prose):
        if COMMAND.search(span.group(1)):
            yield prose.count("\n", 0, span.start()) + 1, " ".join(span.group(1).split())


def split_top_level(value: str) -> list[str]:
    """`a,b` -> [a, b]; commas inside brackets, parentheses or quotes stay."""
    parts, depth, quote, current = [], 0, "", ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    return [*parts, current]


def one_value(value: str) -> str:
    """A sweep's first value: `a,b` -> a, `range(5)` -> 0, `range(2,9)`, `interval(2,9)`,
    `choice(2,9)` -> 2; a placeholder (`DIR`, `N`) -> a dummy of its kind."""
    value = split_top_level(value)[0]
    call = re.fullmatch(r"(range|interval|choice)\((.*)\)", value)
    if call:
        arguments = split_top_level(call.group(2))
        value = "0" if call.group(1) == "range" and len(arguments) == 1 else arguments[0].strip()
    return PLACEHOLDER_VALUES.get(value, value)


def overrides_of(command: str) -> tuple[str, list[str]]:
    """The config a command composes and its overrides, as its shell would pass them."""
    found = COMMAND.search(command)
    name = found.group(1)
    rest = re.sub(r"<[^<>]*>", "x", command[found.end() :])  # <run>, <name>: a dummy
    overrides, words = [], iter(shlex.split(rest, comments=True))
    for word in words:
        if word in SHELL_OPERATORS or word.startswith((">", "2>")):
            break
        if word in FLAG_WITH_VALUE:
            next(words, None)
        elif word.startswith("-") or (word.startswith("$") and "=" not in word):
            continue  # -m, --help; a shell variable that expands to overrides or to nothing
        elif "=" in word:
            key, value = word.split("=", 1)
            overrides.append(f"{key}={one_value(value)}")
        else:
            overrides.append(word)
    return CONFIG_OF.get(name, name.removesuffix(".py")), overrides


def test_the_command_parser_reads_sweeps_placeholders_and_flags() -> None:
    line = (
        "python train.py -m 'data.fold=range(5)' model=lenet,cifar_quick "
        "ckpt_path=<run>/last.ckpt 'callbacks=[default,ema]' data.root=DIR $resume  # a comment"
    )
    assert overrides_of(line) == (
        "train",
        [
            "data.fold=0",
            "model=lenet",
            "ckpt_path=x/last.ckpt",
            "callbacks=[default,ema]",
            "data.root=/tmp/dir",
        ],
    )
    assert overrides_of("imgcls-eval --cfg job ckpt_path=... && echo done") == (
        "eval",
        ["ckpt_path=..."],
    )
    assert overrides_of("torchrun --nproc-per-node=8 train.py trainer.devices=8")[1] == [
        "trainer.devices=8"
    ]
    assert one_value("interval(0,0.2)") == "0"
    text = "```bash\npython train.py a=1 \\\n  b=2\n```\nand `python eval.py c=3` inline\n"
    assert list(commands(text)) == [(2, "python train.py a=1    b=2"), (5, "python eval.py c=3")]


def is_group(override: str) -> bool:
    """`model=lenet`, `~callbacks`, `hydra/launcher=...`: a choice of a config group, not a key."""
    name = override.split("=", 1)[0].lstrip("+~")
    return "/" in name or (CONFIG_DIR / name).is_dir()


def batches(found: list[tuple[str, str, list[str]]]) -> list[tuple[str, list[str], list]]:
    """Commands that choose the same config and group options, merged into as few compositions
    as their keys allow (a key is added with `+` in one and set in another: apart), as
    (config, overrides, the commands merged); each key's first value stands for the others."""
    merged: dict[tuple, list[tuple[dict[str, str], list]]] = {}
    for where, config, overrides in found:
        groups = tuple(sorted(o for o in overrides if is_group(o)))
        keys = {o.split("=", 1)[0].lstrip("+~"): o for o in overrides if not is_group(o)}
        for batch, members in merged.setdefault((config, groups), []):
            forms = {key: o.split("=", 1)[0] for key, o in batch.items()}
            if all(key not in forms or forms[key] == o.split("=", 1)[0] for key, o in keys.items()):
                batch.update({key: o for key, o in keys.items() if key not in batch})
                members.append((where, overrides))
                break
        else:
            merged[(config, groups)].append((dict(keys), [(where, overrides)]))
    return [
        (config, [*groups, *batch.values()], members)
        for (config, groups), pairs in merged.items()
        for batch, members in pairs
    ]


def test_every_command_in_the_docs_composes(tmp_path: Path) -> None:
    """Every train / eval / predict / export / verify command line in README.md and docs/*.md
    composes (an unknown key or group option, a key that needs `+`, a value Hydra cannot parse
    fails here with its file and line); nothing runs. Commands are merged where they can be (a
    composition takes a while), and a merged composition that fails is retried command by
    command to name the one at fault."""
    parse = OverridesParser.create().parse_overrides
    found, failures = [], []
    for path in DOCS:
        for line, command in commands(path.read_text()):
            config, overrides = overrides_of(command)
            where = f"{path.relative_to(REPO_ROOT)}:{line}: {command.strip()}"
            try:
                parse(overrides)  # each value as written, though merged commands share a key's
            except Exception as err:
                failures.append(f"{where}\n    {type(err).__name__}: {err}")
                continue
            found.append((where, config, overrides))
            for key in (o.split("=", 1)[0] for o in overrides if "=" in o and not is_group(o)):
                if (CONFIG_DIR / key.lstrip("+").replace(".", "/")).is_dir():  # data.augment=cifar
                    failures.append(f"{where}\n    {key}= replaces a whole node: set its keys")
    for config, overrides, members in batches(found):
        try:
            compose_config(config, overrides, output_dir=tmp_path / "run")
        except Exception:
            for where, alone in members:
                try:
                    compose_config(config, alone, output_dir=tmp_path / "run")
                except Exception as err:
                    failures.append(f"{where}\n    {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)
    assert {config for _, config, _ in found} >= {"train", "eval", "predict", "export", "verify"}
    assert len(found) > 60  # the parser found the docs' commands
