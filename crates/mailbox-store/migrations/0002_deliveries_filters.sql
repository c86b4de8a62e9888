-- Local deliveries of queued messages, one row per (job, user): a job's
-- message reaches a user once, however many of its recipients (aliases,
-- plus-addresses) resolve to that user, and however often it is re-leased.
CREATE TABLE queue_deliveries (
    job_id       BIGINT NOT NULL REFERENCES queue_jobs(id) ON DELETE CASCADE,
    user_id      BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    mailbox_id   BIGINT NOT NULL,
    uid          BIGINT NOT NULL,
    uidvalidity  BIGINT NOT NULL,
    modseq       BIGINT NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, user_id)
);

-- Simple per-user filter rules (header contains → folder), applied by
-- delivery in position order; Sieve scripts can replace them later.
CREATE TABLE filters (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    position   INTEGER NOT NULL DEFAULT 0,
    header     TEXT NOT NULL,
    contains   TEXT NOT NULL,
    folder     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX filters_user ON filters (user_id, position, id);
