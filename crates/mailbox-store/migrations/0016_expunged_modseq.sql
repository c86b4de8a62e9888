-- QRESYNC (RFC 7162 §3.2.5, §3.2.6) asks for the UIDs of a mailbox expunged
-- after a MODSEQ: without this index every such question read the
-- mailbox's whole expunge history.
CREATE INDEX expunged_mailbox_modseq ON expunged (mailbox_id, modseq);
