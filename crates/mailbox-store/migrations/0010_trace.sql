-- mailctl trace (issue 19): find a message's jobs by its Message-ID, and
-- follow the reports (DSNs) made about a job as relayed copies are
-- followed by parent_job_id. Forward-only; older replicas ignore the
-- columns (their jobs have no Message-ID to find them by).
ALTER TABLE queue_jobs ADD COLUMN message_id TEXT NOT NULL DEFAULT '';
ALTER TABLE queue_jobs ADD COLUMN about_job_id BIGINT;
CREATE INDEX queue_jobs_message_id ON queue_jobs (message_id) WHERE message_id <> '';
CREATE INDEX queue_jobs_about ON queue_jobs (about_job_id) WHERE about_job_id IS NOT NULL;
CREATE INDEX queue_jobs_parent ON queue_jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;
-- OpenTelemetry: the W3C traceparent of the Enqueue call, so the workers
-- that lease the job continue the message's trace.
ALTER TABLE queue_jobs ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
