"""Every script's --help: each flag has a line of help and shows its default once."""
import argparse
import importlib

import pytest

SCRIPTS = ["train_ae", "fit_curve", "eval_curve", "plot", "run_study", "report", "plane", "ensemble", "function_space",
           "bench", "photo_patches", "simplex"]


def parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script's parse_args builds, caught as it parses."""
    caught = {}

    def catch(self, args=None, namespace=None):
        caught["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(SystemExit):
        importlib.import_module(script).parse_args([])
    return caught["parser"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help_and_shows_its_default_once(script, monkeypatch):
    parser = parser_of(script, monkeypatch)
    formatter = parser.formatter_class(prog=script)
    flags = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert flags
    for action in flags:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{script} {name} has no help"
        shown = formatter._expand_help(action)  # the text --help prints for it
        assert shown.count("(default") <= 1, f"{script} {name} shows its default twice: {shown!r}"
    # and argparse itself renders it (no stray % in a help text)
    assert "usage:" in parser.format_help()


def test_a_default_argparse_adds_is_shown_when_the_help_does_not_say_it(monkeypatch):
    parser = parser_of("train_ae", monkeypatch)
    formatter = parser.formatter_class(prog="train_ae")
    epochs = next(a for a in parser._actions if "--epochs" in a.option_strings)
    device = next(a for a in parser._actions if "--device" in a.option_strings)
    assert formatter._expand_help(epochs).endswith("(default: 10)")
    assert formatter._expand_help(device).count("(default") == 1
