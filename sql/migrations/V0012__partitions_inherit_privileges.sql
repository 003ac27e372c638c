-- Partitions that pg_partman premakes later (its maintenance runs as
-- postgres) take their parent's owner and grants. Without this they got
-- postgres' default privileges, among them writes on the append-only tables'
-- partitions, until the next run of the access role took them back.
UPDATE partman.part_config
   SET inherit_privileges = true
 WHERE parent_table LIKE 'payments.%';
