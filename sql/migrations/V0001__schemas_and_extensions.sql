-- Schemas and extensions of the payments OLTP database.
CREATE SCHEMA payments;
COMMENT ON SCHEMA payments IS 'Payments OLTP: merchants, customers, transactions and their audit trail';
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;
CREATE SCHEMA IF NOT EXISTS partman;
CREATE EXTENSION IF NOT EXISTS pg_partman WITH SCHEMA partman;
