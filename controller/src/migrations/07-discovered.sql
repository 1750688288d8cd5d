-- Enlistment (`byoi serve --enlist`): machines whose MAC no server has,
-- netbooted into the agent in discover mode, until the operator adopts or
-- forgets them. `token` is the hash of the one live discovery token (until
-- its hello); `inventory` what that hello reported.
CREATE TABLE discovered (
    mac TEXT PRIMARY KEY,
    token TEXT UNIQUE,
    token_expires INTEGER,
    inventory TEXT,
    agent_version TEXT,
    address TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
