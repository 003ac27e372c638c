-- Transactions and the tables that grow with them, range-partitioned by the
-- transaction's creation time. The child tables are partitioned by their
-- transaction's created_at (not their own time), so that a transaction and all
-- its rows live in the same month: partition-wise joins, uniqueness per
-- transaction that includes the partition key, and one detach per month.
CREATE SEQUENCE payments.transaction_id_seq AS bigint;

-- A payment method belongs to one customer; transactions carry both (the
-- customer + time access path) and a composite key keeps them consistent.
ALTER TABLE payments.customer_payment_method ADD UNIQUE (id, customer_id);

CREATE TABLE payments.transaction (
    id                bigint      NOT NULL DEFAULT nextval('payments.transaction_id_seq'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    merchant_id       bigint      NOT NULL REFERENCES payments.merchant ON DELETE RESTRICT,
    customer_id       bigint      NOT NULL REFERENCES payments.customer ON DELETE RESTRICT,
    payment_method_id bigint      NOT NULL,
    amount            bigint      NOT NULL CHECK (amount > 0),
    currency          char(3)     NOT NULL REFERENCES payments.currency ON DELETE RESTRICT,
    status            text        NOT NULL REFERENCES payments.transaction_status ON DELETE RESTRICT,
    client_ip         inet,
    -- Location resolved from client_ip when the payment was made: a historical
    -- fact, kept even when the network -> location mapping changes later.
    location_id       bigint      REFERENCES payments.geo_location ON DELETE RESTRICT,
    device_type       text        NOT NULL REFERENCES payments.device_type ON DELETE RESTRICT,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at),
    FOREIGN KEY (payment_method_id, customer_id)
        REFERENCES payments.customer_payment_method (id, customer_id) ON DELETE RESTRICT
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE payments.transaction_id_seq OWNED BY payments.transaction.id;
CREATE INDEX transaction_merchant_time ON payments.transaction (merchant_id, created_at DESC);
CREATE INDEX transaction_customer_time ON payments.transaction (customer_id, created_at DESC);
CREATE INDEX transaction_payment_method ON payments.transaction (payment_method_id);

ALTER TABLE payments.idempotency_key
    ADD FOREIGN KEY (transaction_id, transaction_created_at)
        REFERENCES payments.transaction (id, created_at) ON DELETE RESTRICT;

CREATE TABLE payments.transaction_state_change (
    id                     bigint      GENERATED ALWAYS AS IDENTITY,
    transaction_id         bigint      NOT NULL,
    transaction_created_at timestamptz NOT NULL,
    from_status            text        REFERENCES payments.transaction_status ON DELETE RESTRICT,
    to_status              text        NOT NULL REFERENCES payments.transaction_status ON DELETE RESTRICT,
    reason                 text        NOT NULL CHECK (length(reason) > 0),
    changed_by             text        NOT NULL CHECK (length(changed_by) > 0),
    changed_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (id, transaction_created_at),
    FOREIGN KEY (transaction_id, transaction_created_at)
        REFERENCES payments.transaction (id, created_at) ON DELETE RESTRICT
) PARTITION BY RANGE (transaction_created_at);
CREATE INDEX ON payments.transaction_state_change (transaction_id, transaction_created_at);

CREATE TABLE payments.refund (
    id                     bigint      GENERATED ALWAYS AS IDENTITY,
    transaction_id         bigint      NOT NULL,
    transaction_created_at timestamptz NOT NULL,
    amount                 bigint      NOT NULL CHECK (amount > 0),
    reason                 text        NOT NULL CHECK (length(reason) > 0),
    created_by             text        NOT NULL CHECK (length(created_by) > 0),
    created_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (id, transaction_created_at),
    FOREIGN KEY (transaction_id, transaction_created_at)
        REFERENCES payments.transaction (id, created_at) ON DELETE RESTRICT
) PARTITION BY RANGE (transaction_created_at);
CREATE INDEX ON payments.refund (transaction_id, transaction_created_at);

CREATE TABLE payments.fraud_assessment (
    id                     bigint       GENERATED ALWAYS AS IDENTITY,
    transaction_id         bigint       NOT NULL,
    transaction_created_at timestamptz  NOT NULL,
    model_version          text         NOT NULL CHECK (length(model_version) BETWEEN 1 AND 64),
    anomaly_score          numeric(6,5) NOT NULL CHECK (anomaly_score BETWEEN 0 AND 1),
    decision               text         NOT NULL REFERENCES payments.fraud_decision ON DELETE RESTRICT,
    assessed_at            timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (id, transaction_created_at),
    UNIQUE (transaction_id, transaction_created_at, model_version),
    FOREIGN KEY (transaction_id, transaction_created_at)
        REFERENCES payments.transaction (id, created_at) ON DELETE RESTRICT
) PARTITION BY RANGE (transaction_created_at);

CREATE TABLE payments.fraud_assessment_indicator (
    assessment_id          bigint       NOT NULL,
    transaction_created_at timestamptz  NOT NULL,
    indicator              text         NOT NULL REFERENCES payments.fraud_indicator ON DELETE RESTRICT,
    PRIMARY KEY (assessment_id, transaction_created_at, indicator),
    FOREIGN KEY (assessment_id, transaction_created_at)
        REFERENCES payments.fraud_assessment (id, transaction_created_at) ON DELETE RESTRICT
) PARTITION BY RANGE (transaction_created_at);
