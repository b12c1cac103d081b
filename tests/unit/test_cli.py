"""Argument handling of the `devicepipe` command that needs no stack."""

from __future__ import annotations

import pytest

from devicepipe_tools.cli import EXIT_USAGE, _regions, main


def test_all_regions_come_from_samconfig() -> None:
    assert _regions("all") == ("us-east-1", "eu-west-1")
    assert _regions("eu-west-1, us-east-1") == ("eu-west-1", "us-east-1")


def test_simulate_needs_an_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "--simulate", "--stream", "s", "--region", "us-east-1"]) == EXIT_USAGE
    assert "--simulate needs --count or --duration" in capsys.readouterr().err


def test_invoke_names_unknown_functions_and_missing_events(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["invoke", "NoSuchFunction", "--event", "events/ingest/valid-batch.json"]) == EXIT_USAGE
    assert "no resource 'NoSuchFunction'" in capsys.readouterr().err
    assert main(["invoke", "IngestFunction", "--event", "nowhere.json"]) == EXIT_USAGE
    assert "no event file nowhere.json" in capsys.readouterr().err


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["produce", "--simulate", "--count", "0", "--stream", "s"])
    assert info.value.code == 2
