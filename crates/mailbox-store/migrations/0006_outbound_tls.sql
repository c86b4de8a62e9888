-- Outbound TLS (issue #15): TLS-RPT result counts (RFC 8460) and the
-- REQUIRETLS flag of queued messages (RFC 8689). Forward-only.

-- One row per UTC day, policy domain and distinct outcome: smtp-out adds 1
-- per delivery attempt (RecordTlsResult); the daily report (RFC 8460 §4.4)
-- is built from a day's rows. `fingerprint` is md5 of the fields that tell
-- outcomes apart (policy, MX, result type, addresses, reason), so the key
-- stays short however long a policy text is.
CREATE TABLE tls_results (
    day                DATE NOT NULL,
    policy_domain      TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    policy_type        TEXT NOT NULL,              -- sts, tlsa, no-policy-found
    policy_strings     TEXT[] NOT NULL DEFAULT '{}',
    mx_host            TEXT NOT NULL DEFAULT '',
    result_type        TEXT NOT NULL DEFAULT '',   -- '' = success, else RFC 8460 §4.3
    sending_ip         TEXT NOT NULL DEFAULT '',
    receiving_ip       TEXT NOT NULL DEFAULT '',
    receiving_mx_helo  TEXT NOT NULL DEFAULT '',
    failure_reason     TEXT NOT NULL DEFAULT '',
    count              BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, policy_domain, fingerprint)
);

-- RFC 8689 §4: the message must travel only over verified TLS to servers
-- that offer REQUIRETLS. Set at submission; honoured by smtp-out.
ALTER TABLE queue_jobs ADD COLUMN requiretls BOOLEAN NOT NULL DEFAULT false;

-- MTA-STS policies (RFC 8461 §5.1) shared by every smtp-out replica and
-- kept across restarts: the policy text as fetched, its id from the TXT
-- record, and the end of its max_age. Expired rows are removed on write.
CREATE TABLE mta_sts_policies (
    domain       TEXT PRIMARY KEY,
    policy_id    TEXT NOT NULL,
    policy_text  TEXT NOT NULL,
    fetched_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX mta_sts_policies_expiry ON mta_sts_policies (expires_at);
