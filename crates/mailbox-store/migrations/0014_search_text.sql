-- Indexed SEARCH (issue #16, RFC 9051 §6.4.4). Forward-only.
--
-- pg_trgm ships with PostgreSQL's contrib package; creating the extension
-- needs a role allowed to (a superuser, or the database owner on
-- PostgreSQL 13+, pg_trgm being a trusted extension).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- The searchable text of each blob, shared like the blob itself by every
-- message (and copy) that refers to it. Both columns are normalised as the
-- store's text module makes them: lower-cased, one "name: value" line per
-- header field. `headers` = the top-level header fields (raw and decoded
-- values); `body` = decoded text parts at every depth, the header fields of
-- attached messages, text/rfc822-headers parts and attachment file names.
--
-- headers IS NULL: a placeholder, not extracted yet (blobs stored before
-- this migration; `mailctl search backfill` fills them). complete = false:
-- a placeholder, or a text cut at the store's bound. SEARCH answers such
-- messages by reading their blob, so no message is ever missed.
CREATE TABLE blob_text (
    hash      BYTEA PRIMARY KEY REFERENCES blobs(hash) ON DELETE CASCADE,
    headers   TEXT,
    body      TEXT,
    complete  BOOLEAN NOT NULL DEFAULT false
);

INSERT INTO blob_text (hash) SELECT hash FROM blobs;

CREATE INDEX blob_text_headers_trgm ON blob_text USING gin (headers gin_trgm_ops);
CREATE INDEX blob_text_body_trgm ON blob_text USING gin (body gin_trgm_ops);
-- Small once backfilled: what SEARCH must still read from blobs.
CREATE INDEX blob_text_incomplete ON blob_text (hash) WHERE NOT complete;
