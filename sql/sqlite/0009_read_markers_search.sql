-- Read markers, mentions and full-text search.
--
-- A registered user's read marker per room: the newest message read, by id
-- and by the room's gapless `seq`, so that "unread" is one subtraction
-- (the room's last seq minus the marker's). Markers only move forward.
CREATE TABLE read_markers (
    user_id     INTEGER NOT NULL REFERENCES users (id),
    room_id     INTEGER NOT NULL REFERENCES rooms (id),
    message_id  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- `@nick` mentions of registered users, recorded in the transaction that
-- commits the message; counted after the user's marker in the room.
CREATE TABLE mentions (
    user_id     INTEGER NOT NULL REFERENCES users (id),
    room_id     INTEGER NOT NULL REFERENCES rooms (id),
    message_id  INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, room_id, message_id)
);
CREATE INDEX mentions_message ON mentions (message_id);

-- A deleted message (its content erased to '') mentions nobody any more.
CREATE TRIGGER mentions_erased AFTER UPDATE OF content ON messages WHEN new.content = '' BEGIN
    DELETE FROM mentions WHERE message_id = new.id;
END;

-- Full-text index of message content: an external-content FTS5 table (the
-- text lives only in `messages`), kept in step by triggers, so edits and
-- deletions that UPDATE `content` in place are followed by themselves.
CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='id');

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;

-- Index the messages stored before this migration.
INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
