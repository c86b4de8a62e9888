-- The searchable text of a queued message lives with its job, unindexed
-- (issue #17). Before, enqueue stored it in blob_text under the queued
-- blob's hash, so every message's text went through the trigram GIN
-- indexes twice: once for the queued blob, which no SEARCH ever reads, and
-- once for the delivered copy (prefix + message), which local delivery
-- derives from it. The GIN insertions were about a sixth of PostgreSQL's
-- CPU per message. Forward-only.
--
-- NULL text_headers: a job enqueued before this migration (its text is
-- still in blob_text under its blob's hash, which delivery falls back to),
-- or a child job (relay), which never delivers locally.
ALTER TABLE queue_jobs
    ADD COLUMN text_headers  TEXT,
    ADD COLUMN text_body     TEXT,
    ADD COLUMN text_complete BOOLEAN NOT NULL DEFAULT false;
