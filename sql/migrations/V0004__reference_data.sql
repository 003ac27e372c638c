-- Statuses and the transitions between them, device, payment method and
-- fraud reference data.
INSERT INTO payments.transaction_status (code, description, is_initial, is_final) VALUES
    ('pending',            'Received, not yet authorized',                 true,  false),
    ('authorized',         'Authorized by the issuer, funds held',         false, false),
    ('succeeded',          'Captured: the payment was successful',         false, false),
    ('failed',             'Declined or failed',                           false, true),
    ('canceled',           'Authorization released before capture',        false, true),
    ('partially_refunded', 'Part of the captured amount was refunded',     false, false),
    ('refunded',           'The whole captured amount was refunded',       false, true);

INSERT INTO payments.transaction_status_transition (from_status, to_status) VALUES
    ('pending',            'authorized'),
    ('pending',            'failed'),
    ('authorized',         'succeeded'),
    ('authorized',         'canceled'),
    ('authorized',         'failed'),
    ('succeeded',          'partially_refunded'),
    ('succeeded',          'refunded'),
    ('partially_refunded', 'partially_refunded'),
    ('partially_refunded', 'refunded');

INSERT INTO payments.device_type (code, description) VALUES
    ('mobile',  'Phone browser or app'),
    ('tablet',  'Tablet browser or app'),
    ('desktop', 'Desktop or laptop browser'),
    ('pos',     'Point-of-sale terminal'),
    ('server',  'Server-to-server (recurring, API)'),
    ('unknown', 'Not reported');

INSERT INTO payments.payment_method_type (code, description) VALUES
    ('card',          'Credit or debit card (tokenised)'),
    ('bank_transfer', 'Bank transfer / direct debit'),
    ('wallet',        'Digital wallet'),
    ('bnpl',          'Buy now, pay later');

INSERT INTO payments.fraud_decision (code, description) VALUES
    ('approve', 'Let the payment through'),
    ('review',  'Let it through, flag for manual review'),
    ('decline', 'Refuse the payment');

INSERT INTO payments.fraud_indicator (code, description) VALUES
    ('velocity',          'Many attempts from the same customer or card in a short time'),
    ('geo_mismatch',      'IP location far from the billing country'),
    ('new_device',        'First payment from this device'),
    ('amount_outlier',    'Amount far above the customer''s usual'),
    ('anonymizing_proxy', 'IP address of a known proxy, VPN or Tor exit'),
    ('card_testing',      'Pattern of small authorizations typical of card testing');
