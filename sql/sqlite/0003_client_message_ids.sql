-- Idempotent sends: the client's own id for a message (clientMsgId, a
-- UUID), so that a retry returns the first message instead of posting it
-- again, also after a restart. Checked and recorded in the same
-- transaction as the message.
CREATE TABLE client_messages (
    client_msg_id TEXT    PRIMARY KEY,
    message_id    INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE
);
