"""Static checks of the roles: the conventions the project relies on."""

import re
from pathlib import Path

import pytest
import yaml

from pgops import specdoc

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())


def test_there_are_roles():
    assert ROLES


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_role_has_argument_specs(role):
    spec = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
    assert spec["argument_specs"]["main"]["options"]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_argument_specs_agree(role):
    """Every default is a documented, validated variable and the other way
    round (a variable without a default must be declared required or have
    a documented computed default)."""
    defaults_file = role / "defaults/main.yml"
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
    entry_points = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    options = {name for entry in entry_points.values() for name in entry.get("options", {})}
    assert set(defaults) == set(options), (
        f"only in defaults: {set(defaults) - set(options)}; only in specs: {set(options) - set(defaults)}"
    )


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_public_variables_are_role_prefixed(role):
    prefix = role.name + "_"
    for name in specdoc.load_specs()[role.name]["options"]:
        assert name.startswith(prefix), name
    for vars_file in (role / "vars").glob("*.yml"):
        for name in yaml.safe_load(vars_file.read_text()) or {}:
            assert name.startswith(f"__{role.name}_"), f"{vars_file}: {name} should be __{prefix}..."


@pytest.mark.parametrize("template", sorted(ROOT.glob("roles/*/templates/*.j2")), ids=lambda p: p.name)
def test_templates_start_with_ansible_managed(template):
    text = template.read_text()
    if text.startswith("#!"):  # a script: the header follows the interpreter line
        text = text.split("\n", 1)[1]
    assert text.startswith("{{ ansible_managed | comment }}")


def test_readme_variables_are_generated_from_the_specs():
    readme = (ROOT / "README.md").read_text()
    assert readme == specdoc.update(readme, specdoc.load_specs()), "run `make docs`"


def test_no_trust_md5_or_password_methods_can_be_declared():
    spec = specdoc.load_specs()["postgresql"]["options"]["postgresql_hba_entries"]["options"]
    assert not {"trust", "md5", "password"} & set(spec["method"]["choices"])
    assert set(spec["type"]["choices"]) == {"local", "hostssl"}


def test_tasks_touching_secrets_are_no_log():
    """A task that mentions a key, password or secret variable must say no_log."""
    secret = re.compile(r"\{\{[^}]*\w(_key|password|secret)\b[^}]*\}\}")
    for tasks_file in ROOT.glob("roles/*/tasks/*.yml"):
        for task in yaml.safe_load(tasks_file.read_text()) or []:
            body = yaml.safe_dump(task)
            if secret.search(body) and "privatekey" not in body and "ca.key" not in body:
                assert task.get("no_log") is True, f"{tasks_file.name}: {task.get('name')}"
