"""The README's spec reference names every field of the schema, and its commands are the ones CI runs."""
import re

from runner.spec.models import Container, Mount, Phase
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_every_spec_field_is_documented():
    for prefix, model in (("", Phase), ("container.", Container), ("container.mounts[]", Mount)):
        for name, field in model.model_fields.items():
            key = field.alias or name
            if model is Mount:
                assert f"`{key}`" in README.split("container.mounts[]")[1].split("\n")[0], key
            else:
                rows = (f"| `{prefix}{key}` |", f"| `{prefix}{key}[]` |")
                assert any(row in README for row in rows), f"{prefix}{key} missing from the spec reference"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert commands[:2] == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text()


def test_the_files_the_readme_shows_exist_and_say_what_it_says(capsys, monkeypatch):
    from runner.cli import main

    monkeypatch.chdir(REPO)
    assert main(["validate", "docs/examples/bad.yaml"]) == 1
    for line in capsys.readouterr().out.splitlines():
        assert line in README, line
    shown = README.split("$ cat docs/examples/bad.yaml\n")[1].split("$ runner validate")[0]
    assert shown == (REPO / "docs" / "examples" / "bad.yaml").read_text()
    assert "    - {source: /var/run/docker.sock, target: /var/run/docker.sock}" in (REPO / "docs" / "examples" / "sneaky.yaml").read_text().splitlines()[8]
    assert (REPO / "docs" / "report.png").stat().st_size < 300_000
