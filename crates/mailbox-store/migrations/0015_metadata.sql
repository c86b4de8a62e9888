-- IMAP METADATA (RFC 5464, issue #16). Forward-only.

-- One row per entry: a server entry (mailbox_id NULL, RFC 5464 §3.1) or a
-- mailbox entry. Entry names are stored in lower case ("/private/comment"):
-- the IMAP service compares them case-insensitively. /shared entries are
-- per user like /private ones (we have no mailbox sharing): both are only
-- ever read and written by their owner. A mailbox's entries go with it
-- (ON DELETE CASCADE) and follow it on RENAME (it keeps its id); a user's
-- go with the user.
CREATE TABLE metadata (
    user_id     BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    mailbox_id  BIGINT REFERENCES mailboxes(id) ON DELETE CASCADE,
    entry       TEXT NOT NULL,
    value       BYTEA NOT NULL
);

-- One value per (user, mailbox or server, entry); COALESCE makes the server
-- entries (NULL mailbox) unique too.
CREATE UNIQUE INDEX metadata_key ON metadata (user_id, (COALESCE(mailbox_id, 0)), entry);
CREATE INDEX metadata_mailbox ON metadata (mailbox_id) WHERE mailbox_id IS NOT NULL;
