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
    # Any comment style the file's format reads (SQL's "-- ", say).
    assert text.startswith("{{ ansible_managed | comment")


def test_variable_reference_is_generated_from_the_specs():
    text = specdoc.REFERENCE.read_text()
    assert text == specdoc.update(text, specdoc.load_specs()), "run `make docs`"


def test_readme_is_read_in_five_minutes():
    """The README keeps the essentials; the rest lives in docs/ (issue 18)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines: move the detail to a page in docs/"


def _markdown(path: Path) -> str:
    """The text of a Markdown file without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", _markdown(path), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


# The README and the pages it sends a newcomer to (not docs/operations/, the operator's guide).
LINKING_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", LINKING_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", _markdown(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.is_file(), f"{page.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name} links to {target}: no such heading"


def test_no_trust_md5_or_password_methods_can_be_declared():
    spec = specdoc.load_specs()["postgresql"]["options"]["postgresql_hba_entries"]["options"]
    assert not {"trust", "md5", "password"} & set(spec["method"]["choices"])
    assert set(spec["type"]["choices"]) == {"local", "hostssl"}


def test_tasks_touching_secrets_are_no_log():
    """A task that mentions a key, password or secret variable must say no_log."""
    secret = re.compile(r"\{\{[^}]*\w(_key|password|secret)\b[^}]*\}\}")

    def tasks(items):
        for task in items or []:
            if "block" in task:
                yield from tasks(task["block"] + task.get("rescue", []) + task.get("always", []))
            else:
                yield task

    for tasks_file in ROOT.glob("roles/*/tasks/*.yml"):
        for task in tasks(yaml.safe_load(tasks_file.read_text())):
            body = yaml.safe_dump(task)
            if secret.search(body) and "privatekey" not in body and "ca.key" not in body:
                assert task.get("no_log") is True, f"{tasks_file.name}: {task.get('name')}"


# The server's facts have one source, the postgresql role (postgresql_server);
# nothing else may spell out a version, cluster name, socket or data path.
SERVER_LITERALS = re.compile(
    r"/var/run/postgresql|/var/lib/postgresql|/etc/postgresql/\d|/usr/lib/postgresql|postgresql@\d"
    r"|default\(1\d\)|\b1\d main\b|['\"]main['\"]\s*$|cluster_name \| default"
)


# The role that owns the literals, and run outputs git ignores (benchmark
# logs, the lab's state), which quote what the servers said.
OWN_OR_OUTPUT = {("roles", "postgresql"), ("bench", "results"), ("lab", ".state")}


def test_no_server_literal_outside_the_postgresql_role():
    scanned = [
        *ROOT.glob("roles/*/**/*"),
        *ROOT.glob("playbooks/**/*"),
        ROOT / "site.yml",
        *ROOT.glob("bench/**/*"),
        *ROOT.glob("pgops/**/*.py"),
        *ROOT.glob("lab/**/*"),
    ]
    found = []
    for path in scanned:
        relative = path.relative_to(ROOT)
        if not path.is_file() or relative.parts[:2] in OWN_OR_OUTPUT or path.suffix in {".png", ".pyc"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if SERVER_LITERALS.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == [], "read postgresql_server instead:\n" + "\n".join(found)


def test_roles_add_server_configuration_only_through_the_dropin_entry_point():
    """Only the postgresql role (and Patroni, which runs the server) writes
    under the server's configuration directory; the others call its `dropin` entry point (which writes, applies
    and reports), and none reloads or restarts the server by itself."""
    offenders = []
    for tasks_file in ROOT.glob("roles/*/tasks/*.yml"):
        role = tasks_file.parts[-3]
        # Patroni runs the server (its configuration file, restarts through its
        # API); restore builds a separate scratch cluster.
        if role in {"postgresql", "patroni", "restore"}:
            continue
        text = tasks_file.read_text()
        for pattern in ("config_dir", "conf_d", "pg_reload_conf", "pg_ctlcluster", "state: restarted"):
            if pattern in text:
                offenders.append(f"{tasks_file.relative_to(ROOT)}: {pattern}")
    assert offenders == []
    callers = {p.parts[-3] for p in ROOT.glob("roles/*/tasks/*.yml") if "tasks_from: dropin" in p.read_text()}
    assert {"audit", "backup", "schema"} <= callers
