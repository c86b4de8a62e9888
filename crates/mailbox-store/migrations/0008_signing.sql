-- Outbound DKIM only for mail we vouch for (issue 14): the one who enqueues
-- says whether the job's message may carry our signature (an authenticated
-- submission that passed the sender check, our own DSNs and reports).
-- Default false: relayed or forwarded inbound mail leaves unsigned.
-- Forward-only; older replicas ignore the column.
ALTER TABLE queue_jobs ADD COLUMN sign BOOLEAN NOT NULL DEFAULT false;
-- Loops across installations: the alias a forwarded copy was delivered to
-- here; smtp-out adds it as Delivered-To: (the message blob is shared).
ALTER TABLE queue_jobs ADD COLUMN delivered_to TEXT NOT NULL DEFAULT '';
