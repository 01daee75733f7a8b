"""The top-level folders ship as ``kiln.controller`` and ``kiln.agent``; their packages are found, not listed."""

from setuptools import find_packages, setup

FOLDERS = ("controller", "agent")

setup(
    packages=[f"kiln.{package}" for package in find_packages(include=[f"{folder}*" for folder in FOLDERS])],
    package_dir={f"kiln.{folder}": folder for folder in FOLDERS},
)
