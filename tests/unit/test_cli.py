"""Argument handling of the `devicepipe` command that needs no stack."""

from __future__ import annotations

from pathlib import Path

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


def test_probe_needs_two_regions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "replication", "--regions", "us-east-1"]) == EXIT_USAGE
    assert "needs at least two regions" in capsys.readouterr().err


def test_outage_and_probe_need_a_running_local_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "outage", "eu-west-1", "--state-dir", str(tmp_path)]) == EXIT_USAGE
    assert "no local stack is running" in capsys.readouterr().err
    assert main(["probe", "replication", "--local", "--state-dir", str(tmp_path)]) == EXIT_USAGE
    assert "no local stack is running" in capsys.readouterr().err


def test_negative_replication_delay_is_refused() -> None:
    with pytest.raises(SystemExit) as info:
        main(["local", "up", "--replication-delay-ms", "-1"])
    assert info.value.code == 2


def test_a_kept_demo_stack_is_the_local_stack_and_never_replaces_a_running_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17: `demo --keep` left a stack in .local/demo that `local status` and `local down` could not see."""
    from devicepipe_tools.local import demo, stack

    ran: list[Path] = []

    def run_demo(**kw: object) -> object:
        ran.append(kw["state_dir"])  # type: ignore[arg-type]
        raise stack.StackError("stopped here")

    def no_stack(state_dir: Path) -> dict[str, object]:
        raise stack.StackError("no local stack is running")

    monkeypatch.setattr(demo, "run_demo", run_demo)
    monkeypatch.setattr(stack, "read_state", no_stack)
    # No stack running: the kept demo runs in the local stack's own directory; without --keep, in its own
    main(["local", "demo", "--keep"])
    main(["local", "demo"])
    assert ran == [stack.STATE_DIR, demo.DEMO_DIR]
    # A stack running there: refused in one line, nothing started
    monkeypatch.setattr(stack, "read_state", lambda state_dir: {"pid": 4242})
    assert main(["local", "demo", "--keep"]) == EXIT_USAGE
    assert "a local stack is already running (pid 4242): `devicepipe local down` first" in capsys.readouterr().err
    assert len(ran) == 2
