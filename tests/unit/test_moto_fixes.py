"""moto's private names are used in one module, which refuses a moto it does not know in one line."""

from __future__ import annotations

import re

import pytest

from devicepipe_tools.local import moto_fixes, stack
from devicepipe_tools.template import ROOT


def test_the_installed_moto_is_known_and_has_every_name_used() -> None:
    moto_fixes.check()  # the lock pins a known moto: `make venv` gives one that passes


@pytest.mark.parametrize("version", ["5.1.0", "5.3.0", "6.0.0", "4.2.14"])
def test_an_unknown_moto_is_refused_in_one_line(version: str) -> None:
    with pytest.raises(moto_fixes.MotoVersionError) as caught:
        moto_fixes.check(version)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"moto {version} is not a version the local stack knows (5.2.x)")
    assert "make venv" in message and "moto_fixes.py" in message


def test_a_known_series_lacking_a_name_is_refused_before_anything_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto_fixes, "PRIVATE_NAMES", (*moto_fixes.PRIVATE_NAMES, ("moto.kinesis.models", "Shard.gone")))
    monkeypatch.setattr(moto_fixes, "_checked", set())
    with pytest.raises(moto_fixes.MotoVersionError, match=r"lacks moto\.kinesis\.models\.Shard\.gone, which"):
        moto_fixes.check("5.2.99")


def test_local_up_refuses_an_unknown_moto_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moto_fixes, "installed_version", lambda: "9.9.9")
    with pytest.raises(stack.StackError, match=r"^moto 9\.9\.9 is not a version the local stack knows"):
        stack.preflight(("us-east-1",))
    with pytest.raises(moto_fixes.MotoVersionError):
        moto_fixes.apply()


def test_pyproject_pins_moto_to_the_known_series() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'"moto\[server\]([^"]+)"', text)
    assert spec == ">=5.2,<5.3" and moto_fixes.KNOWN_SERIES == ("5.2",)


def test_no_other_tooling_module_imports_moto_internals() -> None:
    """moto's public ``mock_aws`` and ``ThreadedMotoServer`` (moto's documented server mode) are fine anywhere;
    ``moto.<service>.models`` and the server's other parts only here."""
    tooling = sorted((ROOT / "devicepipe_tools").rglob("*.py"))
    internal = re.compile(r"^\s*(from moto\.(?!server import ThreadedMotoServer$)|import moto\.)", re.M)
    offenders = [
        p.relative_to(ROOT).as_posix() for p in tooling if p.name != "moto_fixes.py" and internal.search(p.read_text())
    ]
    assert offenders == []
