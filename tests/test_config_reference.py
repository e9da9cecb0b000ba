"""The README's configuration reference is the one generated from the pydantic models."""

from __future__ import annotations

from gateway.commands.config_reference import README, readme_section, render


def test_readme_reference_is_current() -> None:
    assert readme_section(README.read_text()) == render(), "run: python -m gateway.commands.config_reference --write"


def test_reference_names_every_section_and_nested_key() -> None:
    text = render()
    for heading in ("`top level`", "`[serial]`", "`[mqtt]`", "`[mqtt.tls]`", "`[log]`", "`[detector]`"):
        assert heading in text
    assert "| `outbox_cap` |" in text and "| `raise_threshold` |" in text
