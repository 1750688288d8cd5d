-- Typed specs: `request` holds {spec, description, diskGroupId} (the hook
-- rewrites 0.1.0's rows); the checksum lives in the spec.
ALTER TABLE deployments DROP COLUMN checksum;
-- At most one running deployment per server, whatever the code does.
-- 0.1.0 could leave several `doing` rows behind a race: keep the newest.
UPDATE deployments SET status = 'error', error_code = 'internal',
    message = 'superseded by a newer deployment (found at upgrade)'
    WHERE status = 'doing' AND id NOT IN (SELECT max(id) FROM deployments WHERE status = 'doing' GROUP BY server);
CREATE UNIQUE INDEX deployments_one_running ON deployments(server) WHERE status = 'doing';
-- WARN and ERROR lines the agent forwarded with its reports.
CREATE TABLE agent_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    level TEXT NOT NULL,
    target TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX agent_logs_deployment ON agent_logs(deployment_id, id);
