"""Backup tiers and retention (pgops.backup), over a simulated calendar."""

import datetime as dt

from pgops.backup import Manifest, backup_id, plan_retention, tiers_for


def simulate(days, keep, start=dt.datetime(2026, 1, 1, 0, 5, tzinfo=dt.UTC), failed=()):
    """One nightly run per day (none on the `failed` days), pruning after each."""
    stored: list[Manifest] = []
    for n in range(days):
        when = start + dt.timedelta(days=n)
        if n in failed:
            continue
        m = Manifest(backup_id(when), when, f"dumps/{backup_id(when)}.dump", 1, "0" * 64, tiers_for(when, stored))
        stored.append(m)
        stored, _ = plan_retention(stored, keep)
    return stored


def test_first_backup_of_week_and_month_carry_those_tiers():
    monday = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)  # a Monday, first of the month
    first = Manifest("a", monday, "k", 1, "0" * 64, tiers_for(monday, []))
    assert first.tiers == ("daily", "weekly", "monthly")
    tuesday = monday + dt.timedelta(days=1)
    assert tiers_for(tuesday, [first]) == ("daily",)
    next_monday = monday + dt.timedelta(days=7)
    assert tiers_for(next_monday, [first]) == ("daily", "weekly")


def test_sixty_days_keep_exactly_the_configured_set():
    kept = simulate(60, {"daily": 7, "weekly": 4, "monthly": 3})
    days = sorted(m.finished_at.date() for m in kept)
    last = dt.date(2026, 3, 1)  # day 60
    daily = {last - dt.timedelta(days=n) for n in range(7)}
    # Weekly: the first backup (Monday) of each of the last 4 ISO weeks; 1 March is a Sunday.
    weekly = {dt.date(2026, 2, 2), dt.date(2026, 2, 9), dt.date(2026, 2, 16), dt.date(2026, 2, 23)}
    monthly = {dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2026, 3, 1)}
    assert set(days) == daily | weekly | monthly


def test_newest_backup_is_never_deleted_and_zero_counts_keep_it():
    kept = simulate(10, {"daily": 0, "weekly": 0, "monthly": 0})
    assert [m.finished_at.date() for m in kept] == [dt.date(2026, 1, 10)]


def test_failed_nights_do_not_shift_the_tiers_away():
    # The 1st of February fails: the 2nd becomes that month's monthly backup.
    kept = simulate(40, {"daily": 3, "weekly": 0, "monthly": 2}, failed={31})
    monthly = sorted(m.finished_at.date() for m in kept if "monthly" in m.tiers)
    assert monthly == [dt.date(2026, 1, 1), dt.date(2026, 2, 2)]


def test_manifest_round_trip_keeps_extra_fields():
    when = dt.datetime(2026, 3, 4, 0, 0, 7, tzinfo=dt.UTC)
    m = Manifest(backup_id(when), when, "k", 10, "a" * 64, ("daily",), {"row_counts": {"t": 3}})
    again = Manifest.from_json(m.to_json())
    assert again == m and again.extra == {"row_counts": {"t": 3}}
