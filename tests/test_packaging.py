"""pyproject.toml: metadata in the forms current packaging tools accept without warnings."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


class TestTheLicense:
    def test_is_an_spdx_expression_string_not_a_deprecated_table(self) -> None:
        license_ = PYPROJECT["project"]["license"]
        assert isinstance(license_, str)
        assert canonicalize_license_expression(license_) == license_ == "Apache-2.0"
        assert not any(
            c.startswith("License ::") for c in PYPROJECT["project"].get("classifiers", [])
        )

    def test_the_build_backend_is_new_enough_to_read_it(self) -> None:
        # setuptools reads PEP 639 license expressions from 77.0 on.
        (req,) = (Requirement(r) for r in PYPROJECT["build-system"]["requires"])
        assert req.name == "setuptools"
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lower and min(lower) >= Version("77")
