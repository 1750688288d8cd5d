-- Each server's SSH host key for rescue mode, made once (Ed25519: the
-- 32-byte seed and its public key), dropped with the server.
CREATE TABLE ssh_host_keys (
    server TEXT PRIMARY KEY REFERENCES servers(name) ON DELETE CASCADE,
    seed BLOB NOT NULL,
    public BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
