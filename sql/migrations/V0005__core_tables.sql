-- Merchants, customers, payment methods, IP geolocation, idempotency keys.
-- Every foreign key is ON DELETE RESTRICT: financial records and their audit
-- trail are never deleted as a side effect (see docs/schema.md).
CREATE TABLE payments.merchant (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    country_code     char(2)     NOT NULL REFERENCES payments.country ON DELETE RESTRICT,
    default_currency char(3)     NOT NULL REFERENCES payments.currency ON DELETE RESTRICT,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments.customer (
    id                    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username              text        NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9._-]{3,64}$'),
    -- bcrypt from pgcrypto crypt(password, gen_salt('bf', cost)), cost >= 10.
    password_hash         text        NOT NULL
        CHECK (password_hash ~ '^\$2[abxy]\$[0-9]{2}\$' AND substr(password_hash, 5, 2)::int >= 10),
    email                 text        NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    -- PII: pgp_sym_encrypt ciphertext and the version of the key that made it.
    full_name_enc         bytea       NOT NULL,
    full_name_key_version smallint    NOT NULL CHECK (full_name_key_version > 0),
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX customer_email_key ON payments.customer (lower(email));

CREATE TABLE payments.customer_payment_method (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id      bigint      NOT NULL REFERENCES payments.customer ON DELETE RESTRICT,
    method_type      text        NOT NULL REFERENCES payments.payment_method_type ON DELETE RESTRICT,
    -- Token from the vault/PSP. Never a card number: a 13-19 digit token is refused.
    token            text        NOT NULL UNIQUE CHECK (token !~ '^[0-9 -]{13,23}$' AND length(token) >= 16),
    display_hint     text        CHECK (display_hint ~ '^[A-Za-z ]{0,20}[0-9]{4}$'),
    expires_on       date,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON payments.customer_payment_method (customer_id);

CREATE TABLE payments.geo_location (
    id           bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    country_code char(2)      NOT NULL REFERENCES payments.country ON DELETE RESTRICT,
    region       text,
    city         text,
    latitude     numeric(8,5) CHECK (latitude BETWEEN -90 AND 90),
    longitude    numeric(8,5) CHECK (longitude BETWEEN -180 AND 180),
    UNIQUE NULLS NOT DISTINCT (country_code, region, city)
);

-- Network -> location. Lookups are "which network contains this address",
-- served by the GiST index (inet_ops); the most specific network wins.
CREATE TABLE payments.ip_network (
    network     cidr   PRIMARY KEY,
    location_id bigint NOT NULL REFERENCES payments.geo_location ON DELETE RESTRICT
);
CREATE INDEX ip_network_gist ON payments.ip_network USING gist (network inet_ops);

-- Idempotency keys are unique per merchant across all time, so they live in a
-- plain table: a unique key on a partitioned table must contain the partition
-- key, which would make the key unique per month only.
CREATE TABLE payments.idempotency_key (
    merchant_id            bigint      NOT NULL REFERENCES payments.merchant ON DELETE RESTRICT,
    idempotency_key        text        NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_fingerprint    bytea       NOT NULL,
    transaction_id         bigint,
    transaction_created_at timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, idempotency_key)
);
