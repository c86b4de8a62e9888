-- Shared limits and marks (Guard service) and the failed-login throttle.
-- Forward-only. `auth_failures` (0001) is no longer written; the janitor
-- empties it and a later migration may drop it once no replica of the
-- previous version runs.

-- Fixed-window counters: one row per (scope, key, window length, window
-- start). window_start is seconds since the epoch, a multiple of
-- window_secs, so every replica agrees on the window (the database's clock
-- decides, not the replicas').
CREATE TABLE guard_counters (
    scope         TEXT NOT NULL,
    key           TEXT NOT NULL,
    window_secs   INTEGER NOT NULL,
    window_start  BIGINT NOT NULL,
    used          BIGINT NOT NULL,
    expires_at    TIMESTAMPTZ NOT NULL,       -- end of the window, for the janitor
    PRIMARY KEY (scope, key, window_secs, window_start)
);
CREATE INDEX guard_counters_expiry ON guard_counters (expires_at);

-- Marks: (scope, key) remembered until expires_at.
CREATE TABLE guard_marks (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX guard_marks_expiry ON guard_marks (expires_at);

-- Failed-login throttle, one row per client (kind 'ip': an IPv4 address or
-- an IPv6 prefix) and per account (kind 'account': local@domain).
CREATE TABLE auth_throttle (
    kind          TEXT NOT NULL,
    key           TEXT NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,             -- in the current window
    window_start  TIMESTAMPTZ NOT NULL DEFAULT now(),
    strikes       INTEGER NOT NULL DEFAULT 0,             -- bans in this episode
    banned_until  TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    last_failure  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key)
);
CREATE INDEX auth_throttle_last ON auth_throttle (GREATEST(last_failure, banned_until));

-- Records one failed login for (kind, key) and returns the end of the ban
-- it is under afterwards ('epoch' when none). One call is one atomic
-- check-and-record: the row is locked, so concurrent failures are counted
-- exactly and only one of them starts a ban. The rule (documented in
-- accounts/authenticate.rs and the README):
--   * no failure and no ban for p_reset seconds: the row starts afresh;
--   * failures are counted in a window of p_window seconds from the first;
--   * the p_limit-th failure in a window starts a ban of
--     p_ban * 2^(strikes) seconds, at most p_max, and empties the window;
--   * failures while banned are not counted (the caller refuses those
--     attempts before checking the password).
CREATE FUNCTION auth_fail(p_kind TEXT, p_key TEXT, p_limit INTEGER, p_window INTEGER,
                          p_ban INTEGER, p_max INTEGER, p_reset INTEGER)
RETURNS TIMESTAMPTZ LANGUAGE plpgsql AS $$
DECLARE
    r auth_throttle%ROWTYPE;
    n TIMESTAMPTZ := now();
BEGIN
    IF p_key IS NULL OR p_key = '' THEN
        RETURN 'epoch';
    END IF;
    INSERT INTO auth_throttle (kind, key) VALUES (p_kind, p_key) ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM auth_throttle WHERE kind = p_kind AND key = p_key FOR UPDATE;
    IF r.banned_until > n THEN
        RETURN r.banned_until;
    END IF;
    IF GREATEST(r.last_failure, r.banned_until) < n - make_interval(secs => p_reset) THEN
        r.failures := 0;
        r.strikes := 0;
        r.window_start := n;
    END IF;
    IF r.failures = 0 OR r.window_start <= n - make_interval(secs => p_window) THEN
        r.failures := 0;
        r.window_start := n;
    END IF;
    r.failures := r.failures + 1;
    r.last_failure := n;
    IF r.failures >= p_limit THEN
        r.banned_until := n + make_interval(secs => LEAST(p_max::float8,
                              p_ban::float8 * power(2::float8, LEAST(r.strikes, 30))));
        r.strikes := r.strikes + 1;
        r.failures := 0;
    END IF;
    UPDATE auth_throttle
       SET failures = r.failures, window_start = r.window_start, strikes = r.strikes,
           banned_until = r.banned_until, last_failure = r.last_failure
     WHERE kind = p_kind AND key = p_key;
    RETURN r.banned_until;
END
$$;
