-- A per-room sequence number without gaps: the order in which every
-- member, on every instance, sees a room's messages.
ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE messages SET seq = (
    SELECT COUNT(*) FROM messages AS earlier
    WHERE earlier.room_id = messages.room_id AND earlier.id <= messages.id
);
CREATE UNIQUE INDEX messages_room_seq ON messages (room_id, seq);
