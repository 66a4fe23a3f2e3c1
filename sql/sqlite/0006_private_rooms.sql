-- Private rooms: a room with an owner is invite-only. `room_access` lists
-- who may enter one: its owner, the users it invited (`joined_at` NULL
-- until they first join) and its members.
ALTER TABLE rooms ADD COLUMN owner_id INTEGER REFERENCES users (id);

CREATE TABLE room_access (
    room_id     INTEGER NOT NULL REFERENCES rooms (id),
    user_id     INTEGER NOT NULL REFERENCES users (id),
    invited_at  INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
