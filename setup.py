"""Package discovery only (everything else is in pyproject.toml): every subpackage of domains/
installs as ``diffsci.domains.<name>`` without being listed, so adding a domain needs no edit
here. setuptools' ``packages.find`` cannot add the ``diffsci.`` prefix, hence this file."""

from setuptools import find_packages, setup

setup(
    packages=[
        "diffsci.core",
        *(f"diffsci.{p}" for p in find_packages(include=["domains", "domains.*"])),
    ]
)
