-- byoi 0.1.0, as it shipped: created with IF NOT EXISTS and no
-- user_version, so a 0.1.0 data directory passes through this step as is.
CREATE TABLE IF NOT EXISTS servers (
    name TEXT PRIMARY KEY,
    power TEXT NOT NULL,
    kernel_args TEXT NOT NULL,
    boot_target TEXT NOT NULL,
    inventory TEXT,
    last_seen INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS macs (
    mac TEXT PRIMARY KEY,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    message TEXT NOT NULL,
    error_code TEXT,
    checksum TEXT,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_total INTEGER,
    current INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_report INTEGER,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS deployments_server ON deployments(server, id);
CREATE TABLE IF NOT EXISTS agent_tokens (
    hash TEXT PRIMARY KEY,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    deployment_id INTEGER,
    mode TEXT NOT NULL DEFAULT 'deploy',
    created_at INTEGER NOT NULL,
    last_used INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
