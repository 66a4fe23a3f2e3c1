-- Actions (`/me waves`): a message flagged as an action is shown as
-- "[room] * nick waves" and carries "action": true in events and history.
-- A constant default: no table rewrite on PostgreSQL 11+.
ALTER TABLE messages ADD COLUMN action BOOLEAN NOT NULL DEFAULT FALSE;
