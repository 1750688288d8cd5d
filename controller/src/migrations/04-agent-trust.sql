-- Agent trust: tokens are minted only while a boot is expected, the first
-- agent to say hello claims the boot (token and address), the job goes to
-- that agent once, and the deployment remembers when it last moved.
ALTER TABLE servers ADD COLUMN boot_expected_until INTEGER;
ALTER TABLE servers ADD COLUMN boot_tokens_minted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN claim_token TEXT;
ALTER TABLE servers ADD COLUMN claim_addr TEXT;
ALTER TABLE deployments ADD COLUMN job_token TEXT;
ALTER TABLE deployments ADD COLUMN moved_at INTEGER;
-- Revoked tokens are deleted from now on; the live ones are looked up by
-- server when they are retired.
DELETE FROM agent_tokens WHERE revoked = 1;
CREATE INDEX agent_tokens_server ON agent_tokens(server);
-- An agent working when the controller is upgraded keeps its boot: the
-- token it used last claims it (its address is bound by its next call),
-- and a job it already took stays its own.
UPDATE servers SET claim_token = (SELECT hash FROM agent_tokens t WHERE t.server = servers.name
    AND t.last_used IS NOT NULL ORDER BY t.last_used DESC LIMIT 1);
UPDATE deployments SET job_token = (SELECT claim_token FROM servers WHERE name = deployments.server),
    moved_at = coalesce(last_report, updated_at)
    WHERE status = 'doing' AND stage != 'waiting-for-agent';
