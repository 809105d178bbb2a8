"""Every subpackage ships: a directory of modules without __init__.py is left out of a wheel by
setup.py's find_packages (uio_ds/eval once was)."""

import os

from setuptools import find_packages

from helpers import REPO


def test_every_module_directory_is_a_package():
    found = set(find_packages(where=REPO, include=["uio_ds", "uio_ds.*"]))
    for root, _dirs, files in os.walk(os.path.join(REPO, "uio_ds")):
        if "__pycache__" in root or not any(f.endswith(".py") for f in files):
            continue
        name = os.path.relpath(root, REPO).replace(os.sep, ".")
        assert name in found, f"{name} has modules but no __init__.py: a wheel would leave it out"
