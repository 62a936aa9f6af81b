"""The test bed's commands live in `python -m testbed`, not in the product's `canary`
command (nothing here starts a process: only the commands' wiring and their answers when
no test bed is running)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from canary.cli import main as canary
from testbed.__main__ import main as bed


def test_the_product_command_has_no_test_bed() -> None:
    runner = CliRunner()
    assert "sandbox" not in runner.invoke(canary, ["--help"]).output
    result = runner.invoke(canary, ["sandbox", "up"])
    assert result.exit_code == 2
    assert "No such command 'sandbox'" in result.output


def test_the_test_bed_command_lists_its_commands() -> None:
    result = CliRunner().invoke(bed, ["--help"])
    assert result.exit_code == 0
    for command in ("build", "up", "down", "status", "demo"):
        assert f"  {command} " in result.output


def test_up_keeps_its_options() -> None:
    result = CliRunner().invoke(bed, ["up", "--help"])
    assert result.exit_code == 0
    assert "--dir" in result.output
    assert "KSC_SANDBOX_DIR" in result.output
    assert "[default: v0.20]" in result.output


def test_status_without_a_test_bed_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(bed, ["status", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == f"no sandbox in {tmp_path}\n"


def test_down_without_a_test_bed_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(bed, ["down", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output == f"no sandbox in {tmp_path}\n"


def test_the_servicenow_simulator_has_its_commands() -> None:
    result = CliRunner().invoke(bed, ["servicenow", "--help"])
    assert result.exit_code == 0
    for command in ("serve", "approve", "reject", "list"):
        assert f"  {command} " in result.output
    approve = CliRunner().invoke(bed, ["servicenow", "approve", "--help"])
    assert "--as" in approve.output
    assert "KSC_SERVICENOW_URL" in approve.output


def test_serve_refuses_a_callback_ca_file_that_holds_no_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n", encoding="utf-8")
    result = CliRunner().invoke(
        bed, ["servicenow", "serve", "--port", "0", "--callback-ca-file", str(junk)]
    )
    assert result.exit_code == 2
    assert "--callback-ca-file" in result.output
    assert "holds no usable PEM certificate" in result.output
