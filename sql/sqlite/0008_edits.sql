-- Edits and deletions. An edit replaces `content` and sets `edited_at`; a
-- delete erases the text (`content = ''`) and sets `deleted_at`: the row
-- stays, so the room's sequence keeps no gap, but its text is gone.
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN deleted_at INTEGER;

-- Every edit and delete, with the room position it happened after (the
-- room's last `seq` when it was committed), so that a client resuming its
-- stream is sent the changes it missed in the room's order. No text is
-- kept here: a replayed edit carries the message's current text.
CREATE TABLE message_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id     INTEGER NOT NULL REFERENCES rooms (id),
    message_id  INTEGER NOT NULL REFERENCES messages (id),
    -- who made the change (the author, or the room's owner for a delete)
    user_id     INTEGER NOT NULL REFERENCES users (id),
    kind        TEXT    NOT NULL CHECK (kind IN ('edit', 'delete')),
    after_seq   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX message_changes_room ON message_changes (room_id, id);
-- `/edit` and `/delete` look for a user's last message in a room.
CREATE INDEX messages_room_user ON messages (room_id, user_id, id);
