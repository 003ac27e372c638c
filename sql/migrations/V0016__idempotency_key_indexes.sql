-- pgops: no-transaction
-- Indexes for the idempotency keys, built without blocking the payments that
-- write them (CREATE INDEX CONCURRENTLY cannot run in a transaction; every
-- statement here can run again after a failure):
--   * created_at, for the retention job (pgops.expire_idempotency_keys);
--   * the foreign key to the transaction, so that checking or detaching a
--     transaction partition does not scan every key.
-- Then the foreign key added NOT VALID in V0015 is validated: VALIDATE takes
-- a SHARE UPDATE EXCLUSIVE lock, which lets writes through.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idempotency_key_created_at ON payments.idempotency_key (created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idempotency_key_transaction
    ON payments.idempotency_key (transaction_id, transaction_created_at);
ALTER TABLE payments.idempotency_key VALIDATE CONSTRAINT idempotency_key_transaction_fkey;
