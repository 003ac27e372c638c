"""Run one of the project's playbooks the way AWX runs a job: ansible-runner
with a private data directory holding the project, the inventory and the
job's inputs. AWX builds the same layout for every job:

    <private data dir>/
        project/            the repository (AWX: the synced project checkout)
        inventory/          the inventory (a copy: hosts file, group_vars/, host_vars/)
        env/extravars       the job's variables: survey answers, extra vars
        env/envvars         environment variables (credential injectors)
        env/settings        runner settings (job timeout)
        env/cmdline         extra command-line options (--check, --vault-password-file)
        artifacts/<ident>/  written by the run: stdout, job events, status, rc

The job starts in project/, so ansible.cfg at the repository's root applies,
and nothing from the caller's ANSIBLE_* environment leaks into it.

Job templates and workflows are the ones roles/awx creates in AWX
(roles/awx/defaults/main.yml); launching one here applies its survey the way
AWX does: defaults first, answers checked against the questions, nothing
else accepted. From the command line (see docs/operations/README.md):
    python -m pgops.runner -i inventories/lab --template Switchover \
        -e switchover_target=pg-standby -e switchover_confirm=yes
    python -m pgops.runner -i inventories/lab --workflow "Failover, rejoin, status" -e failover_confirm=yes
    python -m pgops.runner -i inventories/lab --playbook playbooks/status.yml -e status_file=/tmp/s.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parent.parent


@dataclass
class JobResult:
    """What AWX shows for a finished job: status, rc, output, per-host stats,
    and the artifacts (set_stats) a workflow passes to the next node."""

    status: str
    rc: int
    stdout: str
    stats: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    private_data_dir: Path | None = None

    @property
    def returncode(self) -> int:
        return self.rc

    def changed(self) -> dict[str, int]:
        """changed= per host, every host of the recap (runner's stats list
        a host under a category only when its count is not zero)."""
        hosts = {h for category in self.stats.values() if isinstance(category, dict) for h in category}
        return {h: self.stats.get("changed", {}).get(h, 0) for h in sorted(hosts)}


def prepare(
    private_data_dir: Path,
    inventory: Path,
    extravars: dict | None = None,
    cmdline: list[str] | None = None,
    job_timeout: int = 3600,
    project: Path = PROJECT,
) -> Path:
    """Lay out a private data directory the way AWX does for a job."""
    pdd = Path(private_data_dir)
    env = pdd / "env"
    env.mkdir(parents=True, exist_ok=True)
    link = pdd / "project"
    if not link.is_symlink() and not link.exists():
        link.symlink_to(Path(project).resolve(), target_is_directory=True)
    target = pdd / "inventory"
    if target.exists():
        shutil.rmtree(target)
    inventory = Path(inventory)
    if inventory.is_dir():
        shutil.copytree(inventory, target, symlinks=True)
    else:
        target.mkdir()
        shutil.copy2(inventory, target / inventory.name)
        for vars_dir in ("group_vars", "host_vars"):
            if (inventory.parent / vars_dir).is_dir():
                shutil.copytree(inventory.parent / vars_dir, target / vars_dir, symlinks=True)
    (env / "extravars").write_text(yaml.safe_dump(extravars or {}, default_flow_style=False))
    (env / "settings").write_text(yaml.safe_dump({"job_timeout": job_timeout, "pexpect_timeout": 10}))
    (env / "envvars").write_text(
        yaml.safe_dump({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    )
    cmd = env / "cmdline"
    if cmdline:
        cmd.write_text(" ".join(cmdline))
    elif cmd.exists():
        cmd.unlink()
    return pdd


class LaunchError(ValueError):
    """AWX would refuse to launch: an answer that fails the survey."""


def awx_definitions(project: Path = PROJECT) -> dict:
    """The job templates, schedules and workflows roles/awx creates."""
    return yaml.safe_load((project / "roles/awx/defaults/main.yml").read_text())


def survey_defaults(survey: list[dict]) -> dict:
    """What AWX passes for questions left unanswered: the non-blank defaults."""
    return {q["variable"]: q["default"] for q in survey if q.get("default", "") != ""}


def survey_vars(survey: list[dict], answers: dict) -> dict:
    """Extra vars from a survey: defaults, then the answers, checked the way
    AWX checks them (known variable, type, choices, bounds, required)."""
    questions = {q["variable"]: q for q in survey}
    unknown = set(answers) - set(questions)
    if unknown:
        raise LaunchError(f"not survey variables: {sorted(unknown)} (the survey asks {sorted(questions)})")
    values = {}
    for name, q in questions.items():
        kind = q.get("type", "text")
        if name in answers:
            value = answers[name]
        elif q.get("default", "") != "":
            value = q["default"]
        elif q.get("required"):
            raise LaunchError(f"{name}: an answer is required ({q['question']})")
        else:
            continue
        if kind == "integer":
            value = int(value)
            if not q.get("min", value) <= value <= q.get("max", value):
                raise LaunchError(f"{name}: {value} is outside {q.get('min')}..{q.get('max')}")
        else:
            value = str(value)
            if kind == "multiplechoice" and value not in [str(c) for c in q["choices"]]:
                raise LaunchError(f"{name}: {value!r} is not one of {q['choices']}")
        values[name] = value
    return values


def launch_template(
    name: str, inventory: Path, answers: dict | None = None, check: bool = False, **kwargs
) -> JobResult:
    """Launch a job template as AWX does: its playbook, its survey, job type
    check only where the template allows it."""
    templates = {t["name"]: t for t in awx_definitions()["awx_job_templates"]}
    if name not in templates:
        raise LaunchError(f"no job template {name!r}; there are {sorted(templates)}")
    template = templates[name]
    if check and not template.get("check_mode"):
        raise LaunchError(f"{name} does not allow job type check")
    extravars = survey_vars(template["survey"], answers or {})
    return run(template["playbook"], inventory, extravars, check=check, **kwargs)


def run_workflow(name: str, inventory: Path, answers: dict | None = None, **kwargs) -> list[tuple[str, JobResult]]:
    """Run a workflow template as AWX does: from its root nodes, each node's
    job getting the workflow's survey answers and the set_stats artifacts of
    the jobs before it; success, failure and always edges pick the next
    nodes. Returns (node identifier, job result) in the order they ran."""
    definitions = awx_definitions()
    workflow = next((w for w in definitions["awx_workflows"] if w["name"] == name), None)
    if workflow is None:
        raise LaunchError(f"no workflow {name!r}")
    templates = {t["name"]: t for t in definitions["awx_job_templates"]}
    nodes = {n["identifier"]: n for n in workflow["nodes"]}
    workflow_vars = survey_vars(workflow.get("survey", []), answers or {})
    children = {c for n in nodes.values() for edge in ("success", "failure", "always") for c in n.get(edge, [])}
    pending = [i for i in nodes if i not in children]
    artifacts: dict = {}
    ran: list[tuple[str, JobResult]] = []
    while pending:
        identifier = pending.pop(0)
        node = nodes[identifier]
        template = templates[node["job_template"]]
        extravars = survey_defaults(template["survey"])
        extravars.update(workflow_vars)
        extravars.update(artifacts)
        result = run(template["playbook"], inventory, extravars, **kwargs)
        ran.append((identifier, result))
        artifacts.update(result.artifacts)
        edge = "success" if result.status == "successful" else "failure"
        pending += node.get(edge, []) + node.get("always", [])
    return ran


@contextlib.contextmanager
def job_environment():
    """The process environment of an AWX job: no ANSIBLE_* or MOLECULE_*
    settings from the caller, and this interpreter's bin directory first on
    PATH (ansible-playbook from the same virtualenv)."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("ANSIBLE_", "MOLECULE_")):
            del os.environ[key]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(
    playbook: str,
    inventory: Path,
    extravars: dict | None = None,
    check: bool = False,
    limit: str | None = None,
    private_data_dir: Path | None = None,
    job_timeout: int = 3600,
    extra_cmdline: list[str] | None = None,
    quiet: bool = True,
) -> JobResult:
    """Run a playbook as an AWX job (job_type check adds --check)."""
    import ansible_runner  # heavy; only the runs need it

    # A private data dir of our own holds a copy of the inventory and the
    # answers: it is owner-only (mkdtemp) and removed after the run.
    keep = private_data_dir is not None
    pdd = Path(private_data_dir) if keep else Path(tempfile.mkdtemp(prefix="pgops-job-"))
    cmdline = (["--check"] if check else []) + list(extra_cmdline or [])
    try:
        prepare(pdd, inventory, extravars, cmdline, job_timeout)
        with job_environment():
            runner = ansible_runner.run(private_data_dir=str(pdd), playbook=playbook, limit=limit, quiet=quiet)
        artifacts: dict = {}
        for event in runner.events:
            if event.get("event") == "playbook_on_stats":
                artifacts = event.get("event_data", {}).get("artifact_data", {}) or {}
        stdout_file = Path(runner.config.artifact_dir) / "stdout"
        return JobResult(
            status=runner.status,
            rc=runner.rc,
            stdout=stdout_file.read_text() if stdout_file.exists() else "",
            stats=runner.stats or {},
            artifacts=artifacts,
            private_data_dir=pdd if keep else None,
        )
    finally:
        if not keep:
            shutil.rmtree(pdd, ignore_errors=True)


def _parse_vars(items: list[str]) -> dict:
    values: dict = {}
    for item in items:
        if item.lstrip().startswith("{"):
            values.update(json.loads(item))
        else:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"-e {item!r}: expected key=value or a JSON object")
            values[key] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a pgops operation the way an AWX job does (ansible-runner).")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", help="an AWX job template by name, e.g. Switchover (survey answers with -e)")
    what.add_argument("--workflow", help='an AWX workflow by name, e.g. "Failover, rejoin, status"')
    what.add_argument("--playbook", help="any playbook of the repository, e.g. playbooks/status.yml")
    parser.add_argument("-i", "--inventory", required=True, type=Path, help="inventory directory or file")
    parser.add_argument("-e", "--extra-vars", action="append", default=[], help="key=value or a JSON object")
    parser.add_argument("--check", action="store_true", help="job type check (--check)")
    parser.add_argument("--limit")
    parser.add_argument("--vault-password-file", type=Path)
    parser.add_argument("--private-data-dir", type=Path, help="keep the job's directory here (default: a temp dir)")
    args = parser.parse_args(argv)
    answers = _parse_vars(args.extra_vars)
    options = {
        "extra_cmdline": ["--vault-password-file", str(args.vault_password_file.resolve())]
        if args.vault_password_file
        else [],
        "quiet": False,
    }
    inventory = args.inventory.resolve()
    try:
        if args.workflow:
            if args.check or args.limit or args.private_data_dir:
                parser.error("--check, --limit and --private-data-dir apply to one job, not a workflow")
            results = run_workflow(args.workflow, inventory, answers, **options)
        elif args.template:
            options.update(limit=args.limit, private_data_dir=args.private_data_dir)
            results = [(args.template, launch_template(args.template, inventory, answers, args.check, **options))]
        else:
            options.update(limit=args.limit, private_data_dir=args.private_data_dir)
            results = [("playbook", run(args.playbook, inventory, answers, check=args.check, **options))]
    except LaunchError as e:
        print(f"launch refused: {e}", file=sys.stderr)
        return 2
    for identifier, result in results:
        kept = f"; private data dir {result.private_data_dir}" if result.private_data_dir else ""
        print(f"{identifier}: {result.status} (rc {result.rc}){kept}", file=sys.stderr)
        if result.artifacts:
            print(f"{identifier}: artifacts {json.dumps(result.artifacts)}", file=sys.stderr)
    return 0 if all(r.status == "successful" for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
