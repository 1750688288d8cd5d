-- Power cycles as leased jobs: the controller that asks for one holds its
-- lease and runs it; if it dies first, the lease expires and any
-- controller on the database takes the job over, so the cycle happens once.
CREATE TABLE power_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    requested_at INTEGER NOT NULL,
    holder TEXT NOT NULL,
    lease_until INTEGER NOT NULL,
    done_at INTEGER,
    outcome TEXT
);
CREATE INDEX power_jobs_pending ON power_jobs(lease_until) WHERE done_at IS NULL;
-- Work one controller does for all, such as failing the deployments whose
-- agents fell silent: whoever holds its lease, renewed as it works.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL
);
