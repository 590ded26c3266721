"""The ``deqa`` front door: command modules, exit codes, one-line errors, --debug, logging levels."""

from __future__ import annotations

import argparse
import importlib
import logging

import pytest

from deqa import cli


def test_every_command_is_a_module_of_deqa_commands():
    for name in cli.COMMANDS:
        module = cli.command_module(name)
        assert callable(module.add_arguments) and callable(module.run), name
        assert module.__name__ == f"deqa.commands.{name}"
    # the library modules no longer hold front doors
    for library in ("deqa.scoring", "deqa.validation", "deqa.labels"):
        assert not hasattr(importlib.import_module(library), "add_arguments"), library


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "score" in capsys.readouterr().out


@pytest.fixture
def fake_command(monkeypatch):
    """``deqa labels`` replaced by a module whose run() does what the test asks."""
    behaviour = {}

    class Fake:
        @staticmethod
        def add_arguments(p):
            p.add_argument("what")

        @staticmethod
        def run(args):
            logging.getLogger("deqa.fake").debug("a debug line")
            logging.getLogger("deqa.fake").info("an info line")
            logging.getLogger("deqa.fake").warning("a warning line")
            if args.what == "boom":
                raise RuntimeError("the disk\nis full")
            if args.what == "ctrl-c":
                raise KeyboardInterrupt
            behaviour["args"] = args
            return 0

    monkeypatch.setattr(cli, "command_module", lambda name: Fake)
    return behaviour


def test_unexpected_error_is_one_line_unless_debug(fake_command, capsys):
    assert cli.main(["labels", "boom"]) == 2
    err = capsys.readouterr().err
    assert "error: the disk is full (run with --debug for the traceback)" in err
    assert "Traceback" not in err
    with pytest.raises(RuntimeError, match="the disk"):
        cli.main(["labels", "boom", "--debug"])
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "labels", "boom"])


def test_interrupt_exits_130(fake_command, capsys):
    assert cli.main(["labels", "ctrl-c"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, shown, hidden",
    [
        ([], ["an info line", "warning: a warning line"], ["a debug line"]),
        (["-v"], ["a debug line", "an info line"], []),
        (["-q"], ["warning: a warning line"], ["an info line"]),
        (["-qq"], [], ["an info line", "a warning line"]),
    ],
)
def test_log_levels(fake_command, capsys, flags, shown, hidden):
    assert cli.main(["labels", "ok", *flags]) == 0
    err = capsys.readouterr().err
    assert all(s in err for s in shown) and not any(h in err for h in hidden)
    assert isinstance(fake_command["args"], argparse.Namespace)


def test_options_before_and_after_the_command(fake_command):
    cli.main(["-q", "labels", "ok"])
    assert fake_command["args"].quiet == 1
    cli.main(["labels", "ok", "-v"])
    assert fake_command["args"].verbose == 1 and fake_command["args"].quiet == 0


def test_library_warnings_reach_stderr_after_the_cli_configured_logging(capsys):
    cli.configure_logging()
    logging.getLogger("deqa.images").warning("late line")
    assert "warning: late line" in capsys.readouterr().err


def test_score_usage_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["score", str(tmp_path / "x.png"), "--batch-size", "0"]) == 2
    assert cli.main(["score", str(tmp_path), "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--batch-size must be at least 1" in err and "folder holds no image files" in err
    assert "Traceback" not in err


def test_validate_empty_manifest_and_missing_file_exit_2(tmp_path, capsys):
    empty = tmp_path / "m.csv"
    empty.write_text("")
    assert cli.main(["validate", str(empty), "--format", "manifest"]) == 2
    assert cli.main(["validate", str(tmp_path / "none.csv"), "--format", "manifest"]) == 2
    err = capsys.readouterr().err
    assert "the file is empty" in err and "label file not found" in err and "Traceback" not in err


def test_labels_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("picture,score\na.jpg,3\n")
    assert cli.main(["labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--format" in err and "Traceback" not in err
