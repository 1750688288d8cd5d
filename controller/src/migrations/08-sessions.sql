-- Dashboard sessions (`/ui`): the cookie's SHA-256, the CSRF token its page
-- sends back, the credential it logged in with (NULL: the API token); a
-- revoked credential's sessions go with it.
CREATE TABLE ui_sessions (
    hash TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    credential_id INTEGER REFERENCES api_credentials(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    address TEXT NOT NULL
);
