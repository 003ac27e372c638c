-- Reference (lookup) tables. Codes are natural keys: they are stable,
-- meaningful in logs and reports, and keep joins out of the hot path.
CREATE TABLE payments.currency (
    code         char(3)  PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    numeric_code smallint NOT NULL UNIQUE CHECK (numeric_code BETWEEN 1 AND 999),
    name         text     NOT NULL,
    -- Exponent of the minor unit (2: cents); NULL for codes without one
    -- (funds, metals), which cannot carry a payment amount.
    minor_unit   smallint CHECK (minor_unit BETWEEN 0 AND 4)
);
COMMENT ON TABLE payments.currency IS 'ISO 4217 currencies; amounts are stored in minor units of these';

CREATE TABLE payments.country (
    code         char(2)  PRIMARY KEY CHECK (code ~ '^[A-Z]{2}$'),
    alpha3       char(3)  NOT NULL UNIQUE,
    numeric_code smallint NOT NULL UNIQUE,
    name         text     NOT NULL
);
COMMENT ON TABLE payments.country IS 'ISO 3166-1 countries';

CREATE TABLE payments.transaction_status (
    code        text    PRIMARY KEY CHECK (code ~ '^[a-z_]+$'),
    description text    NOT NULL,
    is_initial  boolean NOT NULL DEFAULT false,
    is_final    boolean NOT NULL DEFAULT false
);

CREATE TABLE payments.transaction_status_transition (
    from_status text NOT NULL REFERENCES payments.transaction_status ON DELETE RESTRICT,
    to_status   text NOT NULL REFERENCES payments.transaction_status ON DELETE RESTRICT,
    PRIMARY KEY (from_status, to_status)
);
COMMENT ON TABLE payments.transaction_status_transition IS 'The only status changes the database accepts';

CREATE TABLE payments.device_type (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z_]+$'),
    description text NOT NULL
);

CREATE TABLE payments.payment_method_type (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z_]+$'),
    description text NOT NULL
);

CREATE TABLE payments.fraud_decision (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z_]+$'),
    description text NOT NULL
);

CREATE TABLE payments.fraud_indicator (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z_]+$'),
    description text NOT NULL
);
