-- DMARC aggregate reports (issue #14, RFC 7489 §7.2). Forward-only.

-- One row per UTC day, policy domain and distinct outcome of the inbound
-- DMARC check: smtp-in adds 1 per message (RecordDmarcResult); smtp-out
-- builds each domain's daily XML report from a day's rows. `fingerprint`
-- is md5 of the fields that tell outcomes apart, so the key stays short.
CREATE TABLE dmarc_results (
    day             DATE NOT NULL,
    policy_domain   TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    header_from     TEXT NOT NULL,
    envelope_from   TEXT NOT NULL DEFAULT '',
    source_ip       TEXT NOT NULL,
    disposition     TEXT NOT NULL,            -- none, quarantine, reject
    dkim_aligned    TEXT NOT NULL,            -- pass, fail
    spf_aligned     TEXT NOT NULL,            -- pass, fail
    dkim_domains    TEXT[] NOT NULL DEFAULT '{}',
    dkim_selectors  TEXT[] NOT NULL DEFAULT '{}',
    dkim_results    TEXT[] NOT NULL DEFAULT '{}',
    spf_domain      TEXT NOT NULL DEFAULT '',
    spf_result      TEXT NOT NULL DEFAULT 'none',
    p               TEXT NOT NULL,
    sp              TEXT NOT NULL,
    adkim           TEXT NOT NULL DEFAULT 'r',
    aspf            TEXT NOT NULL DEFAULT 'r',
    pct             INTEGER NOT NULL DEFAULT 100,
    fo              TEXT NOT NULL DEFAULT '0',
    rua             TEXT[] NOT NULL DEFAULT '{}',
    count           BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, policy_domain, fingerprint)
);

-- Aggregate reports other receivers sent about our domains, parsed.
CREATE TABLE dmarc_reports (
    id           BIGSERIAL PRIMARY KEY,
    org_name     TEXT NOT NULL,
    email        TEXT NOT NULL DEFAULT '',
    report_id    TEXT NOT NULL,
    domain       TEXT NOT NULL,
    begin_at     BIGINT NOT NULL,
    end_at       BIGINT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (org_name, report_id, domain)
);
CREATE INDEX dmarc_reports_domain ON dmarc_reports (domain, received_at DESC);

CREATE TABLE dmarc_report_rows (
    report       BIGINT NOT NULL REFERENCES dmarc_reports (id) ON DELETE CASCADE,
    n            INTEGER NOT NULL,
    source_ip    TEXT NOT NULL,
    count        BIGINT NOT NULL,
    disposition  TEXT NOT NULL DEFAULT '',
    dkim_aligned TEXT NOT NULL DEFAULT '',
    spf_aligned  TEXT NOT NULL DEFAULT '',
    header_from  TEXT NOT NULL DEFAULT '',
    dkim         TEXT[] NOT NULL DEFAULT '{}',
    spf          TEXT[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (report, n)
);
