-- Accounts: a user with a password hash owns its nickname (a guest's row
-- has none). Lasting HTTP sessions of registered users, stored by the
-- SHA-256 of their token, never the token itself.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN registered_at INTEGER;

CREATE TABLE auth_sessions (
    token_hash  TEXT    PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users (id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);
