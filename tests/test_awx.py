"""AWX as code and ansible-runner: every job template points at an existing
playbook that accepts each of its survey variables, schedules and workflows
name existing templates, the execution environment pins what CI tests, no
playbook prompts, and every operation has its page in the operator's guide."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgops import runner
from pgops.testing import load_filter

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFS = yaml.safe_load((ROOT / "roles/awx/defaults/main.yml").read_text())
TEMPLATES = {t["name"]: t for t in DEFS["awx_job_templates"]}
GUIDE = ROOT / "docs/operations"
SECTIONS = ["## When", "## Inputs", "## What it changes", "## How to verify", "## How to back out"]


awx_filters = load_filter("pgops_awx")


def role_inputs(name: str) -> set[str]:
    specs = yaml.safe_load((ROOT / "roles" / name / "meta/argument_specs.yml").read_text())["argument_specs"]
    return {option for entry in specs.values() for option in entry.get("options", {})}


def task_inputs(tasks: list, base: Path) -> set[str]:
    found: set[str] = set()
    for task in tasks or []:
        for section in ("block", "rescue", "always"):
            found |= task_inputs(task.get(section, []), base)
        for module in ("ansible.builtin.include_role", "ansible.builtin.import_role"):
            if module in task:
                found |= role_inputs(task[module]["name"])
        for module in ("ansible.builtin.include_tasks", "ansible.builtin.import_tasks"):
            if module in task:
                ref = task[module]
                path = base / (ref if isinstance(ref, str) else ref["file"])
                found |= task_inputs(yaml.safe_load(path.read_text()), path.parent)
    return found


def playbook_inputs(path: Path) -> set[str]:
    """The variables a playbook accepts: its plays' vars and the argument
    specs of every role it runs, through imported playbooks and task files."""
    found: set[str] = set()
    for play in yaml.safe_load(path.read_text()):
        if "ansible.builtin.import_playbook" in play:
            found |= playbook_inputs(path.parent / play["ansible.builtin.import_playbook"])
            continue
        found |= set(play.get("vars") or {})
        for role in play.get("roles", []):
            found |= role_inputs(role if isinstance(role, str) else role["role"])
        for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            found |= task_inputs(play.get(section, []), path.parent)
    return {name for name in found if not name.startswith("_")}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def test_every_operation_of_the_issue_has_a_job_template():
    wanted = {"Deploy", "Status", "Switchover", "Failover", "Rejoin", "Backup now", "Restore drill"}
    wanted |= {"Partition maintenance", "Security audit", "PII key rotation"}
    assert wanted <= set(TEMPLATES)
    assert TEMPLATES["Deploy"]["playbook"] == "site.yml" and TEMPLATES["Deploy"]["check_mode"]


@pytest.mark.parametrize("template", DEFS["awx_job_templates"], ids=lambda t: t["name"])
def test_job_template_playbook_exists_and_accepts_its_survey(template):
    playbook = ROOT / template["playbook"]
    assert playbook.is_file(), template["playbook"]
    accepted = playbook_inputs(playbook)
    asked = {q["variable"] for q in template["survey"]}
    assert asked <= accepted, f"not accepted by {template['playbook']}: {asked - accepted}"


def test_the_input_finder_sees_role_specs_and_play_vars():
    """A control for the test above: known inputs are found, unknown ones not."""
    inputs = playbook_inputs(ROOT / "playbooks/restore_drill.yml")
    assert {"restore_drill_host", "restore_mode", "restore_port"} <= inputs
    assert "restore_drill_hots" not in inputs and "__drill_host" not in inputs
    assert "switchover_target" in playbook_inputs(ROOT / "playbooks/switchover.yml")
    assert "schema_pii_key_version" in playbook_inputs(ROOT / "playbooks/pii_rotate.yml")
    assert "postgresql_max_connections" in playbook_inputs(ROOT / "site.yml")


@pytest.mark.parametrize("workflow", DEFS["awx_workflows"], ids=lambda w: w["name"])
def test_workflow_nodes_and_survey(workflow):
    nodes = awx_filters.awx_workflow_nodes(workflow["nodes"], "Org")
    assert {n["unified_job_template"]["name"] for n in nodes} <= set(TEMPLATES)
    accepted = set().union(
        *(playbook_inputs(ROOT / TEMPLATES[n["job_template"]]["playbook"]) for n in workflow["nodes"])
    )
    assert {q["variable"] for q in workflow.get("survey", [])} <= accepted
    awx_filters.awx_survey(workflow.get("survey", []))


def test_schedules_name_existing_templates_with_valid_rules():
    for schedule in DEFS["awx_schedules"]:
        assert schedule["job_template"] in TEMPLATES
        assert re.fullmatch(r"DTSTART;TZID=UTC:\d{8}T\d{6} RRULE:FREQ=\w+(;\w+=[\w,]+)*", schedule["rrule"])
    assert {"Restore drill", "Security audit"} <= {s["job_template"] for s in DEFS["awx_schedules"]}


@pytest.mark.parametrize("template", DEFS["awx_job_templates"], ids=lambda t: t["name"])
def test_surveys_become_valid_awx_specs(template):
    for question in awx_filters.awx_survey(template["survey"]):
        assert question["type"] in {"text", "integer", "multiplechoice"}
        if question["type"] == "multiplechoice":
            assert question["default"] in question["choices"]
        if question["required"] and question["type"] != "multiplechoice":
            assert question["default"] != "" or question["variable"] in {
                "switchover_target",
                "failover_candidate",
                "restore_host",
                "schema_pii_key_version",
            }


def test_destructive_operations_ask_for_confirmation_and_refuse_check_mode():
    for name, variable in (("Switchover", "switchover_confirm"), ("Failover", "failover_confirm")):
        question = next(q for q in TEMPLATES[name]["survey"] if q["variable"] == variable)
        assert question["default"] == "no" and question["required"]
        assert not TEMPLATES[name].get("check_mode")
        # The playbook hands the answer to the role's entry point, which refuses before any change.
        action = variable.split("_")[0]
        assert f'patroni_{variable}: "{{{{ {variable} | bool }}}}"' in (ROOT / TEMPLATES[name]["playbook"]).read_text()
        tasks = yaml.safe_load((ROOT / f"roles/patroni/tasks/{action}.yml").read_text())
        assert any(t.get("ansible.builtin.assert", {}).get("that") == f"patroni_{variable} | bool" for t in tasks)


def test_survey_filter_rejects_bad_questions():
    with pytest.raises(ValueError, match="not in"):
        awx_filters.awx_survey(
            [{"variable": "x", "question": "?", "type": "multiplechoice", "choices": ["a"], "default": "b"}]
        )
    with pytest.raises(ValueError, match="type"):
        awx_filters.awx_survey([{"variable": "x", "question": "?", "type": "float"}])
    with pytest.raises(ValueError, match="unknown nodes"):
        awx_filters.awx_workflow_nodes([{"identifier": "a", "job_template": "A", "success": ["b"]}], "Org")


def test_launch_applies_the_survey_like_awx():
    survey = TEMPLATES["Restore"]["survey"]
    values = runner.survey_vars(survey, {"restore_host": "db1", "restore_port": "5440"})
    assert values["restore_port"] == 5440 and values["restore_mode"] == "logical" and values["restore_host"] == "db1"
    assert "restore_target_time" not in values  # blank and optional: not passed
    with pytest.raises(runner.LaunchError, match="required"):
        runner.survey_vars(survey, {})
    with pytest.raises(runner.LaunchError, match="not survey variables"):
        runner.survey_vars(survey, {"restore_host": "db1", "restore_force": True})
    with pytest.raises(runner.LaunchError, match="not one of"):
        runner.survey_vars(survey, {"restore_host": "db1", "restore_mode": "physical"})
    with pytest.raises(runner.LaunchError, match="outside"):
        runner.survey_vars(survey, {"restore_host": "db1", "restore_port": 80})
    with pytest.raises(runner.LaunchError, match="does not allow job type check"):
        runner.launch_template("Failover", ROOT / "inventories/lab", check=True)


def test_private_data_dir_has_the_awx_layout(tmp_path):
    inventory = tmp_path / "inv"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text("all: {hosts: {db1: {}}}\n")
    (inventory / "group_vars/all.yml").write_text("x: 1\n")
    pdd = runner.prepare(tmp_path / "job", inventory, {"rejoin_host": "db1"}, ["--check"])
    assert (pdd / "project").resolve() == ROOT and (pdd / "project/ansible.cfg").is_file()
    assert (pdd / "inventory/hosts.yml").is_file() and (pdd / "inventory/group_vars/all.yml").read_text() == "x: 1\n"
    assert yaml.safe_load((pdd / "env/extravars").read_text()) == {"rejoin_host": "db1"}
    assert (pdd / "env/cmdline").read_text() == "--check"
    assert yaml.safe_load((pdd / "env/settings").read_text())["job_timeout"] > 0


def test_nothing_prompts():
    """AWX cannot answer a prompt: no vars_prompt, no pause waiting for input,
    nothing in ansible.cfg that asks."""
    for path in [ROOT / "site.yml", *ROOT.glob("playbooks/*.yml")]:
        for play in yaml.safe_load(path.read_text()):
            assert "vars_prompt" not in play, path
    for path in [
        *ROOT.glob("playbooks/**/*.yml"),
        *ROOT.glob("roles/*/tasks/*.yml"),
        *ROOT.glob("roles/*/handlers/*.yml"),
    ]:
        text = path.read_text()
        for match in re.finditer(r"ansible\.builtin\.pause:(.*?)(?=\n\S|\n  - |\Z)", text, re.S):
            assert re.search(r"seconds|minutes", match.group(1)), f"{path}: pause without a timeout"
    config = (ROOT / "ansible.cfg").read_text()
    assert not re.search(r"^\s*ask_\w+\s*=\s*(true|yes|1)", config, re.M | re.I)
    assert "StrictHostKeyChecking=accept-new" in config  # no host-key prompt, changed keys refused


def test_awx_configure_passes_syntax_check_and_refuses_bad_input_before_any_change():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    cmd = [str(BIN / "ansible-playbook"), "playbooks/awx_configure.yml"]
    syntax = subprocess.run([*cmd, "--syntax-check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    # No AWX here: with the defaults the run stops at the check, after the
    # role's argument specs accepted every default.
    unset = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert unset.returncode != 0 and "AWX configuration refused, nothing changed" in unset.stdout, unset.stdout
    assert "Validating arguments against arg spec" in unset.stdout
    bad = json.dumps({"awx_job_templates": [{"name": "X", "playbook": "site.yml"}]})
    refused = subprocess.run([*cmd, "-e", bad], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "missing required arguments" in refused.stdout + refused.stderr


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_execution_environment_pins_what_ci_tests():
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    pins = _pins(ROOT / "requirements.txt")
    deps = ee["dependencies"]
    assert deps["ansible_core"]["package_pip"] == f"ansible-core=={pins['ansible-core']}"
    assert deps["ansible_runner"]["package_pip"] == f"ansible-runner=={pins['ansible-runner']}"
    for requirement in deps["python"]:
        name, version = requirement.split("==")
        assert version == importlib.metadata.version(name.split("[")[0]), requirement
        if name.lower() in pins:
            assert pins[name.lower()] == version
    declared = {c["name"]: c["version"] for c in deps["galaxy"]["collections"]}
    wanted = {c["name"] for c in yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]}
    assert set(declared) == wanted
    import ansible_collections

    base = Path(ansible_collections.__path__[0])
    for name, version in declared.items():
        manifest = json.loads((base / name.replace(".", "/") / "MANIFEST.json").read_text())
        assert manifest["collection_info"]["version"] == version, name


def test_execution_environment_builds_a_context(tmp_path):
    """ansible-builder accepts the file and writes the build context (the
    image itself is built where a registry is reachable)."""
    made = subprocess.run(
        [str(BIN / "ansible-builder"), "create", "-f", "execution-environment.yml", "-c", str(tmp_path / "ctx")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    build = tmp_path / "ctx/_build"
    assert "awx.awx" in (build / "requirements.yml").read_text()
    assert "boto3==" in (build / "requirements.txt").read_text()
    assert "openssh-clients" in (build / "bindep.txt").read_text()


OPERATIONS = [*DEFS["awx_job_templates"], *DEFS["awx_workflows"]]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: o["name"])
def test_every_operation_has_a_guide_page(operation):
    page = GUIDE / f"{slug(operation['name'])}.md"
    assert page.is_file(), page
    text = page.read_text()
    positions = [text.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), f"{page.name}: sections {SECTIONS}"
    for question in operation.get("survey", []):
        assert f"`{question['variable']}`" in text, f"{page.name} does not document {question['variable']}"
    if "playbook" in operation:
        assert f"`{operation['playbook']}`" in text
    assert f"({page.name})" in (GUIDE / "README.md").read_text(), "the guide's index does not link it"


def test_runner_cli_refuses_a_bad_launch_before_any_job(capsys):
    assert runner.main(["-i", "inventories/lab", "--template", "Backup now", "-e", "backup_now_kind=incremental"]) == 2
    assert "launch refused: backup_now_kind: 'incremental' is not one of" in capsys.readouterr().err
    assert runner.main(["-i", "inventories/lab", "--template", "Reboot everything"]) == 2


def test_runner_runs_a_job_like_awx(tmp_path, monkeypatch):
    """A real ansible-runner job (the AWX configuration playbook, which needs
    no host): the project's ansible.cfg applies although the caller's
    ANSIBLE_CONFIG points elsewhere, the answers reach the play, the job's
    output and stats come back, and the kept private data dir has the run's
    artifacts."""
    monkeypatch.setenv("ANSIBLE_CONFIG", str(tmp_path / "nowhere.cfg"))
    result = runner.run(
        "playbooks/awx_configure.yml",
        ROOT / "inventories/lab",
        {"awx_host": "https://awx.invalid"},
        private_data_dir=tmp_path / "job",
    )
    assert result.status == "failed" and result.rc != 0
    assert "AWX configuration refused, nothing changed" in result.stdout
    assert result.changed() == {"localhost": 0}
    assert (tmp_path / "job/artifacts").is_dir() and os.environ["ANSIBLE_CONFIG"] == str(tmp_path / "nowhere.cfg")
