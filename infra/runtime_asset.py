"""The `runtime/` folder (the pyanamo package) as shipped to the instances and the scaler.

The instances' copy carries the wheels of every dependency at the versions of
``runtime/fleet-lock.txt`` (the same the tests run with), so a boot installs with
``pip install --no-index``: no package index is needed on the instance (private subnets without
NAT), and every boot gets the versions that were tested, not the newest. The wheels are
downloaded once per lock file into ``build/wheels/`` on the machine that synthesizes the app.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "runtime"
LOCK = RUNTIME / "fleet-lock.txt"
ASSET_EXCLUDE = ["**/__pycache__", "*.egg-info", "build", "dist", ".mypy_cache"]
WHEELS = "wheels"  # the folder of the bundled asset that holds them
FLEET_PYTHON = "3.11"  # what the bootstrap installs on Amazon Linux 2023 (python3.11)


class WheelsError(RuntimeError):
    """The pinned wheels could not be downloaded (no package index reachable here)."""


def locked_wheels(cache_root: Path = REPO / "build" / "wheels") -> Path:
    """A folder with one wheel per pin of the lock file (pure Python, any platform), downloaded
    on first use and kept, keyed by the lock file's content."""
    lock = LOCK.read_bytes()
    folder = cache_root / hashlib.sha256(lock).hexdigest()[:16]
    if (folder / ".complete").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    proc = subprocess.run(  # noqa: S603 - pip, with our own lock file
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "--python-version", FLEET_PYTHON, "--dest", str(partial), "-r", str(LOCK)],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise WheelsError(f"cannot download the fleet's pinned wheels ({LOCK.name}): "
                          f"{(proc.stderr.strip().splitlines() or ['pip failed'])[-1]}")
    not_pure = [w.name for w in partial.glob("*.whl") if not w.name.endswith("-none-any.whl")]
    if not_pure:
        raise WheelsError(f"{LOCK.name} pins packages without a pure-Python wheel: {', '.join(not_pure)}")
    (partial / ".complete").touch()
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def bundle_runtime(output: Path, source: Path = RUNTIME) -> Path:
    """The instances' runtime: the package's source and ``wheels/`` with every pinned wheel."""
    shutil.copytree(source, output, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".mypy_cache"))
    wheels = output / WHEELS
    wheels.mkdir(exist_ok=True)
    for wheel in locked_wheels().glob("*.whl"):
        shutil.copy2(wheel, wheels / wheel.name)
    return output


@jsii.implements(ILocalBundling)
class _LocalBundle:
    """CDK asset bundling on this machine (no Docker): ``bundle_runtime``."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def try_bundle(self, output_dir: str, *args: Any, **kwargs: Any) -> bool:
        bundle_runtime(Path(output_dir), self.source)
        return True


def fleet_bundling(source: Path) -> dict[str, Any]:
    """Keyword arguments for ``s3_assets.Asset``: the runtime with its wheels. The asset's hash is
    its source's (the package and the lock file), so an unchanged runtime is the same asset."""
    return {
        "bundling": BundlingOptions(image=DockerImage.from_registry("none"), local=_LocalBundle(source)),
        "asset_hash_type": AssetHashType.SOURCE,
    }
