"""pgops.steps: Molecule's action lines become timings, and the report's
total is the wall clock when steps ran side by side."""

import json

from pgops import steps


def test_action_lines_become_records():
    ticks = iter([10.0, 25.5, 30.0, 31.0])
    clock = steps.ActionClock(clock=lambda: next(ticks))
    for line in [
        "\x1b[36mINFO    \x1b[0m cluster ➜ converge: Executing",
        "noise",
        "INFO     cluster ➜ converge: Executed: Successful",
        "INFO     cluster ➜ verify: Executing",
        "INFO     cluster ➜ verify: Executed: Failed",
    ]:
        clock.feed(line)
    assert clock.records == [
        {"action": "converge", "seconds": 15.5, "ok": True},
        {"action": "verify", "seconds": 1.0, "ok": False},
    ]


def test_total_is_the_wall_clock_of_parallel_steps():
    records = [
        {"step": "lint", "action": "", "seconds": 40.0, "ok": True, "start": 0.0, "end": 40.0},
        {"step": "molecule default", "action": "verify", "seconds": 200.0, "ok": True},
        {"step": "molecule default", "action": "", "seconds": 400.0, "ok": True, "start": 40.0, "end": 440.0},
        {"step": "molecule cluster", "action": "", "seconds": 1500.0, "ok": False, "start": 40.0, "end": 1540.0},
    ]
    table = steps.report(records)
    assert "| &nbsp;&nbsp;verify | 200.0 | 3:20 | ok |" in table
    assert "| molecule cluster | 1500.0 | 25:00 | FAILED |" in table
    assert table.splitlines()[-1] == "| **total (wall clock)** | 1540.0 | 25:40 | |"


def test_records_without_times_are_summed():
    records = [{"step": "lint", "action": "", "seconds": 30.0, "ok": True},
               {"step": "unit", "action": "", "seconds": 15.0, "ok": True}]  # fmt: skip
    assert steps.report(records).splitlines()[-1] == "| **total** | 45.0 | 0:45 | |"


def test_run_records_the_step_and_its_exit_code(tmp_path, monkeypatch):
    monkeypatch.setenv("PGOPS_STEPS_FILE", str(tmp_path / "steps.jsonl"))
    assert steps.run("fails", ["sh", "-c", "echo 'INFO     x ➜ create: Executing'; exit 3"]) == 3
    (record,) = [line for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert '"ok": false' in record and '"start"' in record and '"end"' in record


def test_a_failed_step_repeats_what_failed_under_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("PGOPS_STEPS_FILE", str(tmp_path / "steps.jsonl"))
    out = [
        "tests/test_ha.py::test_failover PASSED",
        "E   AssertionError: no leader after 60 s",
        '  \x1b[2m│\x1b[0m fatal: [pg1]: FAILED! => {"msg": "boom"}',
        "FAILED tests/test_ha.py::test_failover - AssertionError: no leader",
        # Molecule's frame wraps long lines, and pytest's summary with them.
        "  \x1b[2m│\x1b[0m FAILED",
        "  \x1b[2m│\x1b[0m   tests/test_pooler.py::test_read_write_port_reaches_the_primary_and_read_on",
        "  \x1b[2m│\x1b[0m   ly_a_replica[cluster2]",
        "  │ FAILED tests/test_ha.py::test_partition -",
        "  │   AssertionErro...",
        "  │ tests/test_ha.py .F",
        "===== 1 failed, 452 passed in 1500.00s (0:25:00) =====",
    ]
    script = "; ".join(f"printf '%s\\n' '{line}'" for line in out) + "; exit 1"
    assert steps.run("molecule cluster", ["sh", "-c", script]) == 1
    assert steps.run("unit", ["sh", "-c", "echo 'FAILED x.py::y'"]) == 0
    records = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    table = steps.report(records)
    tail = table.split("== what failed in molecule cluster\n", 1)[1].splitlines()
    assert tail == [
        "E   AssertionError: no leader after 60 s",
        'fatal: [pg1]: FAILED! => {"msg": "boom"}',
        "FAILED tests/test_ha.py::test_failover - AssertionError: no leader",
        "FAILED tests/test_pooler.py::test_read_write_port_reaches_the_primary_and_read_only_a_replica[cluster2]",
        "FAILED tests/test_ha.py::test_partition - AssertionErro...",
        "===== 1 failed, 452 passed in 1500.00s (0:25:00) =====",
    ]
    assert "what failed in unit" not in table  # a step that passed repeats nothing


def test_minutes_round_to_the_second():
    assert [steps.minutes(s) for s in (1559.9, 59.5, 0.4, 2124.2)] == ["26:00", "1:00", "0:00", "35:24"]
