-- OVHcloud-style API credentials: applications (key, secret) and their
-- consumer keys with access rules. Consumer keys and validation tokens are
-- kept as SHA-256 hashes; an application's secret as it is (checking a
-- signature needs it). AUTOINCREMENT: a revoked id is never reused.
CREATE TABLE api_applications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE api_credentials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    application INTEGER NOT NULL REFERENCES api_applications(id) ON DELETE CASCADE,
    consumer_hash TEXT NOT NULL UNIQUE,
    validation_hash TEXT UNIQUE,
    rules TEXT NOT NULL,
    allowed_ips TEXT,
    redirection TEXT,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    last_use INTEGER
);
CREATE INDEX api_credentials_application ON api_credentials(application);
