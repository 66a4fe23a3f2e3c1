-- Private rooms: a room with an owner is invite-only. `room_access` lists
-- who may enter one: its owner, the users it invited and its members.
ALTER TABLE rooms ADD COLUMN owner_id BIGINT REFERENCES users (id);

CREATE TABLE room_access (
    room_id     BIGINT      NOT NULL REFERENCES rooms (id),
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    invited_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
