"""``--help`` of every ``ov3`` command and subcommand: exit 0, every argument and option
described, no internal docstring shown.

The commands are discovered from ``cli.COMMANDS`` (its subcommands, and for commands that take a
preset or a study name, one name per kind of run config), so a new command is walked without
editing this file. Help runs in-process; tyro's and argparse's formats are both read."""

import contextlib
import io
import re

import pytest

from openvision3 import cli
from openvision3.configs import get_preset, preset_names

LEAKS = ("no logic here", "``", "parse and dispatch", "parse and call")
DEFAULTS = re.compile(r"\((default|required|fixed to|sets)[^()]*(\([^()]*\)[^()]*)*\)\s*$")


def _one_preset_per_config_class(names) -> list[str]:
    """Experiment presets with distinct run-config classes (their fields differ)."""
    seen, out = set(), []
    for name in names:
        kind = type(get_preset(name))
        if kind not in seen:
            seen.add(kind)
            out.append(name)
    return out


def invocations() -> list[list[str]]:
    calls = [[]]  # `ov3 --help`
    for name, command in cli.COMMANDS.items():
        calls.append([name])
        calls += [[name, sub] for sub in command.subcommands]
        if command.choices is not None:
            names = list(command.choices())
            if set(names) <= set(preset_names()):
                names = _one_preset_per_config_class(names)
            calls += [[name, choice] for choice in names]
    return calls


def run_help(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([*argv, "--help"])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue() + err.getvalue()


def undescribed(text: str) -> list[str]:
    """Options and positional arguments listed in a help text without a description (a bare
    ``(default: x)`` is not one). Reads argparse's layout and tyro's, boxed (a terminal) or
    plain (captured)."""
    entries: list[list[str]] = []  # [name, description words...]
    section, previous = "", ""
    for raw in text.splitlines():
        if raw.startswith(("╭", "╰")):  # a tyro box opens (its title) or closes
            section, entries = raw.strip("╭╰─╮╯ "), entries + [[""]]
            continue
        if re.fullmatch(r"\s*-{10,}\s*", raw):  # tyro without a terminal: " title", a rule
            if re.match(r" \S", previous):  # (a rule under a group's description is not one)
                section = previous.strip()
                if entries and entries[-1][0] == section:
                    entries.pop()
            entries.append([""])
            continue
        previous = raw
        line = raw.rstrip()
        if raw.startswith("│"):
            line = raw[1:].rstrip().removesuffix("│").rstrip().removeprefix(" ")
        elif raw and not raw.startswith(" "):  # an argparse section title ("options:")
            section, entries = raw.rstrip(":"), entries + [[""]]
            continue
        stripped = line.strip()
        indent = len(line) - len(stripped)
        listed = section.endswith(("options", "arguments"))
        if listed and stripped and indent <= 2:
            if entries and entries[-1][0].endswith(",") and len(entries[-1]) == 1:
                entries[-1][0] += " " + stripped  # flag spellings wrapped onto a second line
            elif stripped.startswith("-") or section.startswith("positional"):
                name, *desc = re.split(r"\s{2,}", stripped, maxsplit=1)
                entries.append([name, *desc])
            else:
                entries.append([""])
        elif entries and stripped and indent > 2:
            entries[-1].append(stripped)
        else:
            entries.append([""])
    bad = []
    for name, *desc in entries:
        if re.search(r"\.arch\.|--repeats\.", name):  # a dict field's keys; its group says what
            continue  # they are (AutoencoderKL's keyword arguments; question type -> draws)
        if name and not DEFAULTS.sub("", " ".join(desc)).strip():
            bad.append(name.split()[0].rstrip(","))
    return bad


CALLS = invocations()


@pytest.mark.parametrize("argv", CALLS, ids=[" ".join(c) or "ov3" for c in CALLS])
def test_help_exits_0_and_describes_every_option(argv):
    code, text = run_help(argv)
    assert code == 0, text
    assert "usage:" in text
    assert not [leak for leak in LEAKS if leak in text], text
    assert undescribed(text) == [], text


def test_the_walk_covers_subcommands_modes_and_presets():
    flat = {" ".join(c) for c in CALLS}
    assert {"eval generation", "eval vqa", "bench train", "vlm chat", "demo --understanding"} <= (
        flat
    )
    assert "study paper-small" in flat
    walked = {type(get_preset(c[1])) for c in CALLS if c[:1] == ["train"] and len(c) == 2}
    assert walked == {type(get_preset(name)) for name in preset_names()}  # every kind of run config


def test_train_help_lists_presets_and_fields():
    code, text = run_help(["train"])
    assert code == 0 and "demo_generation" in text and "--model-preset" in text
    code, text = run_help(["train", "ov3_b2_smoke"])
    # The optional parts' fields are plain flags, listed with the rest.
    assert code == 0 and "--model.decoder.depth" in text and "--train.stages.0.steps" in text


def test_understanding_demo_help_shows_its_own_options():
    code, text = run_help(["demo", "--understanding"])
    assert code == 0
    assert "--run" in text and "--stage2-steps" in text


def test_undescribed_reads_both_layouts():
    argparse_text = (
        "usage: x\n\npositional arguments:\n  samples  a folder\n  ref\n\n"
        "options:\n  -h, --help  show help\n  --k K\n  --out OUT   where\n"
        "  --long-option LONG_OPTION\n              described below\n"
    )
    assert undescribed(argparse_text) == ["ref", "--k"]
    tyro_text = (
        "╭─ options ─────╮\n│ --name STR    │\n│       (default: demo) │\n"
        "│ --seed INT    │\n│       the seed (default: 0) │\n╰───────╯\n"
    )
    assert undescribed(tyro_text) == ["--name"]
    plain_text = (
        "usage: x\n\n positional arguments\n ---------------\n  MODEL  the model\n\n"
        " options\n ---------------\n  --seed INT\n        (default: 0)\n  --flag,\n"
        "  --no-flag\n        what it does (default: False)\n\n"
        " data options\n ---------------\n  the data group\n  ---------------\n"
        "  --data.path STR\n        (default: '')\n"
    )
    assert undescribed(plain_text) == ["--seed", "--data.path"]


def test_without_help_a_missing_argument_is_usage_on_stderr_and_status_2(capsys):
    for argv in (["train"], ["study"], ["bench"], ["eval", "nonsense"], ["no-such-command"]):
        assert cli.main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and "usage:" in captured.err, argv
    cli.main(["no-such-command"])
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, flags",
    [
        (["demo"], ("--generation", "--understanding", "--run", "--model-preset")),
        (["train", "demo_smoke"], ("--model-preset",)),
        (["cache-latents", "demo_smoke"], ("--model-preset",)),
        (["study", "paper-small_smoke"], ("--base-preset", "--model-preset")),
    ],
)
def test_flags_taken_before_tyro_are_described(argv, flags):
    """Flags the command handles itself (not tyro's fields) are described in its help too."""
    code, text = run_help(argv)
    assert code == 0 and all(flag in text for flag in flags), text
