"""Turn the awx role's compact job-template data into the structures the
AWX API expects (used by roles/awx; unit tests in tests/test_awx.py).

A survey question in awx_job_templates is
    {variable, question, type: text|integer|multiplechoice, required,
     default, choices, min, max}
and a workflow node is
    {identifier, job_template, success: [...], failure: [...], always: [...]}.
"""

from __future__ import annotations

TYPES = {"text", "password", "integer", "multiplechoice"}


def awx_survey(questions: list[dict]) -> list[dict]:
    """AWX survey_spec "spec" entries."""
    spec = []
    for q in questions:
        kind = q.get("type", "text")
        if kind not in TYPES:
            raise ValueError(f"survey question {q.get('variable')!r}: type {kind!r} is not one of {sorted(TYPES)}")
        entry = {
            "question_name": q["question"],
            "question_description": q.get("description", ""),
            "variable": q["variable"],
            "type": kind,
            "required": bool(q.get("required", False)),
            "default": q.get("default", ""),
        }
        if kind == "multiplechoice":
            choices = [str(c) for c in q["choices"]]
            if entry["default"] != "" and str(entry["default"]) not in choices:
                raise ValueError(f"survey question {q['variable']!r}: default {entry['default']!r} not in {choices}")
            entry["choices"] = choices
        elif kind == "integer":
            entry["min"], entry["max"] = int(q.get("min", 0)), int(q.get("max", 2**31 - 1))
        else:
            entry["min"], entry["max"] = int(q.get("min", 0)), int(q.get("max", 1024))
        spec.append(entry)
    return spec


def awx_workflow_nodes(nodes: list[dict], organization: str) -> list[dict]:
    """awx.awx.workflow_job_template workflow_nodes: each node runs a job
    template of the organization and names its successors by identifier."""
    known = {n["identifier"] for n in nodes}
    result = []
    for n in nodes:
        related = {}
        for ours, theirs in (("success", "success_nodes"), ("failure", "failure_nodes"), ("always", "always_nodes")):
            targets = n.get(ours, [])
            unknown = set(targets) - known
            if unknown:
                raise ValueError(f"workflow node {n['identifier']!r}: {ours} names unknown nodes {sorted(unknown)}")
            related[theirs] = [{"identifier": t} for t in targets]
        result.append(
            {
                "identifier": n["identifier"],
                "unified_job_template": {
                    "name": n["job_template"],
                    "type": "job_template",
                    "organization": {"name": organization},
                },
                "related": related,
            }
        )
    return result


class FilterModule:
    def filters(self):
        return {"pgops_awx_survey": awx_survey, "pgops_awx_workflow_nodes": awx_workflow_nodes}
