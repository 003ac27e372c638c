-- Sample data for the lab at a chosen scale (psql -v scale=N, default 1):
-- 20*N merchants of skewed sizes, 1000*N customers with a card each, 20000*N
-- transactions over the last 6 months across the partitions, fraud scores,
-- ~90 % captured, ~5 % of those refunded (half partially).
-- Run with `make sample-data SCALE=N`. Set-based and fast; not a test fixture.
\set ON_ERROR_STOP on
\if :{?scale}
\else
  \set scale 1
\endif
BEGIN;
-- Run as the superuser: nothing unqualified may resolve outside the
-- built-ins and this session's own temporary tables.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT set_config('pgops.sample_scale', :'scale', true);

INSERT INTO payments.geo_location (country_code, region, city, latitude, longitude)
SELECT c, 'Region ' || c, 'City ' || c, 0, 0
  FROM unnest(ARRAY['FR','DE','GB','US','ES','IT','NL','BE','SE','JP','BR','IN']) AS c
ON CONFLICT DO NOTHING;
INSERT INTO payments.ip_network (network, location_id)
SELECT format('100.%s.0.0/16', 64 + row_number() OVER (ORDER BY id))::cidr, id
  FROM payments.geo_location ORDER BY id LIMIT 12
ON CONFLICT DO NOTHING;

INSERT INTO payments.merchant (name, country_code, default_currency)
SELECT 'Sample merchant ' || n, (ARRAY['FR','DE','GB','US'])[1 + n % 4], (ARRAY['EUR','EUR','GBP','USD'])[1 + n % 4]
  FROM generate_series(1, 20 * :scale) AS n;

-- One bcrypt hash shared by all sample customers (hashing thousands at cost
-- >= 10 would take minutes); their full names are encrypted one by one.
WITH pw AS (SELECT public.crypt('sample-password-not-real', public.gen_salt('bf', 10)) AS h),
     base AS (SELECT coalesce(max(id), 0) AS b FROM payments.customer)
INSERT INTO payments.customer (username, password_hash, email, full_name_enc, full_name_key_version)
SELECT 'sample_' || (b + n), pw.h, 'sample_' || (b + n) || '@example.test', e.ciphertext, e.key_version
  FROM generate_series(1, 1000 * :scale) AS n, pw, base,
       LATERAL payments.pii_encrypt('Sample Customer ' || (b + n)) AS e;

INSERT INTO payments.customer_payment_method (customer_id, method_type, token, display_hint)
SELECT c.id, 'card', 'tok_sample_' || md5(c.id::text), 'Card ' || lpad((c.id % 10000)::text, 4, '0')
  FROM payments.customer c
 WHERE c.username LIKE 'sample\_%' AND NOT EXISTS (SELECT 1 FROM payments.customer_payment_method m WHERE m.customer_id = c.id);

CREATE TEMP TABLE sample_txn ON COMMIT DROP AS
WITH m AS (SELECT array_agg(id ORDER BY id) AS ids FROM payments.merchant WHERE name LIKE 'Sample merchant %'),
     c AS (SELECT array_agg(pm.id ORDER BY pm.id) AS methods, array_agg(pm.customer_id ORDER BY pm.id) AS customers
             FROM payments.customer_payment_method pm WHERE pm.token LIKE 'tok\_sample\_%')
SELECT nextval('payments.transaction_id_seq') AS id,
       date_trunc('second', now() - random() * interval '180 days') AS created_at,
       -- Zipf-like skew: a few merchants take most of the volume.
       m.ids[1 + floor(power(random(), 3) * array_length(m.ids, 1))::int] AS merchant_id,
       k AS pick,
       (100 + floor(power(random(), 2) * 50000))::bigint AS amount,
       power(random(), 4)::numeric(6,5) AS score,
       random() AS fate
  FROM generate_series(1, 20000 * :scale) AS g, m, c,
       LATERAL (SELECT 1 + floor(random() * array_length(c.methods, 1))::int AS k) AS pick;

INSERT INTO payments.transaction (id, created_at, merchant_id, customer_id, payment_method_id, amount, currency,
                                  status, client_ip, location_id, device_type, updated_at)
SELECT s.id, s.created_at, s.merchant_id, c.customers[s.pick], c.methods[s.pick], s.amount, mr.default_currency,
       'pending', format('100.%s.1.%s', 65 + s.id % 12, 1 + s.id % 250)::inet,
       (SELECT n.location_id FROM payments.ip_network n WHERE n.network >>= format('100.%s.1.1', 65 + s.id % 12)::inet),
       (ARRAY['mobile','desktop','tablet','server'])[1 + s.id % 4], s.created_at
  FROM sample_txn s JOIN payments.merchant mr ON mr.id = s.merchant_id,
       (SELECT array_agg(pm.id ORDER BY pm.id) AS methods, array_agg(pm.customer_id ORDER BY pm.id) AS customers
          FROM payments.customer_payment_method pm WHERE pm.token LIKE 'tok\_sample\_%') AS c;

INSERT INTO payments.fraud_assessment (transaction_id, transaction_created_at, model_version, anomaly_score,
                                       decision, assessed_at)
SELECT id, created_at, 'model-1', score,
       CASE WHEN score >= 0.9 THEN 'decline' WHEN score >= 0.7 THEN 'review' ELSE 'approve' END, created_at
  FROM sample_txn;

INSERT INTO payments.transaction_state_change (transaction_id, transaction_created_at, from_status, to_status,
                                               reason, changed_by, changed_at)
SELECT id, created_at, NULL, 'pending', 'payment received', 'sample-data', created_at FROM sample_txn;

-- Walk the statuses one legal step at a time, as the guard trigger demands,
-- as the table's owner (the only role whose status changes the guard lets
-- through; the session switch is what schemas before V0014 asked for).
SELECT set_config('payments.status_change', 'on', true);
CREATE TEMP TABLE sample_step (id bigint, created_at timestamptz, from_status text, to_status text,
                               reason text, at timestamptz) ON COMMIT DROP;
INSERT INTO sample_step
SELECT id, created_at, 'pending', CASE WHEN score >= 0.9 THEN 'failed' ELSE 'authorized' END,
       'fraud decision', created_at + interval '1 second' FROM sample_txn;
INSERT INTO sample_step
SELECT id, created_at, 'authorized', 'succeeded', 'captured', created_at + interval '1 hour'
  FROM sample_txn WHERE score < 0.9 AND fate < 0.9;
INSERT INTO sample_step
SELECT id, created_at, 'succeeded', CASE WHEN fate < 0.025 THEN 'refunded' ELSE 'partially_refunded' END,
       'customer request', created_at + interval '3 days'
  FROM sample_txn WHERE score < 0.9 AND fate < 0.045;

DO $$ BEGIN
    EXECUTE format('GRANT SELECT ON pg_temp.sample_step TO %s',
                   (SELECT relowner::regrole FROM pg_class WHERE oid = 'payments.transaction'::regclass));
END $$;
SELECT set_config('role', (SELECT relowner::regrole::text FROM pg_class WHERE oid = 'payments.transaction'::regclass),
                  true);
UPDATE payments.transaction t SET status = s.to_status, updated_at = s.at
  FROM sample_step s WHERE s.from_status = 'pending' AND t.id = s.id AND t.created_at = s.created_at;
UPDATE payments.transaction t SET status = s.to_status, updated_at = s.at
  FROM sample_step s WHERE s.from_status = 'authorized' AND t.id = s.id AND t.created_at = s.created_at;
UPDATE payments.transaction t SET status = s.to_status, updated_at = s.at
  FROM sample_step s WHERE s.from_status = 'succeeded' AND t.id = s.id AND t.created_at = s.created_at;
SELECT set_config('payments.status_change', 'off', true);
RESET ROLE;

INSERT INTO payments.transaction_state_change (transaction_id, transaction_created_at, from_status, to_status,
                                               reason, changed_by, changed_at)
SELECT id, created_at, from_status, to_status, reason, 'sample-data', at FROM sample_step;

INSERT INTO payments.refund (transaction_id, transaction_created_at, amount, reason, created_by, created_at)
SELECT s.id, s.created_at, CASE WHEN s.to_status = 'refunded' THEN t.amount ELSE greatest(1, t.amount / 3) END,
       'customer request', 'sample-data', s.at
  FROM sample_step s JOIN sample_txn t USING (id) WHERE s.from_status = 'succeeded';
COMMIT;

ANALYZE payments.transaction, payments.transaction_state_change, payments.refund, payments.fraud_assessment;
SELECT count(*) AS transactions, count(DISTINCT merchant_id) AS merchants,
       count(DISTINCT tableoid) AS partitions_used FROM payments.transaction;
SELECT * FROM pgops.default_partition_rows;
