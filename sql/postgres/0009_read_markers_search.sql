-- Read markers, mentions and full-text search.
--
-- A registered user's read marker per room: the newest message read, by id
-- and by the room's gapless `seq`, so that "unread" is one subtraction
-- (the room's last seq minus the marker's). Markers only move forward.
CREATE TABLE read_markers (
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    room_id     BIGINT      NOT NULL REFERENCES rooms (id),
    message_id  BIGINT      NOT NULL,
    seq         BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

-- `@nick` mentions of registered users, recorded in the transaction that
-- commits the message; counted after the user's marker in the room.
CREATE TABLE mentions (
    user_id     BIGINT NOT NULL REFERENCES users (id),
    room_id     BIGINT NOT NULL REFERENCES rooms (id),
    message_id  BIGINT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, room_id, message_id)
);
CREATE INDEX mentions_message ON mentions (message_id);

-- A deleted message (its content erased to '') mentions nobody any more.
CREATE FUNCTION mentions_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM mentions WHERE message_id = NEW.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER mentions_erased AFTER UPDATE OF content ON messages
    FOR EACH ROW WHEN (NEW.content = '') EXECUTE FUNCTION mentions_erased();

-- Full-text index of message content. The 'simple' configuration lower-cases
-- words and does no stemming or stop words, so it works for every language
-- alike. A generated column follows every UPDATE of `content` by itself.
ALTER TABLE messages
    ADD COLUMN content_tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED;
CREATE INDEX messages_content_tsv ON messages USING GIN (content_tsv);
