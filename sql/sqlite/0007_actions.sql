-- Actions (`/me waves`): a message flagged as an action is shown as
-- "[room] * nick waves" and carries "action": true in events and history.
ALTER TABLE messages ADD COLUMN action INTEGER NOT NULL DEFAULT 0;
