-- Quotas (RFC 9208, issue #16): STORAGE (bytes) and MESSAGE (count) limits
-- per user, with a default per domain. A user's limit NULL = the domain's
-- default; a domain's NULL = unlimited. Usage is kept in users.used_bytes /
-- users.used_messages, changed in the same transaction as every append,
-- copy, expunge and mailbox deletion (no scan at append time).
-- Forward-only. Before this migration quota_bytes = 0 meant "unlimited":
-- those rows become NULL (the domain default, unlimited unless set).
ALTER TABLE users ALTER COLUMN quota_bytes DROP NOT NULL;
ALTER TABLE users ALTER COLUMN quota_bytes DROP DEFAULT;
UPDATE users SET quota_bytes = NULL WHERE quota_bytes <= 0;
ALTER TABLE users ADD CONSTRAINT users_quota_bytes_check CHECK (quota_bytes >= 0);
ALTER TABLE users ADD COLUMN quota_messages BIGINT CHECK (quota_messages >= 0);
ALTER TABLE users ADD COLUMN used_messages BIGINT NOT NULL DEFAULT 0;
ALTER TABLE domains ADD COLUMN quota_bytes BIGINT CHECK (quota_bytes >= 0);
ALTER TABLE domains ADD COLUMN quota_messages BIGINT CHECK (quota_messages >= 0);
-- Usage recounted once, from the messages themselves.
UPDATE users u SET used_bytes = COALESCE(c.bytes, 0), used_messages = COALESCE(c.n, 0)
FROM (SELECT b.user_id, sum(m.size)::bigint AS bytes, count(*) AS n
      FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id GROUP BY b.user_id) c
WHERE c.user_id = u.id;
