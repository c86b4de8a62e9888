-- Inbound sender authentication (issue 14): per hosted domain, what smtp-in
-- does with mail to that domain that fails DMARC (RFC 7489) of a sender
-- domain publishing p=reject. '' = smtp-in's --dmarc-reject-action.
-- Forward-only; older replicas ignore the column.
ALTER TABLE domains
    ADD COLUMN dmarc_reject_action TEXT NOT NULL DEFAULT ''
    CHECK (dmarc_reject_action IN ('', 'enforce', 'quarantine', 'report'));
