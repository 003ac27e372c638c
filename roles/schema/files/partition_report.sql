-- One row per pg_partman parent table: premade partitions ahead of now, the
-- upper bound of the newest one, and the rows in its default partition.
SELECT c.parent_table,
       c.premake,
       count(*) FILTER (WHERE i.child_start_time > now()) AS ahead,
       count(*) FILTER (WHERE i.child_start_time > now()) < c.premake AS short,
       to_char(max(i.child_end_time) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS covered_until,
       d.row_count AS default_rows
  FROM partman.part_config c
  CROSS JOIN LATERAL partman.show_partitions(c.parent_table) p
  CROSS JOIN LATERAL partman.show_partition_info(
        format('%I.%I', p.partition_schemaname, p.partition_tablename), c.partition_interval, c.parent_table) i
  JOIN pgops.default_partition_rows d USING (parent_table)
 GROUP BY c.parent_table, c.premake, d.row_count
 ORDER BY c.parent_table
