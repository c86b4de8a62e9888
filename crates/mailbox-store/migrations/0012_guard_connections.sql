-- Open connections per client address, as each replica of a protocol
-- service last reported them (Guard.ShareConnections): the per-IP
-- connection limit then counts every replica's connections, not only its
-- own. A replica replaces all its rows at each report; rows of a replica
-- that stopped reporting (crashed) expire.
CREATE TABLE guard_connections (
    scope      text        NOT NULL,
    replica    text        NOT NULL,
    key        text        NOT NULL,
    count      integer     NOT NULL CHECK (count > 0),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, replica, key)
);
CREATE INDEX guard_connections_scope_key ON guard_connections (scope, key);
CREATE INDEX guard_connections_expires ON guard_connections (expires_at);
