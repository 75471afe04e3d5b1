"""docs/FHIR.md's conformance table (interaction x resource) is the one the server declares:
generated from the CapabilityStatement by `carnet fhir conformance-table`, checked here."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carnet.app import create_app
from carnet.cli import app as cli
from carnet.fhir import metadata
from carnet.runtime import Runtime

DOC = Path(__file__).resolve().parents[2] / "docs" / "FHIR.md"


def test_the_table_in_the_doc_is_the_one_the_server_declares(sqlite_runtime: Runtime) -> None:
    served = TestClient(create_app(sqlite_runtime)).get("/fhir/metadata").json()
    expected = metadata.conformance_table(served)
    assert metadata.table_in(DOC.read_text(encoding="utf-8")) == expected, (
        "docs/FHIR.md is stale: run `carnet fhir conformance-table --write docs/FHIR.md`"
    )
    # Every declared interaction of every type has its cell, and nothing else does.
    for resource in served["rest"][0]["resource"]:
        row = next(line for line in expected.splitlines() if line.startswith(f"| {resource['type']} |"))
        assert row.count("yes") == (
            len({i["code"] for i in resource["interaction"]})
            + sum(
                (
                    resource["conditionalCreate"] is True,
                    resource["conditionalUpdate"] is True,
                    resource["conditionalDelete"] == "single",
                    "operation" in resource,
                )
            )
        )


def test_the_cli_prints_and_writes_the_table(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["fhir", "conformance-table"])
    assert printed.exit_code == 0 and printed.output.strip() == metadata.conformance_table()
    target = tmp_path / "doc.md"
    target.write_text(f"# x\n{metadata.TABLE_START}\nold\n{metadata.TABLE_END}\nafter\n", encoding="utf-8")
    assert runner.invoke(cli, ["fhir", "conformance-table", "--write", str(target)]).exit_code == 0
    assert metadata.table_in(target.read_text(encoding="utf-8")) == metadata.conformance_table()
    assert target.read_text(encoding="utf-8").endswith("after\n")
    bare = tmp_path / "bare.md"
    bare.write_text("# no markers\n", encoding="utf-8")
    refused = runner.invoke(cli, ["fhir", "conformance-table", "--write", str(bare)])
    assert refused.exit_code == 2 and bare.read_text(encoding="utf-8") == "# no markers\n"
