"""The docs: generated reference pages are current, and every relative link resolves."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT

_GENERATOR = REPO_ROOT / "scripts" / "gen_reference.py"
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _markdown_files() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def test_generated_reference_is_current() -> None:
    """docs/reference/{parameters,cli,messages}.md equal what the code generates now."""
    result = subprocess.run(
        [sys.executable, str(_GENERATOR), "--check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_check_reports_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check exits 1 and names the page when a page differs from the generated one."""
    spec = importlib.util.spec_from_file_location("gen_reference", _GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("COLUMNS", "100")  # the generator sets it; restore it afterwards
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "REFERENCE", tmp_path / "docs" / "reference")
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    page = tmp_path / "docs" / "reference" / "parameters.md"
    page.write_text(page.read_text().replace("| `tau_v` |", "| `tau_video` |"))
    assert module.main(["--check"]) == 1


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    """Every relative link of README.md and docs/*.md points to an existing file or folder."""
    text = _FENCE.sub("", path.read_text())
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s):, mailto:, or an anchor in this page
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO_ROOT)}: broken links {broken}"


# ---- commands shown in the docs exist ---------------------------------------------------------
#
# Every `vam ...` command of README.md and docs/**/*.md (fenced bash/sh/shell/console blocks
# and inline code spans that start with one, `torchrun ... -m vam_policy.cli ...` included) is
# resolved to its command path by asking `vam PATH --help` which words are sub-verbs; each path
# must print its help, and each `--flag` shown after it must be in that help. torchrun's own
# flags are checked against `torchrun --help`. Nothing but `--help` is ever run.

_SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
_BLOCK = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_VAM = (sys.executable, "-m", "vam_policy.cli")  # what `vam` and ./scripts/vam run
_TORCHRUN = (sys.executable, "-m", "torch.distributed.run")  # what `torchrun` runs
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # a word that may be a verb (not a path or value)
_SUBCOMMANDS = re.compile(r"(?:\{[^}]*\}|\b[A-Z][A-Z_]*) \.\.\.$")  # usage of a subparser
_PREFIXES = {"env", "sudo", "time", "exec", "nohup"}


@dataclass(frozen=True)
class _Shown:
    """One `vam` command as a doc shows it."""

    where: str
    argv: tuple[str, ...]
    """What follows `vam` (or `-m vam_policy.cli`)."""
    launcher_flags: tuple[str, ...] = ()
    """`--flags` given to torchrun before the module."""


def _shell_lines(language: str, body: str, first_line: int) -> list[tuple[int, str]]:
    """The command lines of a fenced block: continuations joined, console output dropped."""
    lines: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(body.splitlines(), first_line):
        line = raw.strip()
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line
        if line.endswith("\\"):
            pending = (number, line[:-1].rstrip())
            continue
        pending = None
        lines.append((number, line))
    if pending is not None:
        lines.append(pending)
    if language == "console":
        lines = [(n, line[1:].strip()) for n, line in lines if line.startswith("$")]
    return lines


def _vam_commands(line: str, where: str, *, strict: bool) -> list[_Shown]:
    """The `vam` invocations of one shell line (`&&`, `;`, `|` separate commands)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as error:
        if strict:
            raise AssertionError(f"{where}: cannot split {line!r}: {error}") from None
        return []
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    shown = []
    for words in commands:
        while words and (words[0] in _PREFIXES or re.match(r"^[A-Za-z_]\w*=", words[0])):
            words = words[1:]
        if not words:
            continue
        if words[0] == "vam" or words[0].endswith("scripts/vam"):
            shown.append(_Shown(where, tuple(words[1:])))
            continue
        for i in range(len(words) - 1):
            if words[i] in ("-m", "--module") and words[i + 1] == "vam_policy.cli":
                launched = words[0] == "torchrun" or "torch.distributed.run" in words[:i]
                flags = tuple(w for w in words[1:i] if w.startswith("--")) if launched else ()
                shown.append(_Shown(where, tuple(words[i + 2:]), flags))
                break
    return shown


def _shown_commands(paths: list[Path]) -> list[_Shown]:
    """Every `vam` command in fenced shell blocks and in inline code spans of `paths`."""
    shown = []
    for path in paths:
        text = path.read_text()
        name = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        for block in _BLOCK.finditer(text):
            language = block.group(2).lower()
            if language not in _SHELL_LANGUAGES:
                continue
            first = text.count("\n", 0, block.start(3)) + 1
            for number, line in _shell_lines(language, block.group(3), first):
                shown += _vam_commands(line, f"{name}:{number}", strict=True)
        prose = _BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in _INLINE.finditer(prose):
            number = prose.count("\n", 0, span.start()) + 1
            shown += _vam_commands(span.group(1), f"{name}:{number}", strict=False)
    return shown


def _help(argv: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env={**os.environ, "COLUMNS": "200"})


def _leading_names(argv: tuple[str, ...]) -> tuple[str, ...]:
    names = []
    for word in argv:
        if not _NAME.match(word):
            break
        names.append(word)
    return tuple(names)


def _has_subcommands(help_text: str) -> bool:
    usage = " ".join(help_text.split("\n\n", 1)[0].split())
    return bool(_SUBCOMMANDS.search(usage))


def _flag_shown_in(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def _command_problems(shown: list[_Shown]) -> list[str]:
    """What is wrong with the shown commands: unknown verbs and flags, one line each."""
    prefixes = {()}
    for command in shown:
        names = _leading_names(command.argv)
        prefixes.update(names[:i] for i in range(1, len(names) + 1))
    with ThreadPoolExecutor(max_workers=4) as pool:
        launcher = pool.submit(_help, _TORCHRUN) if any(c.launcher_flags for c in shown) else None
        helps = dict(zip(prefixes, pool.map(lambda p: _help((*_VAM, *p)), prefixes),
                         strict=True))
    problems = []
    for command in shown:
        path: tuple[str, ...] = ()
        argv = command.argv
        while argv and _NAME.match(argv[0]) and helps[path].returncode == 0 \
                and _has_subcommands(helps[path].stdout):
            path, argv = (*path, argv[0]), argv[1:]
        shown_as = " ".join(("vam", *path))
        result = helps[path]
        if result.returncode != 0:
            error = (result.stderr.strip().splitlines() or ["no output"])[-1]
            problems.append(f"{command.where}: `{shown_as}` does not exist ({error})")
            continue
        for word in argv:
            if word == "--":
                break
            flag = word.split("=", 1)[0]
            if flag.startswith("--") and not _flag_shown_in(flag, result.stdout):
                problems.append(f"{command.where}: `{shown_as}` has no flag {flag}")
        for flag in command.launcher_flags:
            assert launcher is not None
            if not _flag_shown_in(flag.split("=", 1)[0], launcher.result().stdout):
                problems.append(f"{command.where}: torchrun has no flag {flag}")
    return problems


def test_shown_vam_commands_exist() -> None:
    """Every `vam` verb path and `--flag` the docs show is one `vam ... --help` knows."""
    shown = _shown_commands(_markdown_files())
    assert len(shown) >= 20, f"expected the docs' vam commands, found only {shown}"
    assert any(c.launcher_flags for c in shown), "expected a torchrun command in the docs"
    problems = _command_problems(shown)
    assert not problems, "\n".join(problems)


def test_command_check_catches_a_wrong_verb_and_flag(tmp_path: Path) -> None:
    """The check above fails on a misspelt verb, sub-verb or flag, also under torchrun."""
    page = tmp_path / "page.md"
    page.write_text(
        "Run `vam dataset info data/x` or `vam trian idm`.\n\n"
        "```bash\n"
        "source scripts/env && vam train idm --dataset d --out o \\\n"
        "    --no-cahce   # a comment with `vam bogus`\n"
        "ros2 launch vam_bringup policy.launch.py --not-checked\n"
        "```\n\n"
        "```console\n"
        "$ ./scripts/vam dataset biuld --bags b\n"
        "vam output lines are not commands --nope\n"
        "$ torchrun --standalone --nproc-per-nod 2 -m vam_policy.cli train video --out o\n"
        "```\n"
    )
    shown = _shown_commands([page])
    assert [c.where.rsplit(":", 1)[1] for c in shown] == ["4", "10", "12", "1", "1"]
    problems = _command_problems(shown)
    assert len(problems) == 4, problems
    assert "page.md:4: `vam train idm` has no flag --no-cahce" in problems[0]
    assert "page.md:10: `vam dataset biuld` does not exist" in problems[1]
    assert "page.md:12: torchrun has no flag --nproc-per-nod" in problems[2]
    assert "page.md:1: `vam trian` does not exist" in problems[3]
