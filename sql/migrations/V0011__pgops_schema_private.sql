-- The pgops schema holds the project's own machinery (ledger, access
-- reconciler): nothing in it is for PUBLIC, now or later.
REVOKE ALL ON SCHEMA pgops FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA pgops FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA pgops FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA pgops REVOKE EXECUTE ON ROUTINES FROM PUBLIC;
