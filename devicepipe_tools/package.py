"""`make package`: deployment artifacts for every region of samconfig.toml, from `sam build`'s output, offline.

For each function and the layer in ``.aws-sam/build`` it writes a reproducible zip (sorted entries, fixed
timestamps, so the same code gives the same bytes and SHA-256) to ``dist/artifacts/``, and for each region of
samconfig.toml ``dist/<region>/template.yaml`` (the built template pointing at those zips) and
``dist/<region>/parameters.txt`` (its parameter overrides). Deploying them needs AWS and nothing else:

    sam deploy --template-file dist/us-east-1/template.yaml --region us-east-1 --resolve-s3 \\
        --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --parameter-overrides $(cat dist/us-east-1/parameters.txt)

(`sam deploy` uploads the local zips; `sam package` would need S3 already.)
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml

from devicepipe_tools.template import ROOT, load_template

BUILD = ROOT / ".aws-sam" / "build"
DIST = ROOT / "dist"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def deterministic_zip(source: Path, target: Path) -> str:
    """Zip a directory with sorted entries and fixed times; returns the SHA-256 of the zip."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), _FIXED_TIME)
            info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return hashlib.sha256(target.read_bytes()).hexdigest()


def package(build: Path = BUILD, dist: Path = DIST) -> list[str]:
    """Write the artifacts and per-region templates; returns the lines of a summary."""
    if not (build / "template.yaml").exists():
        raise SystemExit("no sam build output: run `make build` (or `make package`, which builds first)")
    template = load_template(build / "template.yaml")
    summary = []
    zips: dict[str, str] = {}
    for logical_id, res in template["Resources"].items():
        props = res.get("Properties", {})
        key = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}.get(res["Type"])
        if key is None or not isinstance(props.get(key), str):
            continue
        target = dist / "artifacts" / f"{logical_id}.zip"
        digest = deterministic_zip(build / props[key], target)
        zips[logical_id] = f"../artifacts/{logical_id}.zip"
        summary.append(f"{_shown(target)}  {target.stat().st_size:>10,} bytes  sha256 {digest[:16]}")
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for env in config.values():
        params = env.get("deploy", {}).get("parameters", {}) if isinstance(env, dict) else {}
        if "region" not in params:
            continue
        region_dir = dist / params["region"]
        region_dir.mkdir(parents=True, exist_ok=True)
        for logical_id, location in zips.items():
            props = template["Resources"][logical_id]["Properties"]
            props["CodeUri" if "CodeUri" in props else "ContentUri"] = location
        # Intrinsics come back in their long form (Fn::Sub, Ref), which CloudFormation reads the same.
        (region_dir / "template.yaml").write_text(yaml.safe_dump(template, sort_keys=False, width=120))
        (region_dir / "parameters.txt").write_text(params.get("parameter_overrides", "") + "\n")
        summary.append(f"{_shown(region_dir / 'template.yaml')}  ({params['region']})")
    return summary


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    for line in package():
        print(line)
    sys.exit(0)
