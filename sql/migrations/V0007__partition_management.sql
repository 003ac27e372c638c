-- pg_partman manages the partitions: premade future partitions, a default
-- partition (monitored, normally empty) and maintenance by its background
-- worker. Interval, premake and first partition come from the session
-- settings the schema role passes (pgops.partition_*), monthly by default.
DO $$
DECLARE
    v_interval text := coalesce(nullif(current_setting('pgops.partition_interval', true), ''), '1 month');
    v_premake  int  := coalesce(nullif(current_setting('pgops.partition_premake', true), ''), '4')::int;
    v_start    text := coalesce(nullif(current_setting('pgops.partition_start', true), ''),
                                (date_trunc('month', now()) - interval '12 months')::date::text);
    v_table    record;
BEGIN
    FOR v_table IN
        SELECT * FROM (VALUES
            ('payments.transaction',                'created_at'),
            ('payments.transaction_state_change',   'transaction_created_at'),
            ('payments.refund',                     'transaction_created_at'),
            ('payments.fraud_assessment',           'transaction_created_at'),
            ('payments.fraud_assessment_indicator', 'transaction_created_at')
        ) AS t (parent, control)
    LOOP
        PERFORM partman.create_parent(
            p_parent_table      := v_table.parent,
            p_control           := v_table.control,
            p_type              := 'native',
            p_interval          := v_interval,
            p_premake           := v_premake,
            p_start_partition   := v_start
        );
    END LOOP;
    -- Keep premaking partitions even in a quiet period with no new rows.
    UPDATE partman.part_config SET infinite_time_partitions = true
     WHERE parent_table LIKE 'payments.%';
END
$$;

-- Rows in a default partition mean a partition was missing when they came in:
-- this view is what monitoring reads (status.yml, the security audit).
CREATE VIEW pgops.default_partition_rows AS
SELECT c.parent_table,
       c.parent_table || '_default' AS default_partition,
       (xpath('/row/n/text()',
              query_to_xml(format('SELECT count(*) AS n FROM %s_default', c.parent_table), false, true, '')
       ))[1]::text::bigint AS row_count
  FROM partman.part_config c
 WHERE c.parent_table LIKE 'payments.%';
