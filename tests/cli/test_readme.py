"""README.md cannot drift from the code: every `tlkit ...` command line it shows parses with the
CLI as it is, the quick start and the pretrain -> finetune pair run as written (slow), and the
facts it states about start-up (errors told before TensorFlow loads) hold."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from tlkit import cli as tlkit_cli
from tlkit.engine import frozen as features

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_lines(text: str) -> list[str]:
    """The `tlkit ...` lines of the README's code (indented or fenced), continuations joined,
    comments dropped; what follows `&&` in a setup line counts too."""
    lines, pending, fenced = [], "", False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        found = re.match(r"^\s*(?:\S.*&& )?(tlkit\s.*)$", line)
        if not found or not (fenced or line.startswith("    ")):
            continue
        command = found.group(1)
        if command.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1]
            continue
        lines.append(command.split(" #")[0].strip())
    return lines


def argv(line: str) -> list[str]:
    """A README line as arguments: `[--opt VALUE]` written as optional is given, `a|b` is `a`."""
    words = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
    return [word.split("|")[0] for word in words]


def parse(args: list[str]) -> click.Context:
    """Parse `args` as `tlkit` would (every option and choice checked), without running anything."""
    command, name, parent = tlkit_cli.cli, "tlkit", None
    while True:
        ctx = command.make_context(name, list(args), parent=parent)
        if not isinstance(command, click.Group):
            return ctx
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return ctx
        name, command, args = command.resolve_command(ctx, rest)
        parent = ctx


LINES = command_lines(README)


def test_the_readme_shows_the_commands_this_file_runs():
    commands = {argv(line)[0] for line in LINES}
    assert {"finetune", "pretrain", "lr-find", "predict", "evaluate", "export", "visualize"} <= commands
    assert QUICK_START in LINES and PRETRAIN in LINES and FINETUNE_ON_IT in LINES


@pytest.mark.parametrize("line", LINES)
def test_every_readme_command_line_parses(line):
    ctx = parse(argv(line))
    assert ctx.command.callback is not None  # a command, not a bare group


QUICK_START = "tlkit finetune --base efficientnet_lite0 --data data_samples/photos --out runs/quickstart"
PRETRAIN = "tlkit pretrain --data data_samples/digits --out runs/ae --decoder unpool --noise 0.1"
FINETUNE_ON_IT = "tlkit finetune --base runs/ae --data data_samples/digits"


def run_as_written(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """`line` run in `cwd`, where the README's relative `data_samples/` is the repository's."""
    if not (cwd / "data_samples").exists():
        (cwd / "data_samples").symlink_to(ROOT / "data_samples")
    return subprocess.run([sys.executable, "-c", "from tlkit.cli import main; main()", *argv(line)], cwd=cwd,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_the_quick_start_prints_what_the_readme_shows(tmp_path):
    done = run_as_written(QUICK_START, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = re.findall(r"^    (stage \d \(\w+\): val_accuracy=\S+ val_loss=\S+)$", README, re.M)
    assert len(shown) == 2
    for line in shown:
        assert line in done.stdout + done.stderr


@pytest.mark.slow
def test_the_pretrain_then_finetune_pair_runs_as_written(tmp_path):
    for line in (PRETRAIN, FINETUNE_ON_IT):
        done = run_as_written(line, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]


MISSING = "data folder '/nonexistent' does not exist"


@pytest.mark.parametrize("args, message", [
    (["finetune", "--base", "efficientnet_lite0", "--data", "/nonexistent"], MISSING),
    (["lr-find", "--base", "efficientnet_lite0", "--data", "/nonexistent"], MISSING),
    (["predict", "--model", "/nonexistent", "photo.jpg"], "no model at /nonexistent"),
    (["predict", "--model", str(ROOT), "--out", "preds.txt", "photo.jpg"], "give a .csv or .json file name"),
    (["evaluate", "--model", str(ROOT), "--data", "/nonexistent"], MISSING),
])
def test_a_bad_path_is_refused_before_tensorflow_loads(args, message):
    # README: such mistakes "are refused in under a second, before TensorFlow loads"
    script = ("import sys\nfrom tlkit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
              "    print('exit', e.code, 'tensorflow' in sys.modules)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.stdout.split()[:2] == ["exit", "2"], done.stdout
    assert done.stdout.split()[-1] == "False", done.stdout  # TensorFlow was never imported
    assert message in done.stderr and "Traceback" not in done.stderr
    assert seconds < 3, f"{seconds:.1f} s"


def test_lr_find_has_its_own_help_and_silences_tensorflow(monkeypatch):
    help_text = " ".join(CliRunner().invoke(tlkit_cli.cli, ["lr-find", "--help"]).output.split())
    assert "Folder for lr_find.png" in help_text and "Run directory" not in help_text
    assert "Replace the run already in --out" not in help_text

    import tlkit.lrfind

    calls = []
    monkeypatch.setattr(tlkit_cli._app, "_quiet_tensorflow", lambda: calls.append("quiet"))
    def sweep(**settings):
        calls.append("sweep")
        return SimpleNamespace(flag="--lr-head 1e-3")

    monkeypatch.setattr(tlkit.lrfind, "lr_find", sweep)
    result = CliRunner().invoke(tlkit_cli.cli, ["lr-find", "--base", "efficientnet_lite0", "--data", str(ROOT)])
    assert result.exit_code == 0, result.output
    assert calls == ["quiet", "sweep"]  # TensorFlow's start-up noise closed off, as every other command does


def test_stage_seconds_count_the_frozen_pass(monkeypatch):
    def slow_frozen_pass(ctx, index, kind):
        time.sleep(0.3)
        return "rest", "data", "the frozen layers run once"

    monkeypatch.setattr(features, "frozen_once", slow_frozen_pass)
    ctx = SimpleNamespace(classifier=None, fit=lambda *args, **kwargs: SimpleNamespace(seconds=1.0))
    result = features.fit_frozen_once(ctx, 1, "head", None, None, "base frozen")
    assert result.seconds >= 1.3  # REPORT.md's seconds of the stage include its frozen pass
