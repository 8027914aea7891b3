"""Packaging: every subpackage is listed in pyproject.toml, and a wheel carries the zoo."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_subpackage():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(REPO), include=["lightning_emo*"]))
    assert set(config["packages"]) == found | {"lightning_emo._zoo"}
    assert config["package-dir"] == {"lightning_emo._zoo": "zoo"}


def test_an_installed_wheel_finds_the_zoo(tmp_path):
    """Build the wheel, install it alone into a folder, and load the zoo's demo model from there."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("lightning_emo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"lightning_emo/_zoo/synthetic-demo.yaml", "lightning_emo/_zoo/README.md",
            "lightning_emo/_zoo/models/synthetic-demo/model.safetensors",
            "lightning_emo/_zoo/models/synthetic-demo/config.json"} <= names
    assert not any(n.startswith(("tests/", "scripts/", "zoo/")) for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import lightning_emo, json; from lightning_emo.hub.zoo import list_entries, zoo_dir; "
             "from lightning_emo.hub import Recognizer; "
             "m = Recognizer.from_pretrained('synthetic-demo'); "
             "print(json.dumps([lightning_emo.__file__, str(zoo_dir()), [e.name for e in list_entries()], "
             "m.classes]))")
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_EMO_ZOO"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=env).stdout
    module_file, zoo, names, classes = __import__("json").loads(out.strip().splitlines()[-1])
    assert module_file.startswith(str(site)) and zoo == str(site / "lightning_emo" / "_zoo")
    assert "synthetic-demo" in names and len(classes) == 7
