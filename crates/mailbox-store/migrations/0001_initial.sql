-- Epistole store schema, version 1. Forward-only: later changes are new files.

CREATE TABLE domains (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,          -- lower-case, no trailing dot
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             BIGSERIAL PRIMARY KEY,
    domain_id      BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    local_part     TEXT NOT NULL,              -- lower-case
    password_hash  TEXT NOT NULL,              -- argon2id PHC string
    quota_bytes    BIGINT NOT NULL DEFAULT 0,  -- 0 = unlimited
    used_bytes     BIGINT NOT NULL DEFAULT 0,
    disabled       BOOLEAN NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (domain_id, local_part)
);

CREATE TABLE aliases (
    id          BIGSERIAL PRIMARY KEY,
    domain_id   BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    local_part  TEXT NOT NULL,                 -- '' = catch-all of the domain
    target      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (domain_id, local_part, target)
);

-- UIDVALIDITY values: strictly increasing across the installation, so a
-- mailbox deleted and created again never reuses one (RFC 9051 §2.3.1.1).
CREATE SEQUENCE uidvalidity_seq MINVALUE 1 MAXVALUE 4294967295;
SELECT setval('uidvalidity_seq', GREATEST(1, extract(epoch FROM now())::bigint % 4000000000));

CREATE TABLE mailboxes (
    id             BIGSERIAL PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    special_use    TEXT NOT NULL DEFAULT '',
    uidvalidity    BIGINT NOT NULL DEFAULT nextval('uidvalidity_seq'),
    uidnext        BIGINT NOT NULL DEFAULT 1,
    highestmodseq  BIGINT NOT NULL DEFAULT 1,
    recent_floor   BIGINT NOT NULL DEFAULT 1,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);

CREATE TABLE subscriptions (
    user_id  BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    PRIMARY KEY (user_id, name)
);

-- Raw messages, content-addressed by SHA-256 and stored once. EXTERNAL
-- storage (uncompressed TOAST) lets substring() read a byte range without
-- detoasting the whole value: partial FETCH and streaming stay cheap.
CREATE TABLE blobs (
    hash  BYTEA PRIMARY KEY,
    size  BIGINT NOT NULL,
    data  BYTEA NOT NULL
);
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE messages (
    mailbox_id     BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid            BIGINT NOT NULL,
    blob_hash      BYTEA NOT NULL REFERENCES blobs(hash),
    size           BIGINT NOT NULL,
    internal_date  TIMESTAMPTZ NOT NULL,
    sent_date      TIMESTAMPTZ,                -- parsed Date: header, for SENT* search
    flags          INTEGER NOT NULL DEFAULT 0, -- bit set of system flags
    keywords       TEXT[] NOT NULL DEFAULT '{}',
    modseq         BIGINT NOT NULL,
    structure      BYTEA NOT NULL,             -- prost-encoded mailstore.v1.MessageStructure
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
CREATE INDEX messages_blob ON messages (blob_hash);

-- Expunged UIDs with the MODSEQ of their removal (CONDSTORE/QRESYNC).
CREATE TABLE expunged (
    mailbox_id  BIGINT NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid         BIGINT NOT NULL,
    modseq      BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);

-- The mail queues. A leased job has next_attempt_at = lease expiry, so a
-- dead worker's job becomes ready again by the same condition as a retry.
CREATE TABLE queue_jobs (
    id                  BIGSERIAL PRIMARY KEY,
    kind                SMALLINT NOT NULL,          -- 1 inbound, 2 outbound
    state               SMALLINT NOT NULL DEFAULT 1,-- 1 ready, 2 done, 3 quarantined
    idempotency_key     TEXT,
    blob_hash           BYTEA NOT NULL REFERENCES blobs(hash),
    size                BIGINT NOT NULL,
    structure           BYTEA NOT NULL,
    mail_from           TEXT NOT NULL,
    envid               TEXT NOT NULL DEFAULT '',
    ret                 TEXT NOT NULL DEFAULT '',
    body_type           TEXT NOT NULL DEFAULT '',
    smtputf8            BOOLEAN NOT NULL DEFAULT false,
    client_ip           TEXT NOT NULL DEFAULT '',
    helo                TEXT NOT NULL DEFAULT '',
    authenticated_user  TEXT NOT NULL DEFAULT '',
    session_id          TEXT NOT NULL DEFAULT '',
    parent_job_id       BIGINT,
    destination         TEXT NOT NULL DEFAULT '',
    attempts            INTEGER NOT NULL DEFAULT 0, -- leases in total
    open_leases         INTEGER NOT NULL DEFAULT 0, -- leases since the last FinishJob
    next_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner         TEXT,
    lease_expires_at    TIMESTAMPTZ,
    last_error          TEXT NOT NULL DEFAULT '',
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX queue_jobs_idempotency ON queue_jobs (kind, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX queue_jobs_ready ON queue_jobs (kind, next_attempt_at) WHERE state = 1;
CREATE INDEX queue_jobs_blob ON queue_jobs (blob_hash);

CREATE TABLE queue_recipients (
    job_id                BIGINT NOT NULL REFERENCES queue_jobs(id) ON DELETE CASCADE,
    idx                   INTEGER NOT NULL,
    address               TEXT NOT NULL,
    orcpt                 TEXT NOT NULL DEFAULT '',
    notify                INTEGER NOT NULL DEFAULT 0,
    state                 SMALLINT NOT NULL DEFAULT 1,
    detail                TEXT NOT NULL DEFAULT '',
    attempts              INTEGER NOT NULL DEFAULT 0,
    delivered_mailbox_id  BIGINT,
    delivered_uid         BIGINT,
    delivered_uidvalidity BIGINT,
    delivered_modseq      BIGINT,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, idx)
);

-- Per-message event log (tracing a message across services). No foreign key:
-- the history outlives the job.
CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    job_id      BIGINT NOT NULL,
    kind        SMALLINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    source      TEXT NOT NULL DEFAULT '',
    recipient   TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '',
    attributes  JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX events_job ON events (job_id, id);

-- Failed logins per client IP, shared by every replica of every protocol.
CREATE TABLE auth_failures (
    ip  TEXT NOT NULL,
    at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX auth_failures_ip ON auth_failures (ip, at);

-- Named expiring locks (POP3 maildrop lock).
CREATE TABLE locks (
    name        TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
