-- Direct messages between registered users, kept like room messages.
-- `read_at` is set once the recipient has seen the message (delivered live,
-- shown at login, or read in its conversation); until then it is unread.
CREATE TABLE direct_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_id     INTEGER NOT NULL REFERENCES users (id),
    recipient_id  INTEGER NOT NULL REFERENCES users (id),
    -- nicknames as sent (an account's nickname does not change)
    sender        TEXT    NOT NULL,
    recipient     TEXT    NOT NULL,
    content       TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    read_at       INTEGER
);
CREATE INDEX direct_messages_unread ON direct_messages (recipient_id, id) WHERE read_at IS NULL;
CREATE INDEX direct_messages_pair ON direct_messages (sender_id, recipient_id, id);
CREATE INDEX direct_messages_to ON direct_messages (recipient_id, sender_id, id);
