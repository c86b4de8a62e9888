-- The Date: of queued messages (copied to the mailbox at delivery), and the
-- size of each message with every line ending as CRLF (what POP3
-- reports and sends before dot-stuffing), computed once when stored.
-- 0 = not computed (rows from before this migration): readers count.
ALTER TABLE messages ADD COLUMN crlf_size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE queue_jobs ADD COLUMN crlf_size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE queue_jobs ADD COLUMN sent_date TIMESTAMPTZ;
