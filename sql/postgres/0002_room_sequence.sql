-- A per-room sequence number without gaps: the order in which every
-- member, on every instance, sees a room's messages. Assigned at commit
-- under the room's advisory lock (see src/store/postgres.rs).
ALTER TABLE messages ADD COLUMN seq BIGINT;
UPDATE messages AS m SET seq = numbered.seq
FROM (SELECT id, row_number() OVER (PARTITION BY room_id ORDER BY id) AS seq FROM messages) AS numbered
WHERE m.id = numbered.id;
ALTER TABLE messages ALTER COLUMN seq SET NOT NULL;
CREATE UNIQUE INDEX messages_room_seq ON messages (room_id, seq);
