"""bench.cv's command line: a model path that is not a bundle is refused before minutes of recording."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench import cv


def test_a_bundle_that_is_not_one_is_a_usage_error_naming_its_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cv.main(["--bundle", str(tmp_path)])
    assert stopped.value.code == 2
    assert f"{tmp_path / 'manifest.json'}: manifest missing: not a model bundle" in capsys.readouterr().err
