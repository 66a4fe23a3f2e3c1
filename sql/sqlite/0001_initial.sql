-- Users, rooms, room membership and messages for the embedded store.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    nickname      TEXT    NOT NULL,
    -- lower-case nickname: nicknames are unique ignoring case
    nickname_key  TEXT    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL
);

CREATE TABLE rooms (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- Which users have been members of which rooms, and when they last joined.
CREATE TABLE room_members (
    room_id    INTEGER NOT NULL REFERENCES rooms (id),
    user_id    INTEGER NOT NULL REFERENCES users (id),
    joined_at  INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id     INTEGER NOT NULL REFERENCES rooms (id),
    user_id     INTEGER NOT NULL REFERENCES users (id),
    -- the sender's nickname when the message was sent
    nickname    TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- History pages and replay read a room's messages in id (= commit) order.
CREATE INDEX messages_room_id ON messages (room_id, id);
CREATE INDEX messages_room_time ON messages (room_id, created_at);
