"""Every code block of README.md and docs/*.md runs, so none goes stale.

The rule, for the writers of those pages (docs/architecture.md repeats it):

* Each page is one script: its ``python`` and ``bash`` blocks run in the order they appear,
  in one fresh working directory and (Python) one namespace, so a block may use the run or
  the variables an earlier block of the same page made. That directory holds ``digit.png``
  and ``batch.npy`` (MNIST test digits) and ``$CAPSNET_DATA`` points at the 3,000 + 1,000
  MNIST digits shipped with the tests, so ``--dataset mnist`` trains and tests on those.
* In a ``bash`` block every ``capsnet …`` line runs in-process and must exit with 0;
  ``torchrun … -m capsnet …`` lines are parsed by the real parser, ``make TARGET`` lines
  must name a Makefile target and ``python -m MODULE`` lines a module that exists. Any
  other program is an error. The models and datasets a command names must exist.
* ``<!-- test: parse-only (why) -->`` on the line before a block makes it parse-only: its
  commands are parsed (and their names checked) and its Python compiled, but nothing runs.
  The reason is required: a full dataset, a GPU, a server that does not return, too long a run.
* ``text`` blocks (output, usage, layouts) are not code. Every block names its language,
  one of ``python``, ``bash`` (or ``sh``, ``shell``) and ``text``. Models and routings a
  page registers are removed after it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from capsnet import names
from capsnet.cli import main
from capsnet.cli.options import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
LANGUAGES = {"python", "text", *SHELL}  # another (console, py, …) would silently not run
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"<!-- test: parse-only \((.+)\) -->")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    parse_only: bool

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with the marker on the line before each."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = lines[i - 1] if i else ""
        code = "\n".join(lines[i + 1 : end]) + "\n"
        name = str(path.relative_to(ROOT))
        found.append(Block(name, i + 1, match[1], code, bool(MARKER.search(before))))
        i = end + 1
    return found


def commands(code: str) -> list[list[str]]:
    """The command lines of a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def parse_capsnet(argv: list[str], where: str) -> argparse.Namespace | None:
    """The parsed arguments (None for --help and --version), and their names checked."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, f"{where}: capsnet {shlex.join(argv)} does not parse"
        return None
    model = getattr(args, "model", None)
    assert model is None or model in names.MODELS, f"{where}: no model {model}"
    dataset = getattr(args, "dataset", None)
    known = (*names.TASKS, *names.OFFICIAL)
    assert dataset is None or dataset in known or dataset.startswith(("folder:", "npz:")), (
        f"{where}: no dataset {dataset}"
    )
    return args


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m[1] for m in re.finditer(r"^([a-z][\w-]*):", text, re.MULTILINE)}


def check_command(words: list[str], where: str) -> bool:
    """Check one command line statically; True if it is a capsnet command to run."""
    program = words[0]
    if program == "capsnet":
        parse_capsnet(words[1:], where)
        return True
    if program == "torchrun":
        assert "capsnet" in words, f"{where}: torchrun of what?"
        parse_capsnet(words[words.index("capsnet") + 1 :], where)
    elif program == "make":
        missing = set(words[1:]) - makefile_targets()
        assert not missing, f"{where}: no Makefile target {missing}"
    elif program == "python" and words[1] == "-m":
        assert importlib.util.find_spec(words[2]), f"{where}: no module {words[2]}"
    else:
        raise AssertionError(f"{where}: unknown program {program} (see tests/test_docs.py)")
    return False


@pytest.fixture
def registries() -> Iterator[None]:
    """Models and routings a page registers (docs/architecture.md does) are removed after."""
    from capsnet.models.registry import _REGISTRY
    from capsnet.nn.routing import ROUTINGS

    saved = [(r, dict(r)) for r in (_REGISTRY, ROUTINGS)]
    yield
    for registry, contents in saved:
        registry.clear()
        registry.update(contents)


@pytest.fixture
def workdir(tmp_path, mnist_dir, monkeypatch, registries) -> Path:
    """A fresh working directory with digit.png and batch.npy; MNIST is the test subset."""
    from PIL import Image

    from capsnet.data.sources import load_split

    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist").symlink_to(mnist_dir)
    monkeypatch.setenv("CAPSNET_DATA", str(data))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    images = load_split("mnist", "test", mnist_dir, download=False)[0][:8, 0].numpy()
    Image.fromarray(images[0]).save(work / "digit.png")
    np.save(work / "batch.npy", images)
    monkeypatch.chdir(work)
    return work


def run_shell(block: Block) -> None:
    for words in commands(block.code):
        if check_command(words, block.where) and not block.parse_only:
            try:
                status = main(words[1:])
            except SystemExit as e:  # --help, --version
                status = e.code
            assert status in (0, None), f"{block.where}: {shlex.join(words)} exited {status}"


def run_python(block: Block, namespace: dict) -> None:
    code = compile(block.code, block.where, "exec")
    if not block.parse_only:
        exec(code, namespace)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_of_the_page_runs(page, workdir):
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks(page):
        if block.lang in SHELL:
            run_shell(block)
        elif block.lang == "python":
            run_python(block, namespace)


def test_every_block_names_its_language_and_every_marker_its_block():
    for page in PAGES:
        for block in blocks(page):
            assert block.lang in LANGUAGES, f"{block.where}: language '{block.lang}'"
        text = page.read_text()
        for match in re.finditer(r"<!-- test:[^>]*-->\n(.*)", text):
            assert MARKER.fullmatch(match[0].split("\n")[0]), f"{page}: bad marker {match[0]}"
            assert match[1].startswith("```"), f"{page}: a marker not before a block"


def test_a_renamed_option_or_model_fails_the_check():
    with pytest.raises(AssertionError, match="does not parse"):
        check_command(["capsnet", "train", "--out", "x", "--no-such-option"], "here")
    with pytest.raises(AssertionError, match="no model"):
        check_command(["capsnet", "train", "--out", "x", "--model", "capsnet-tiny"], "here")
    with pytest.raises(AssertionError, match="unknown program"):
        check_command(["rm", "-rf", "x"], "here")


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_has_every_command_and_subcommand():
    reference = _hooks().cli_reference()
    parser = build_parser()
    expected = ["capsnet", "capsnet experiment table1", "capsnet experiment generalisation"]
    expected += ["capsnet multimnist make"]
    expected += [f"capsnet {name}" for name, _ in _hooks()._subcommands(parser)]
    for path in expected:
        assert f"`{path}`" in reference, path
    assert "--reconstruction-weight" in reference and "usage: capsnet train" in reference


def test_the_api_reference_has_every_public_name():
    import capsnet

    reference = _hooks().api_reference()
    for name in capsnet.__all__:
        assert f".{name}\n" in reference, name


def test_links_to_repository_files_become_paths_or_repository_links():
    links = _hooks().repository_links
    text = "see [the log](../benchmarks/x.log#part) and [a page](speed.md)"
    assert links(text, None) == "see the log (`benchmarks/x.log`) and [a page](speed.md)"
    assert "(https://example.org/r/blob/HEAD/benchmarks/x.log#part)" in links(
        text, "https://example.org/r/"
    )


def test_the_site_builds_with_strict(tmp_path):
    """What `make docs` (and CI) does; skipped where the docs extra is not installed."""
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra: pip install -e '.[docs]'")
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "cli" / "index.html").is_file() and (site / "api" / "index.html").is_file()
