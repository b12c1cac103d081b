"""`make package`: reproducible artifacts and one deployable template per samconfig region."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from devicepipe_tools.package import deterministic_zip, package
from devicepipe_tools.template import ROOT, load_template


def fake_build(tmp_path: Path) -> Path:
    """A `sam build` output shaped like the real one: the template plus one folder per function and layer."""
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy(ROOT / "template.yaml", build / "template.yaml")
    template = load_template(build / "template.yaml")
    for logical_id, res in template["Resources"].items():
        if res["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion"):
            key = "CodeUri" if "CodeUri" in res["Properties"] else "ContentUri"
            folder = build / res["Properties"][key]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "app.py").write_text(f"# {logical_id}\n")
    return build


def test_zips_are_reproducible(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("x = 1\n")
    (src / "b.txt").write_text("b")
    first = deterministic_zip(src, tmp_path / "1.zip")
    (src / "b.txt").touch()  # a newer mtime must not change the bytes
    assert deterministic_zip(src, tmp_path / "2.zip") == first


def test_each_region_gets_a_template_pointing_at_the_artifacts(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    summary = package(fake_build(tmp_path), dist)
    assert any("CommonLayer.zip" in line for line in summary)
    for region in ("us-east-1", "eu-west-1"):
        template = yaml.safe_load((dist / region / "template.yaml").read_text())
        assert template["Resources"]["IngestFunction"]["Properties"]["CodeUri"] == "../artifacts/IngestFunction.zip"
        assert (dist / region / template["Resources"]["IngestFunction"]["Properties"]["CodeUri"]).exists()
        assert "PrimaryRegion=us-east-1" in (dist / region / "parameters.txt").read_text()
