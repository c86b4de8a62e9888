-- DKIM signing keys per domain (RFC 6376). smtp-out signs with the active
-- key of the From: domain; older keys stay listed so their DNS records can
-- be kept until mail signed with them has been verified.
CREATE TABLE dkim_keys (
    id           BIGSERIAL PRIMARY KEY,
    domain_id    BIGINT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    selector     TEXT NOT NULL,
    algorithm    TEXT NOT NULL,             -- 'rsa-sha256' | 'ed25519-sha256'
    private_key  TEXT NOT NULL,             -- PKCS#8 PEM
    public_key   TEXT NOT NULL,             -- base64, the p= of the TXT record
    active       BOOLEAN NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (domain_id, selector)
);
CREATE UNIQUE INDEX dkim_keys_one_active ON dkim_keys (domain_id) WHERE active;
