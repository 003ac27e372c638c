-- The physical restore drill's markers: each drill inserts one row on the
-- primary and restores the repository to just after it, so the copy must
-- hold that row and every payment row committed before it.
CREATE TABLE pgops.restore_drill_marker (
    token      text        PRIMARY KEY CHECK (length(token) BETWEEN 8 AND 64),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
REVOKE ALL ON pgops.restore_drill_marker FROM PUBLIC;
