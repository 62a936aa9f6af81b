"""Every setting does something: each field of ``canary.settings.Settings`` is read
somewhere in the product (canary/, analysis/, approvals/) outside settings.py. A setting
nothing reads would let an operator believe they configured something they did not."""

from __future__ import annotations

import re
from pathlib import Path

from canary.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("canary", "analysis", "approvals")
DEFINED_IN = ROOT / "canary" / "settings.py"


def product_source() -> str:
    files = [
        path
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != DEFINED_IN
    ]
    assert len(files) > 20, f"the product's sources were not found under {ROOT}"
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def unread(fields: list[str], source: str) -> list[str]:
    """The fields no attribute access (``settings.<name>``, ``.<name>``) reads."""
    return [name for name in fields if not re.search(rf"\.{re.escape(name)}\b", source)]


def test_every_setting_is_read_by_the_product() -> None:
    missing = unread(sorted(Settings.model_fields), product_source())
    assert missing == [], (
        f"settings nothing in {', '.join(PRODUCT)} reads: {missing}; wire them up or remove "
        "them (and their README entry)"
    )


def test_the_check_finds_a_setting_nothing_reads() -> None:
    source = "kube = connect(settings.kubeconfig)\nport = cfg.http_port\n"
    assert unread(["kubeconfig", "http_port", "servicenow_url"], source) == ["servicenow_url"]
