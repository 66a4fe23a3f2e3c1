-- Idempotent sends: the client's own id for a message (clientMsgId, a
-- UUID), so that a retry returns the first message instead of posting it
-- again, across restarts and instances. Checked and recorded in the same
-- transaction as the message, under a lock on the id (src/store/postgres.rs).
CREATE TABLE client_messages (
    client_msg_id TEXT   PRIMARY KEY,
    message_id    BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE
);
