//! The PostgreSQL store, chosen when `DATABASE_URL` is set.
//!
//! It owns one connection (the storage thread is its only user), the
//! prepared statements cached on that connection, and the schema: the
//! migration files under `sql/postgres/` are compiled in with `include_str!`
//! and applied at [`PostgresStore::open`], in order, each once, recorded in
//! `schema_migrations`. The migrate step runs in one transaction holding a
//! transaction-level advisory lock (`pg_advisory_xact_lock(MIGRATION_LOCK)`),
//! so instances starting together against an empty database take turns; the
//! lock goes away with the commit, the rollback or the connection.
//!
//! **Group commit.** [`Store::insert_messages`] commits a whole batch in one
//! transaction with one multi-row statement:
//!
//! ```sql
//! BEGIN;
//! SELECT pg_advisory_xact_lock(ROOM_LOCK_CLASS, room) FROM unnest($rooms);  -- sorted, distinct
//! WITH new_ids AS (SELECT nextval('messages_id_seq') AS id FROM generate_series(1, n)),
//!      numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM new_ids)
//! INSERT INTO messages (id, room_id, user_id, nickname, content, created_at, seq)
//! SELECT n.id, t.*, <room's max(seq)> + row_number() OVER (PARTITION BY room ORDER BY ord)
//! FROM unnest($1, $2, $3, $4, $5) WITH ORDINALITY t(..., ord)
//! JOIN numbered n USING (ord) RETURNING id, seq;
//! COMMIT;
//! ```
//!
//! The i-th smallest of the batch's fresh sequence values goes to the i-th
//! message, so sorting the returned ids gives them in batch order; nothing
//! relies on the order in which PostgreSQL evaluates or returns rows. The
//! per-room advisory locks (taken in ascending room order, so two batches
//! never deadlock) are held until the commit is durable and visible, so
//! within a room ids also increase in commit order across every instance
//! sharing the database: a reader that has seen id N never later finds a
//! newly committed message below N in that room. The room's `seq` (1, 2, 3,
//! ... without gaps) continues from its current maximum, read with one index
//! probe per room inside the same lock, so it is gap-free and commit-ordered
//! too.
//!
//! **Outages and reconnect.** Every failure that means "the connection is
//! gone or the server cannot serve" becomes [`StoreError::Unavailable`] and
//! drops the connection (closing a dead connection happens on a helper
//! thread, so it never holds up the storage thread). The next call, or
//! [`Store::ping`], which the storage thread sends with backoff while the
//! store is unhealthy, connects again once, bounded by the connect timeout,
//! before running its statement; after a failed attempt, calls within the
//! next second answer `Unavailable` at once instead of trying again. Before
//! reusing a connection that has been idle for half a second or more, the
//! store checks it with one round trip, so a session the server ended in
//! the meantime (`pg_terminate_backend`, a restart) is replaced before a
//! statement is sent on it. Reads and idempotent writes (`upsert_user`,
//! `record_join`) that lose their connection mid-call are retried once on a
//! fresh connection; `create_room` and `insert_messages` are not, since they
//! might have been committed.
//!
//! Bounds on waiting: connect timeout 5 s, `statement_timeout` 5 s (server
//! side), a dead peer is detected by TCP keepalive (idle 5 s, then 3 probes
//! 2 s apart) and `TCP_USER_TIMEOUT` 10 s, and `ping` waits at most 3 s. An
//! open transaction whose client vanished is ended by the server after
//! `idle_in_transaction_session_timeout` (15 s), releasing its room locks.
//!
//! The password in `DATABASE_URL` is never logged or returned:
//! [`Store::describe`] and every error name host, port and database only.

use std::collections::{BTreeSet, HashMap};
use std::error::Error as _;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Row, Statement};

use super::{
    Account, ChangeOutcome, ChangeRequest, ChangeTarget, ChangesQuery, DmConversation, DmRecord, MarkedRead, NewMessage,
    PrivateRoomRecord, RoomActivity, RoomRecord, Store, StoreError, Stored,
};
use crate::event::{ChatMessage, MessageChange};
use crate::names::name_key;

/// Migrations in the order they apply; names are recorded in `schema_migrations`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_initial", include_str!("../../sql/postgres/0001_initial.sql")),
    ("0002_room_sequence", include_str!("../../sql/postgres/0002_room_sequence.sql")),
    ("0003_client_message_ids", include_str!("../../sql/postgres/0003_client_message_ids.sql")),
    ("0004_accounts", include_str!("../../sql/postgres/0004_accounts.sql")),
    ("0005_direct_messages", include_str!("../../sql/postgres/0005_direct_messages.sql")),
    ("0006_private_rooms", include_str!("../../sql/postgres/0006_private_rooms.sql")),
    ("0007_actions", include_str!("../../sql/postgres/0007_actions.sql")),
    ("0008_edits", include_str!("../../sql/postgres/0008_edits.sql")),
    ("0009_read_markers_search", include_str!("../../sql/postgres/0009_read_markers_search.sql")),
];

/// Advisory lock key held (per transaction) while migrating: "babydisc".
const MIGRATION_LOCK: i64 = 0x6261_6279_6469_7363;
/// First key of the two-key advisory locks that order commits per room: "bdrm".
/// (Two-key locks never collide with the one-key migration lock.)
const ROOM_LOCK_CLASS: i32 = 0x6264_726d;
/// Advisory lock class of client message ids (`clientMsgId`), taken after
/// the rooms' locks, in ascending order too.
const CLIENT_ID_LOCK_CLASS: i32 = 0x6264_6364;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A session idle this long is checked with a round trip before it is reused.
const IDLE_CHECK_AFTER: Duration = Duration::from_millis(500);
/// After a failed connection attempt, how long calls fail at once instead of trying again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Session settings sent in the startup packet (so they survive reconnects).
const SESSION_OPTIONS: &str = "-c statement_timeout=5s -c idle_in_transaction_session_timeout=15s";

/// Converts a `$n::bigint` of milliseconds to TIMESTAMPTZ, exactly.
macro_rules! ms_to_ts {
    ($e:literal) => {
        concat!("(TIMESTAMPTZ 'epoch' + ", $e, " * INTERVAL '1 millisecond')")
    };
}
/// Converts a TIMESTAMPTZ column to BIGINT milliseconds, exactly.
macro_rules! ts_to_ms {
    ($e:literal) => {
        concat!("(extract(epoch FROM ", $e, ") * 1000)::bigint")
    };
}

const SQL_ROOMS: &str = concat!("SELECT id, name, ", ts_to_ms!("created_at"), " FROM rooms ORDER BY id");

const SQL_CREATE_ROOM: &str =
    concat!("INSERT INTO rooms (name, created_at) VALUES ($1, ", ms_to_ts!("$2::bigint"), ") RETURNING id");

const SQL_UPSERT_USER: &str = concat!(
    "INSERT INTO users (nickname, nickname_key, created_at, last_seen_at) VALUES ($1, $2, ",
    ms_to_ts!("$3::bigint"),
    ", ",
    ms_to_ts!("$3::bigint"),
    ") ON CONFLICT (nickname_key) DO UPDATE SET nickname = EXCLUDED.nickname, last_seen_at = EXCLUDED.last_seen_at
     RETURNING id"
);

const SQL_UPSERT_GUEST: &str = concat!(
    "INSERT INTO users (nickname, nickname_key, created_at, last_seen_at) VALUES ($1, $2, ",
    ms_to_ts!("$3::bigint"),
    ", ",
    ms_to_ts!("$3::bigint"),
    ") ON CONFLICT (nickname_key) DO UPDATE SET nickname = EXCLUDED.nickname, last_seen_at = EXCLUDED.last_seen_at
     WHERE users.password_hash IS NULL
     RETURNING id"
);

const SQL_ACCOUNT: &str =
    "SELECT id, nickname, password_hash FROM users WHERE nickname_key = $1 AND password_hash IS NOT NULL";
const SQL_ACCOUNT_BY_ID: &str = "SELECT id, nickname, password_hash FROM users WHERE id = $1 AND password_hash IS NOT NULL";
const SQL_REGISTER: &str = concat!(
    "UPDATE users SET password_hash = $2, registered_at = ",
    ms_to_ts!("$3::bigint"),
    " WHERE id = $1 AND password_hash IS NULL"
);
const SQL_SET_PASSWORD: &str = "UPDATE users SET password_hash = $2 WHERE id = $1 AND password_hash IS NOT NULL";
const SQL_SAVE_SESSION: &str = concat!(
    "INSERT INTO auth_sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, ",
    ms_to_ts!("$3::bigint"),
    ", ",
    ms_to_ts!("$4::bigint"),
    ")"
);
const SQL_SESSION_ACCOUNT: &str = concat!(
    "SELECT u.id, u.nickname, u.password_hash FROM auth_sessions s JOIN users u ON u.id = s.user_id
     WHERE s.token_hash = $1 AND s.expires_at > ",
    ms_to_ts!("$2::bigint"),
    " AND u.password_hash IS NOT NULL"
);
const SQL_VALID_SESSIONS: &str = concat!(
    "SELECT token_hash FROM auth_sessions WHERE token_hash = ANY($1) AND expires_at > ",
    ms_to_ts!("$2::bigint")
);
const SQL_DELETE_SESSION: &str =
    concat!("DELETE FROM auth_sessions WHERE token_hash = $1 OR expires_at <= ", ms_to_ts!("$2::bigint"));

const SQL_INSERT_DM: &str = concat!(
    "INSERT INTO direct_messages (sender_id, recipient_id, sender, recipient, content, created_at)
     SELECT $1, u.id, $2, u.nickname, $4, ",
    ms_to_ts!("$5::bigint"),
    " FROM users u WHERE u.nickname_key = $3 AND u.password_hash IS NOT NULL
     RETURNING id, recipient_id, recipient"
);
const SQL_MARK_DMS_READ: &str = concat!(
    "UPDATE direct_messages SET read_at = ",
    ms_to_ts!("$3::bigint"),
    " WHERE id = ANY($2) AND recipient_id = $1 AND read_at IS NULL"
);
macro_rules! dm_columns {
    () => {
        concat!("id, sender_id, sender, recipient_id, recipient, content, ", ts_to_ms!("created_at"), " AS created_ms FROM direct_messages")
    };
}
const SQL_UNREAD_DMS: &str =
    concat!("SELECT ", dm_columns!(), " WHERE recipient_id = $1 AND read_at IS NULL ORDER BY id LIMIT $2");
const SQL_DM_HISTORY: &str = concat!(
    "SELECT * FROM (SELECT ",
    dm_columns!(),
    " WHERE ((sender_id = $1 AND recipient_id = $2) OR (sender_id = $2 AND recipient_id = $1)) AND id < $3
       ORDER BY id DESC LIMIT $4) page ORDER BY id"
);
const SQL_DM_CONVERSATIONS: &str = concat!(
    "SELECT CASE WHEN d.sender_id = $1 THEN d.recipient ELSE d.sender END, c.last_id, ",
    ts_to_ms!("d.created_at"),
    ",
            (SELECT COUNT(*) FROM direct_messages u
              WHERE u.recipient_id = $1 AND u.sender_id = c.other AND u.read_at IS NULL)
     FROM (SELECT CASE WHEN sender_id = $1 THEN recipient_id ELSE sender_id END AS other, MAX(id) AS last_id
           FROM direct_messages WHERE sender_id = $1 OR recipient_id = $1 GROUP BY 1) c
     JOIN direct_messages d ON d.id = c.last_id
     ORDER BY c.last_id DESC"
);

const SQL_CREATE_PRIVATE_ROOM: &str = concat!(
    "WITH room AS (INSERT INTO rooms (name, created_at, owner_id) VALUES ($1, ",
    ms_to_ts!("$2::bigint"),
    ", $3) RETURNING id, owner_id, created_at)
     INSERT INTO room_access (room_id, user_id, invited_at) SELECT id, owner_id, created_at FROM room RETURNING room_id"
);
const SQL_PRIVATE_ROOMS: &str = "SELECT r.id, r.name, r.owner_id, u.nickname,
        COALESCE((SELECT array_agg(a.user_id) FROM room_access a WHERE a.room_id = r.id), '{}')
     FROM rooms r JOIN users u ON u.id = r.owner_id WHERE r.owner_id IS NOT NULL ORDER BY r.id";
const SQL_GRANT_ROOM: &str = concat!(
    "INSERT INTO room_access (room_id, user_id, invited_at) VALUES ($1, $2, ",
    ms_to_ts!("$3::bigint"),
    ") ON CONFLICT DO NOTHING"
);
const SQL_REVOKE_ROOM: &str = "DELETE FROM room_access WHERE room_id = $1 AND user_id = $2";

fn dm_from(row: &Row) -> Result<DmRecord, postgres::Error> {
    Ok(DmRecord {
        id: row.try_get(0)?,
        sender_id: row.try_get(1)?,
        sender: row.try_get(2)?,
        recipient_id: row.try_get(3)?,
        recipient: row.try_get(4)?,
        content: row.try_get(5)?,
        created_at_ms: row.try_get(6)?,
    })
}

fn account_from(row: &Row) -> Result<Account, postgres::Error> {
    Ok(Account { user_id: row.try_get(0)?, nickname: row.try_get(1)?, password_hash: row.try_get(2)? })
}

const SQL_RECORD_JOIN: &str = concat!(
    "INSERT INTO room_members (room_id, user_id, joined_at) VALUES ($1, $2, ",
    ms_to_ts!("$3::bigint"),
    ") ON CONFLICT (room_id, user_id) DO UPDATE SET joined_at = EXCLUDED.joined_at"
);

/// Locks the batch's rooms, given as a sorted, de-duplicated array (unnest
/// reads an array in order, so locks are always taken in ascending order).
const SQL_LOCK_ROOMS: &str =
    "SELECT pg_advisory_xact_lock($2::int, (r & 2147483647)::int) FROM unnest($1::bigint[]) AS r";

/// Messages stored before under some of the batch's client message ids.
const SQL_EARLIER_CLIENT_IDS: &str = concat!(
    "SELECT c.client_msg_id, m.id, m.seq, ",
    ts_to_ms!("m.created_at"),
    " FROM client_messages c JOIN messages m ON m.id = c.message_id
     WHERE c.client_msg_id = ANY($1::text[])"
);

const SQL_RECORD_CLIENT_IDS: &str =
    "INSERT INTO client_messages (client_msg_id, message_id) SELECT * FROM unnest($1::text[], $2::bigint[])";

/// The group-commit statement: one row per message, ids handed out in batch
/// order (see the module documentation).
const SQL_INSERT_MESSAGES: &str = concat!(
    "WITH new_ids AS (
         SELECT nextval('messages_id_seq') AS id FROM generate_series(1, cardinality($1::bigint[]))
     ), numbered AS (
         SELECT id, row_number() OVER (ORDER BY id) AS ord FROM new_ids
     )
     , last_seq AS (
         -- one index probe (room_id, seq) per room of the batch, whatever
         -- the room's size; an aggregate over room_id = ANY(...) would read
         -- every message of the room on each commit
         SELECT room_id, (SELECT max(m.seq) FROM messages m WHERE m.room_id = rooms.room_id) AS seq
         FROM (SELECT DISTINCT room_id FROM unnest($1::bigint[]) AS r(room_id)) AS rooms
     )
     INSERT INTO messages (id, room_id, user_id, nickname, content, created_at, seq, action)
     SELECT n.id, t.room_id, t.user_id, t.nickname, t.content, ",
    ms_to_ts!("t.created_at"),
    ",
            COALESCE(l.seq, 0) + row_number() OVER (PARTITION BY t.room_id ORDER BY t.ord), t.action
     FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::boolean[])
          WITH ORDINALITY AS t(room_id, user_id, nickname, content, created_at, action, ord)
     JOIN numbered n ON n.ord = t.ord
     LEFT JOIN last_seq l ON l.room_id = t.room_id
     RETURNING id, seq"
);

/// The columns [`message_from`] reads, up to `FROM`.
macro_rules! message_columns {
    () => {
        concat!(
            "m.id, m.room_id, r.name, m.user_id, m.nickname, m.content, ",
            ts_to_ms!("m.created_at"),
            " AS created_at_ms, m.seq, ",
            ts_to_ms!("m.edited_at"),
            " AS edited_at_ms, m.deleted_at IS NOT NULL AS deleted, m.action"
        )
    };
}

const SQL_MESSAGES_BEFORE: &str = concat!(
    "SELECT * FROM (
         SELECT ",
    message_columns!(),
    " FROM messages m JOIN rooms r ON r.id = m.room_id
         WHERE m.room_id = $1 AND m.id < $2 ORDER BY m.id DESC LIMIT $3
     ) page ORDER BY id"
);

const SQL_VISIBLE_MESSAGES_BEFORE: &str = concat!(
    "SELECT * FROM (
         SELECT ",
    message_columns!(),
    " FROM messages m JOIN rooms r ON r.id = m.room_id
         WHERE m.room_id = $1 AND m.id < $2 AND m.deleted_at IS NULL ORDER BY m.id DESC LIMIT $3
     ) page ORDER BY id"
);

const SQL_MESSAGES_AFTER: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages m JOIN rooms r ON r.id = m.room_id
     WHERE m.room_id = $1 AND m.id > $2 AND m.deleted_at IS NULL ORDER BY m.id LIMIT $3"
);

const SQL_MESSAGES_FROM_SEQ: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages m JOIN rooms r ON r.id = m.room_id
     WHERE m.room_id = $1 AND m.seq >= $2 ORDER BY m.seq LIMIT $3"
);

/// The room of a message, to lock it before the message is read again.
const SQL_MESSAGE_ROOM: &str = "SELECT room_id FROM messages WHERE id = $1";
/// The user's last message (not deleted) in a room.
const SQL_LAST_OWN: &str =
    "SELECT id FROM messages WHERE room_id = $1 AND user_id = $2 AND deleted_at IS NULL ORDER BY id DESC LIMIT 1";
/// The message a change is about, locked, with what decides who may change it.
const SQL_CHANGE_TARGET: &str = "SELECT m.id, m.room_id, r.name, m.user_id, m.nickname, m.deleted_at IS NOT NULL, r.owner_id,
        (r.owner_id IS NULL OR EXISTS (SELECT 1 FROM room_access a WHERE a.room_id = r.id AND a.user_id = $2))
     FROM messages m JOIN rooms r ON r.id = m.room_id WHERE m.id = $1 FOR UPDATE OF m";
const SQL_LAST_SEQ: &str = "SELECT COALESCE(max(seq), 0) FROM messages WHERE room_id = $1";
const SQL_EDIT: &str = concat!("UPDATE messages SET content = $2, edited_at = ", ms_to_ts!("$3::bigint"), " WHERE id = $1");
const SQL_ERASE: &str = concat!("UPDATE messages SET content = '', deleted_at = ", ms_to_ts!("$2::bigint"), " WHERE id = $1");
const SQL_RECORD_CHANGE: &str = concat!(
    "INSERT INTO message_changes (room_id, message_id, user_id, kind, after_seq, created_at) VALUES ($1, $2, $3, $4, $5, ",
    ms_to_ts!("$6::bigint"),
    ") RETURNING id"
);
const SQL_CHANGES_SINCE: &str = concat!(
    "SELECT c.id, c.message_id, r.name, c.after_seq, m.nickname, u.nickname, c.kind, m.content, ",
    ts_to_ms!("CASE WHEN c.kind = 'edit' THEN m.edited_at ELSE c.created_at END"),
    " FROM message_changes c JOIN messages m ON m.id = c.message_id
          JOIN rooms r ON r.id = c.room_id JOIN users u ON u.id = c.user_id
     WHERE c.room_id = $1 AND c.message_id <= $2 AND c.id > $3
       AND c.after_seq >= (SELECT seq FROM messages WHERE id = $4 AND room_id = $1)
       AND c.after_seq < $5
       AND (c.kind = 'delete' OR m.deleted_at IS NULL)
     ORDER BY c.id LIMIT $6"
);

/// Records the `@mentions` of registered users (not the sender) of the
/// batch's new messages: (user key, room, message, sender) rows.
const SQL_RECORD_MENTIONS: &str = "INSERT INTO mentions (user_id, room_id, message_id)
     SELECT u.id, t.room_id, t.message_id
     FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS t(nickname_key, room_id, message_id, sender_id)
     JOIN users u ON u.nickname_key = t.nickname_key AND u.password_hash IS NOT NULL AND u.id <> t.sender_id
     ON CONFLICT DO NOTHING";

/// Each room's newest message and, for user $2, its read marker and the
/// mentions after it: one index probe per room and table.
const SQL_ROOM_ACTIVITY: &str = "SELECT r.room_id, last.id, last.seq, mk.seq,
         (SELECT count(*) FROM mentions n
          WHERE n.user_id = $2 AND n.room_id = r.room_id AND n.message_id > COALESCE(mk.message_id, 0))
     FROM unnest($1::bigint[]) WITH ORDINALITY AS r(room_id, ord)
     LEFT JOIN LATERAL (SELECT id, seq FROM messages m WHERE m.room_id = r.room_id ORDER BY seq DESC LIMIT 1) last ON true
     LEFT JOIN read_markers mk ON mk.user_id = $2 AND mk.room_id = r.room_id
     ORDER BY r.ord";

/// Moves user $1's marker in room $2 to the newest message at or below id
/// $3, forward only; answers the old seq and, if it moved, the new one.
const SQL_MARK_READ: &str = concat!(
    "WITH target AS (
         SELECT id, seq FROM messages WHERE room_id = $2 AND id <= $3 ORDER BY id DESC LIMIT 1
     ), old AS (
         SELECT message_id, seq FROM read_markers WHERE user_id = $1 AND room_id = $2
     ), moved AS (
         INSERT INTO read_markers (user_id, room_id, message_id, seq, updated_at)
         SELECT $1, $2, id, seq, ",
    ms_to_ts!("$4::bigint"),
    " FROM target
         ON CONFLICT (user_id, room_id) DO UPDATE
         SET message_id = EXCLUDED.message_id, seq = EXCLUDED.seq, updated_at = EXCLUDED.updated_at
         WHERE EXCLUDED.seq > read_markers.seq
         RETURNING message_id, seq
     )
     SELECT (SELECT message_id FROM old), (SELECT seq FROM old), (SELECT message_id FROM moved), (SELECT seq FROM moved)"
);

/// Full-text search in one room, newest first, never an erased message.
const SQL_SEARCH: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages m JOIN rooms r ON r.id = m.room_id
     WHERE m.room_id = $1 AND m.content_tsv @@ plainto_tsquery('simple', $2) AND m.content <> ''
     ORDER BY m.id DESC LIMIT $3"
);

/// One open connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    /// When a statement last succeeded on this session.
    last_used: Instant,
}

impl Conn {
    /// The statement for `sql`, prepared once per connection.
    fn prepare(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Whether this session is unusable. A session that has been idle for
    /// a while is checked with a round trip first (bounded by the ping
    /// timeout): the server may have ended it meanwhile (a restart,
    /// `pg_terminate_backend`), and finding out before sending a statement
    /// keeps that statement from failing for nothing.
    fn is_lost(&mut self) -> bool {
        if self.client.is_closed() {
            return true;
        }
        if self.last_used.elapsed() >= IDLE_CHECK_AFTER {
            if let Err(e) = self.client.is_valid(PING_TIMEOUT) {
                log::debug!("idle PostgreSQL session failed its check: {}", error_text(&e));
                return true;
            }
            self.last_used = Instant::now();
        }
        false
    }
}

pub struct PostgresStore {
    config: Config,
    /// `host:port/dbname`, for logs and errors.
    target: String,
    /// `None` after the connection was lost, until the next call reconnects.
    conn: Option<Conn>,
    /// When the last connection attempt failed, and why.
    last_failed_connect: Option<(Instant, StoreError)>,
}

impl PostgresStore {
    /// Connects to the database in `url` (a `postgres://` URL or a
    /// `key=value` string), applies pending migrations and returns the
    /// store. Fails within the connect timeout if the server is unreachable.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Failed(format!("not a valid PostgreSQL connection URL ({})", error_text(&e))))?;
        tune(&mut config);
        let target = target_of(&config);
        let mut store = PostgresStore { config, target, conn: None, last_failed_connect: None };
        store.conn = Some(store.connect()?);
        store.migrate()?;
        store.check_durability();
        Ok(store)
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        match self.config.connect(NoTls) {
            Ok(client) => Ok(Conn { client, statements: HashMap::new(), last_used: Instant::now() }),
            Err(e) => Err(StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {}",
                self.target,
                error_text(&e)
            ))),
        }
    }

    /// The open connection, reconnecting (once) if it was lost.
    fn connection(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_mut().is_some_and(Conn::is_lost) {
            log::warn!("the PostgreSQL connection to {} was closed by the server", self.target);
            self.discard_connection();
        }
        if self.conn.is_none() {
            if let Some((at, error)) = &self.last_failed_connect {
                if at.elapsed() < RECONNECT_PAUSE {
                    return Err(error.clone());
                }
            }
            match self.connect() {
                Ok(conn) => {
                    log::info!("reconnected to PostgreSQL at {}", self.target);
                    self.last_failed_connect = None;
                    self.conn = Some(conn);
                }
                Err(error) => {
                    self.last_failed_connect = Some((Instant::now(), error.clone()));
                    return Err(error);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Drops the connection without waiting for it to close.
    fn discard_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Dropping a client says goodbye to the server and waits for the
            // socket to close, which on a dead network can take until the
            // TCP timeouts fire; do that off the storage thread.
            let closer = std::thread::Builder::new().name("pg-close".into()).spawn(move || drop(conn));
            if let Err(e) = closer {
                log::warn!("cannot start a thread to close the old PostgreSQL connection: {e}");
            }
        }
    }

    /// Maps a driver error to a store error, dropping the connection when
    /// the error means it is gone.
    fn failure(&mut self, error: postgres::Error) -> StoreError {
        let closed = self.conn.as_ref().is_none_or(|c| c.client.is_closed());
        let (store_error, lost) = classify(&error, closed, &self.target);
        if lost {
            log::warn!("lost the PostgreSQL connection to {}: {}", self.target, error_text(&error));
            self.discard_connection();
        }
        store_error
    }

    /// Runs `op` on the connection. With `retry`, an operation that lost a
    /// connection it had reused runs once more on a fresh one; only for
    /// operations that are harmless to repeat.
    fn run<T>(
        &mut self,
        retry: bool,
        mut op: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let reused = self.conn.is_some();
        let outcome = op(self.connection()?);
        match outcome {
            Ok(value) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.last_used = Instant::now();
                }
                Ok(value)
            }
            Err(error) => {
                let error = self.failure(error);
                if retry && reused && self.conn.is_none() {
                    let outcome = op(self.connection()?);
                    return outcome.map_err(|e| self.failure(e));
                }
                Err(error)
            }
        }
    }

    /// Applies pending migrations in one transaction under the migration lock.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let target = self.target.clone();
        let conn = self.conn.as_mut().expect("open connects first");
        let fail = |what: &str, e: postgres::Error, closed: bool| {
            let (error, _) = classify(&e, closed, &target);
            match error {
                StoreError::Unavailable(why) => StoreError::Unavailable(format!("{what}: {why}")),
                StoreError::Failed(why) => StoreError::Failed(format!("{what}: {why}")),
                StoreError::Conflict => StoreError::Failed(format!("{what}: {}", error_text(&e))),
            }
        };
        let mut tx = conn.client.transaction().map_err(|e| fail("cannot start the migration", e, false))?;
        let mut step = || -> Result<(), (String, postgres::Error)> {
            let setup = |e| ("cannot prepare the migrations".to_string(), e);
            // Migrations may legitimately run long (index builds), and so may
            // waiting for another instance's migration.
            tx.batch_execute("SET LOCAL statement_timeout = '10min'").map_err(setup)?;
            // Quietly: `IF NOT EXISTS` would otherwise raise a NOTICE that
            // the client library logs at info level on every start.
            tx.batch_execute("SET LOCAL client_min_messages = warning").map_err(setup)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(setup)?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version     TEXT        PRIMARY KEY,
                     applied_at  TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .map_err(setup)?;
            let applied: BTreeSet<String> = tx
                .query("SELECT version FROM schema_migrations", &[])
                .map_err(setup)?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for (version, sql) in MIGRATIONS {
                if applied.contains(*version) {
                    continue;
                }
                log::info!("applying migration {version}");
                let failed = |e| (format!("migration {version} failed"), e);
                tx.batch_execute(sql).map_err(failed)?;
                tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).map_err(failed)?;
            }
            for version in applied.iter().filter(|v| !MIGRATIONS.iter().any(|(known, _)| known == v)) {
                log::warn!("the database has migration {version}, which this build does not know (a newer version?)");
            }
            Ok(())
        };
        let outcome = step();
        match outcome {
            Ok(()) => tx.commit().map_err(|e| fail("cannot commit the migrations", e, false)),
            Err((what, e)) => {
                drop(tx); // rolls back and releases the lock
                Err(fail(&what, e, conn.client.is_closed()))
            }
        }
    }

    /// Warns when the server would acknowledge commits before they are durable.
    fn check_durability(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            if let Ok(row) = conn.client.query_one("SHOW synchronous_commit", &[]) {
                let setting: String = row.get(0);
                if setting == "off" {
                    log::warn!(
                        "PostgreSQL has synchronous_commit = off: a crash of the database server can lose acknowledged messages"
                    );
                }
            }
        }
    }
}

/// Adds the timeouts and session settings the store relies on, keeping any
/// the URL already sets.
/// The database `url` names, if the server answers but says it does not
/// exist (the one thing `createdb` fixes).
pub fn missing_database(url: &str) -> Option<String> {
    let mut config: Config = url.parse().ok()?;
    tune(&mut config);
    let name = config.get_dbname()?.to_string();
    match config.connect(NoTls) {
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => Some(name),
        _ => None,
    }
}

/// Creates the database `url` names, through the server's `postgres`
/// database; returns its name.
pub fn create_database(url: &str) -> Result<String, String> {
    let mut config: Config = url.parse().map_err(|e| format!("not a valid PostgreSQL connection URL ({})", error_text(&e)))?;
    tune(&mut config);
    let name = config.get_dbname().ok_or("DATABASE_URL names no database")?.to_string();
    config.dbname("postgres");
    let mut client = config.connect(NoTls).map_err(|e| format!("cannot connect to PostgreSQL: {}", error_text(&e)))?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .map_err(|e| format!("cannot create database {name}: {}", error_text(&e)))?;
    Ok(name)
}

fn tune(config: &mut Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    config.keepalives(true);
    config.keepalives_idle(KEEPALIVE_IDLE);
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
    if config.get_application_name().is_none() {
        config.application_name("baby-discord");
    }
    // Settings from the URL come last, so they win.
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{SESSION_OPTIONS} {own}"),
        _ => SESSION_OPTIONS.to_string(),
    };
    config.options(&options);
}

/// `host:port/dbname` (never user or password).
fn target_of(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config.get_ports().get(i).or(config.get_ports().first()).copied().unwrap_or(5432);
            match host {
                postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() { "(no host)".to_string() } else { hosts.join(",") };
    let dbname = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{hosts}/{dbname}")
}

/// A driver error with its cause (the driver's own message omits it).
fn error_text(error: &postgres::Error) -> String {
    match error.source() {
        Some(cause) => format!("{error}: {}", cause.to_string().replace('\n', "; ")),
        None => error.to_string(),
    }
}

/// Maps a driver error to a store error and says whether the connection is
/// lost. `closed` tells whether the client saw its connection close.
fn classify(error: &postgres::Error, closed: bool, target: &str) -> (StoreError, bool) {
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return (StoreError::Conflict, false);
        }
        let text = format!("PostgreSQL at {target}: {}", error_text(error));
        let sqlstate = code.code();
        // Class 08: connection exception; 57P01-57P05: the server is shutting
        // down, crashed, starting up or ended an idle session; any FATAL or
        // PANIC ends the session.
        let session_over = closed
            || sqlstate.starts_with("08")
            || sqlstate.starts_with("57P")
            || matches!(db.severity(), "FATAL" | "PANIC");
        if session_over {
            return (StoreError::Unavailable(text), true);
        }
        // Class 53: out of disk, memory or connections; 57014: a statement
        // hit statement_timeout (a blocked or overloaded server); 25006: the
        // server is a read-only standby; class 58: I/O error on the server.
        let cannot_serve = sqlstate.starts_with("53")
            || sqlstate.starts_with("58")
            || *code == SqlState::QUERY_CANCELED
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
        if cannot_serve {
            return (StoreError::Unavailable(text), false);
        }
        return (StoreError::Failed(text), false);
    }
    // Not an answer from the server: the connection closed, an I/O error, a
    // timeout or an unexpected message all mean the session is unusable.
    // Anything else (a value that did not convert) is our own mistake.
    let text = error_text(error);
    let io = error.source().is_some_and(|cause| cause.is::<std::io::Error>());
    let lost = closed
        || io
        || error.is_closed()
        || text.starts_with("timeout")
        || text.starts_with("unexpected message")
        || text.starts_with("error communicating")
        || text.starts_with("error connecting")
        || text.starts_with("error parsing response");
    if lost {
        (StoreError::Unavailable(format!("PostgreSQL at {target}: {text}")), true)
    } else {
        (StoreError::Failed(format!("PostgreSQL at {target}: {text}")), false)
    }
}

fn message_from(row: &Row) -> Result<ChatMessage, postgres::Error> {
    Ok(ChatMessage {
        id: row.try_get(0)?,
        room_id: row.try_get(1)?,
        room: row.try_get(2)?,
        user_id: row.try_get(3)?,
        nickname: row.try_get(4)?,
        content: row.try_get(5)?,
        created_at_ms: row.try_get(6)?,
        seq: row.try_get(7)?,
        edited_at_ms: row.try_get(8)?,
        deleted: row.try_get(9)?,
        action: row.try_get(10)?,
        rendered: Default::default(),
    })
}

/// A page size as SQL `LIMIT`.
fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store for PostgresStore {
    fn describe(&self) -> String {
        format!("PostgreSQL at {}", self.target)
    }

    fn rooms(&mut self) -> Result<Vec<RoomRecord>, StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_ROOMS)?;
            conn.client
                .query(&statement, &[])?
                .iter()
                .map(|row| Ok(RoomRecord { id: row.try_get(0)?, name: row.try_get(1)?, created_at_ms: row.try_get(2)? }))
                .collect()
        })
    }

    fn create_room(&mut self, name: &str, at_ms: i64) -> Result<RoomRecord, StoreError> {
        // Not retried: a lost reply may hide a commit, and a retry would then
        // report a conflict with ourselves.
        let id: i64 = self.run(false, |conn| {
            let statement = conn.prepare(SQL_CREATE_ROOM)?;
            conn.client.query_one(&statement, &[&name, &at_ms])?.try_get(0)
        })?;
        Ok(RoomRecord { id, name: name.to_string(), created_at_ms: at_ms })
    }

    fn upsert_user(&mut self, nickname: &str, at_ms: i64) -> Result<i64, StoreError> {
        let key = name_key(nickname);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_UPSERT_USER)?;
            conn.client.query_one(&statement, &[&nickname, &key, &at_ms])?.try_get(0)
        })
    }

    fn upsert_guest(&mut self, nickname: &str, at_ms: i64) -> Result<Option<i64>, StoreError> {
        let key = name_key(nickname);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_UPSERT_GUEST)?;
            conn.client.query_opt(&statement, &[&nickname, &key, &at_ms])?.map(|row| row.try_get(0)).transpose()
        })
    }

    fn account(&mut self, nickname: &str) -> Result<Option<Account>, StoreError> {
        let key = name_key(nickname);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_ACCOUNT)?;
            conn.client.query_opt(&statement, &[&key])?.as_ref().map(account_from).transpose()
        })
    }

    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_ACCOUNT_BY_ID)?;
            conn.client.query_opt(&statement, &[&user_id])?.as_ref().map(account_from).transpose()
        })
    }

    fn register(&mut self, user_id: i64, password_hash: &str, at_ms: i64) -> Result<bool, StoreError> {
        // Not retried: a lost reply may hide a commit, and a retry would
        // then report the account as registered by someone else.
        self.run(false, |conn| {
            let statement = conn.prepare(SQL_REGISTER)?;
            conn.client.execute(&statement, &[&user_id, &password_hash, &at_ms]).map(|n| n == 1)
        })
    }

    fn set_password(&mut self, user_id: i64, password_hash: &str) -> Result<(), StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_SET_PASSWORD)?;
            conn.client.execute(&statement, &[&user_id, &password_hash]).map(drop)
        })
    }

    fn save_session(&mut self, token_hash: &str, user_id: i64, at_ms: i64, expires_ms: i64) -> Result<(), StoreError> {
        self.run(false, |conn| {
            let statement = conn.prepare(SQL_SAVE_SESSION)?;
            conn.client.execute(&statement, &[&token_hash, &user_id, &at_ms, &expires_ms]).map(drop)
        })
    }

    fn session_account(&mut self, token_hash: &str, now_ms: i64) -> Result<Option<Account>, StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_SESSION_ACCOUNT)?;
            conn.client.query_opt(&statement, &[&token_hash, &now_ms])?.as_ref().map(account_from).transpose()
        })
    }

    fn valid_sessions(&mut self, token_hashes: &[String], now_ms: i64) -> Result<Vec<String>, StoreError> {
        let hashes = token_hashes.to_vec();
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_VALID_SESSIONS)?;
            conn.client.query(&statement, &[&hashes, &now_ms])?.iter().map(|row| row.try_get(0)).collect()
        })
    }

    fn delete_session(&mut self, token_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_DELETE_SESSION)?;
            conn.client.execute(&statement, &[&token_hash, &now_ms]).map(drop)
        })
    }

    fn create_private_room(&mut self, name: &str, owner_id: i64, at_ms: i64) -> Result<RoomRecord, StoreError> {
        // Not retried, like create_room.
        let id: i64 = self.run(false, |conn| {
            let statement = conn.prepare(SQL_CREATE_PRIVATE_ROOM)?;
            conn.client.query_one(&statement, &[&name, &at_ms, &owner_id])?.try_get(0)
        })?;
        Ok(RoomRecord { id, name: name.to_string(), created_at_ms: at_ms })
    }

    fn private_rooms(&mut self) -> Result<Vec<PrivateRoomRecord>, StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_PRIVATE_ROOMS)?;
            conn.client
                .query(&statement, &[])?
                .iter()
                .map(|row| {
                    Ok(PrivateRoomRecord {
                        room_id: row.try_get(0)?,
                        name: row.try_get(1)?,
                        owner_id: row.try_get(2)?,
                        owner: row.try_get(3)?,
                        allowed: row.try_get(4)?,
                    })
                })
                .collect()
        })
    }

    fn grant_room(&mut self, room_id: i64, user_id: i64, at_ms: i64) -> Result<bool, StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_GRANT_ROOM)?;
            conn.client.execute(&statement, &[&room_id, &user_id, &at_ms]).map(|n| n == 1)
        })
    }

    fn revoke_room(&mut self, room_id: i64, user_id: i64) -> Result<bool, StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_REVOKE_ROOM)?;
            conn.client.execute(&statement, &[&room_id, &user_id]).map(|n| n == 1)
        })
    }

    fn insert_dm(&mut self, sender_id: i64, sender: &str, recipient: &str, content: &str, at_ms: i64)
        -> Result<Option<DmRecord>, StoreError> {
        let key = name_key(recipient);
        // Not retried: a lost reply may hide a commit.
        let row = self.run(false, |conn| {
            let statement = conn.prepare(SQL_INSERT_DM)?;
            conn.client.query_opt(&statement, &[&sender_id, &sender, &key, &content, &at_ms])
        })?;
        row.map(|row| -> Result<DmRecord, StoreError> {
            let get = |e: postgres::Error| StoreError::Failed(error_text(&e));
            Ok(DmRecord {
                id: row.try_get(0).map_err(get)?,
                sender_id,
                sender: sender.to_string(),
                recipient_id: row.try_get(1).map_err(get)?,
                recipient: row.try_get(2).map_err(get)?,
                content: content.to_string(),
                created_at_ms: at_ms,
            })
        })
        .transpose()
    }

    fn mark_dms_read(&mut self, recipient_id: i64, ids: &[i64], at_ms: i64) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_MARK_DMS_READ)?;
            conn.client.execute(&statement, &[&recipient_id, &ids, &at_ms]).map(drop)
        })
    }

    fn unread_dms(&mut self, recipient_id: i64, limit: usize) -> Result<Vec<DmRecord>, StoreError> {
        let limit = limit_of(limit);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_UNREAD_DMS)?;
            conn.client.query(&statement, &[&recipient_id, &limit])?.iter().map(dm_from).collect()
        })
    }

    fn dm_conversations(&mut self, user_id: i64) -> Result<Vec<DmConversation>, StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_DM_CONVERSATIONS)?;
            conn.client
                .query(&statement, &[&user_id])?
                .iter()
                .map(|row| {
                    Ok(DmConversation {
                        with: row.try_get(0)?,
                        last_id: row.try_get(1)?,
                        last_at_ms: row.try_get(2)?,
                        unread: row.try_get(3)?,
                    })
                })
                .collect()
        })
    }

    fn dm_history(&mut self, user_id: i64, other_id: i64, before: Option<i64>, limit: usize)
        -> Result<Vec<DmRecord>, StoreError> {
        let (before, limit) = (before.unwrap_or(i64::MAX), limit_of(limit));
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_DM_HISTORY)?;
            conn.client.query(&statement, &[&user_id, &other_id, &before, &limit])?.iter().map(dm_from).collect()
        })
    }

    fn record_join(&mut self, room_id: i64, user_id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_RECORD_JOIN)?;
            conn.client.execute(&statement, &[&room_id, &user_id, &at_ms]).map(drop)
        })
    }

    /// All or nothing: if this returns an error, the transaction was rolled
    /// back (explicitly, or by the server when the session died) and no
    /// message of the batch is stored. One case is ambiguous by nature: the
    /// connection dies after COMMIT was sent but before its reply arrives.
    /// The server may have committed, yet we report `Unavailable`, so the
    /// batch can be stored but refused to its senders (they will see it in
    /// history, never the reverse: nothing is reported committed unless the
    /// server confirmed the COMMIT). The failed call is never retried here,
    /// so no batch is stored twice.
    fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<Vec<Stored>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let rooms: Vec<i64> = batch.iter().map(|m| m.room_id).collect::<BTreeSet<_>>().into_iter().collect();
        let client_ids: Vec<String> = batch.iter().filter_map(|m| m.client_msg_id).map(|id| id.to_string()).collect();
        // One lock per client id (by its first 64 bits), sorted: a retry
        // on another instance waits for this commit, then finds it.
        let client_locks: Vec<i64> = batch
            .iter()
            .filter_map(|m| m.client_msg_id)
            .map(|id| i64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes")) & 0x7fff_ffff)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let outcome = self.run(false, |conn| {
            let lock = conn.prepare(SQL_LOCK_ROOMS)?;
            let insert = conn.prepare(SQL_INSERT_MESSAGES)?;
            let mut tx = conn.client.transaction()?;
            tx.execute(&lock, &[&rooms, &ROOM_LOCK_CLASS])?;
            let mut earlier: HashMap<String, Stored> = HashMap::new();
            if !client_ids.is_empty() {
                tx.execute(&lock, &[&client_locks, &CLIENT_ID_LOCK_CLASS])?;
                for row in tx.query(SQL_EARLIER_CLIENT_IDS, &[&client_ids])? {
                    let stored = Stored { id: row.try_get(1)?, seq: row.try_get(2)?, earlier: Some(row.try_get(3)?) };
                    earlier.insert(row.try_get(0)?, stored);
                }
            }
            let is_new = |m: &NewMessage| m.client_msg_id.is_none_or(|id| !earlier.contains_key(&id.to_string()));
            let fresh: Vec<&NewMessage> = batch.iter().filter(|m| is_new(m)).collect();
            let mut ids = Vec::new();
            if !fresh.is_empty() {
                let room_ids: Vec<i64> = fresh.iter().map(|m| m.room_id).collect();
                let user_ids: Vec<i64> = fresh.iter().map(|m| m.user_id).collect();
                let nicknames: Vec<&str> = fresh.iter().map(|m| m.nickname.as_str()).collect();
                let contents: Vec<&str> = fresh.iter().map(|m| m.content.as_str()).collect();
                let times: Vec<i64> = fresh.iter().map(|m| m.created_at_ms).collect();
                let actions: Vec<bool> = fresh.iter().map(|m| m.action).collect();
                let rows = tx.query(&insert, &[&room_ids, &user_ids, &nicknames, &contents, &times, &actions])?;
                ids = rows
                    .iter()
                    .map(|row| Ok((row.try_get::<_, i64>(0)?, row.try_get::<_, i64>(1)?)))
                    .collect::<Result<Vec<_>, postgres::Error>>()?;
                if ids.len() != fresh.len() {
                    // Cannot happen (one row per array element); never commit it.
                    return Ok(Err(StoreError::Failed(format!(
                        "inserted {} rows for a batch of {}",
                        ids.len(),
                        fresh.len()
                    ))));
                }
                // The i-th smallest id belongs to the i-th message.
                ids.sort_unstable();
                let (recorded, message_ids): (Vec<String>, Vec<i64>) = fresh
                    .iter()
                    .zip(&ids)
                    .filter_map(|(m, (id, _))| Some((m.client_msg_id?.to_string(), *id)))
                    .unzip();
                if !recorded.is_empty() {
                    tx.execute(SQL_RECORD_CLIENT_IDS, &[&recorded, &message_ids])?;
                }
                let mut mentions: (Vec<String>, Vec<i64>, Vec<i64>, Vec<i64>) = Default::default();
                for (m, (id, _)) in fresh.iter().zip(&ids) {
                    for key in crate::names::mentioned_keys(&m.content) {
                        mentions.0.push(key);
                        mentions.1.push(m.room_id);
                        mentions.2.push(*id);
                        mentions.3.push(m.user_id);
                    }
                }
                if !mentions.0.is_empty() {
                    tx.execute(SQL_RECORD_MENTIONS, &[&mentions.0, &mentions.1, &mentions.2, &mentions.3])?;
                }
            }
            tx.commit()?;
            let mut fresh_ids = ids.into_iter();
            let stored = batch
                .iter()
                .map(|m| match m.client_msg_id.and_then(|id| earlier.get(&id.to_string())) {
                    Some(stored) => *stored,
                    None => {
                        let (id, seq) = fresh_ids.next().expect("one id per fresh message");
                        Stored::new(id, seq)
                    }
                })
                .collect();
            Ok(Ok(stored))
        });
        outcome?
    }

    fn messages_before(
        &mut self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        let limit = limit_of(limit);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_MESSAGES_BEFORE)?;
            conn.client.query(&statement, &[&room_id, &before, &limit])?.iter().map(message_from).collect()
        })
    }

    fn visible_messages_before(
        &mut self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        let limit = limit_of(limit);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_VISIBLE_MESSAGES_BEFORE)?;
            conn.client.query(&statement, &[&room_id, &before, &limit])?.iter().map(message_from).collect()
        })
    }

    /// Under the room's advisory lock, like a commit of messages: the
    /// room's last `seq` read here is the position the change follows, and
    /// change ids increase with commit order within the room. Not retried:
    /// a lost reply may hide a commit.
    fn change_message(&mut self, request: &ChangeRequest) -> Result<ChangeOutcome, StoreError> {
        let request = request.clone();
        self.run(false, |conn| {
            let lock = conn.prepare(SQL_LOCK_ROOMS)?;
            let mut tx = conn.client.transaction()?;
            let (room_id, id) = match request.target {
                ChangeTarget::Id(id) => match tx.query_opt(SQL_MESSAGE_ROOM, &[&id])? {
                    Some(row) => (row.try_get::<_, i64>(0)?, Some(id)),
                    None => return Ok(ChangeOutcome::NotFound),
                },
                ChangeTarget::LastOwn { room_id } => (room_id, None),
            };
            tx.execute(&lock, &[&vec![room_id], &ROOM_LOCK_CLASS])?;
            let id = match id {
                Some(id) => id,
                None => match tx.query_opt(SQL_LAST_OWN, &[&room_id, &request.user_id])? {
                    Some(row) => row.try_get(0)?,
                    None => return Ok(ChangeOutcome::NotFound),
                },
            };
            let Some(row) = tx.query_opt(SQL_CHANGE_TARGET, &[&id, &request.user_id])? else {
                return Ok(ChangeOutcome::NotFound);
            };
            let (room, author_id, nickname): (String, i64, String) = (row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
            let (deleted, owner_id, visible): (bool, Option<i64>, bool) = (row.try_get(5)?, row.try_get(6)?, row.try_get(7)?);
            if deleted || !visible {
                return Ok(ChangeOutcome::NotFound);
            }
            let owner_deletes = request.content.is_none() && owner_id == Some(request.user_id);
            if author_id != request.user_id && !owner_deletes {
                return Ok(ChangeOutcome::NotYours);
            }
            let after_seq: i64 = tx.query_one(SQL_LAST_SEQ, &[&room_id])?.try_get(0)?;
            let kind = match &request.content {
                Some(text) => {
                    tx.execute(SQL_EDIT, &[&id, text, &request.at_ms])?;
                    "edit"
                }
                None => {
                    tx.execute(SQL_ERASE, &[&id, &request.at_ms])?;
                    "delete"
                }
            };
            let change_id: i64 = tx
                .query_one(SQL_RECORD_CHANGE, &[&room_id, &id, &request.user_id, &kind, &after_seq, &request.at_ms])?
                .try_get(0)?;
            tx.commit()?;
            Ok(ChangeOutcome::Done(MessageChange {
                change_id,
                id,
                room_id,
                room,
                after_seq,
                nickname,
                by: request.by.clone(),
                content: request.content.clone(),
                at_ms: request.at_ms,
                rendered: Default::default(),
            }))
        })
    }

    fn changes_since(&mut self, room_id: i64, query: &ChangesQuery) -> Result<Vec<MessageChange>, StoreError> {
        let q = *query;
        let before_seq = q.before_seq.unwrap_or(i64::MAX);
        let limit = limit_of(q.limit);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_CHANGES_SINCE)?;
            conn.client
                .query(&statement, &[&room_id, &q.through_id, &q.after_change, &q.resume_id, &before_seq, &limit])?
                .iter()
                .map(|row| {
                    let kind: String = row.try_get(6)?;
                    Ok(MessageChange {
                        change_id: row.try_get(0)?,
                        id: row.try_get(1)?,
                        room_id,
                        room: row.try_get(2)?,
                        after_seq: row.try_get(3)?,
                        nickname: row.try_get(4)?,
                        by: row.try_get(5)?,
                        content: if kind == "edit" { Some(row.try_get(7)?) } else { None },
                        at_ms: row.try_get(8)?,
                        rendered: Default::default(),
                    })
                })
                .collect()
        })
    }

    fn messages_after(&mut self, room_id: i64, after: i64, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let limit = limit_of(limit);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_MESSAGES_AFTER)?;
            conn.client.query(&statement, &[&room_id, &after, &limit])?.iter().map(message_from).collect()
        })
    }

    fn messages_from_seq(&mut self, room_id: i64, from_seq: i64, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let limit = limit_of(limit);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_MESSAGES_FROM_SEQ)?;
            conn.client.query(&statement, &[&room_id, &from_seq, &limit])?.iter().map(message_from).collect()
        })
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.run(true, |conn| conn.client.is_valid(PING_TIMEOUT))
    }

    fn room_activity(&mut self, user_id: i64, room_ids: &[i64]) -> Result<Vec<RoomActivity>, StoreError> {
        let rooms = room_ids.to_vec();
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_ROOM_ACTIVITY)?;
            conn.client
                .query(&statement, &[&rooms, &user_id])?
                .iter()
                .map(|row| {
                    let last_seq: Option<i64> = row.try_get(2)?;
                    let read_seq: Option<i64> = row.try_get(3)?;
                    let registered = user_id > 0;
                    Ok(RoomActivity {
                        room_id: row.try_get(0)?,
                        last_id: row.try_get(1)?,
                        unread: if registered { (last_seq.unwrap_or(0) - read_seq.unwrap_or(0)).max(0) } else { 0 },
                        mentions: if registered { row.try_get(4)? } else { 0 },
                    })
                })
                .collect()
        })
    }

    fn mark_read(&mut self, user_id: i64, room_id: i64, up_to_id: i64, at_ms: i64) -> Result<MarkedRead, StoreError> {
        // Retrying is harmless: the marker only moves forward.
        let row = self.run(true, |conn| {
            let statement = conn.prepare(SQL_MARK_READ)?;
            conn.client.query_one(&statement, &[&user_id, &room_id, &up_to_id, &at_ms])
        })?;
        let get = |i: usize| row.try_get::<_, Option<i64>>(i).map_err(|e| StoreError::Failed(error_text(&e)));
        let (old_id, old_seq, new_id, new_seq) = (get(0)?, get(1)?, get(2)?, get(3)?);
        Ok(MarkedRead {
            had_marker: old_seq.is_some(),
            moved: new_seq.map_or(0, |seq| seq - old_seq.unwrap_or(0)),
            at_id: new_id.or(old_id),
        })
    }

    fn search(&mut self, room_id: i64, words: &str, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let Ok(text) = super::search::tsquery_text(words) else { return Ok(Vec::new()) };
        let limit = limit_of(limit);
        self.run(true, |conn| {
            let statement = conn.prepare(SQL_SEARCH)?;
            conn.client.query(&statement, &[&room_id, &text, &limit])?.iter().map(message_from).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Barrier, Mutex};
    use std::thread::JoinHandle;

    /// Where the tests find PostgreSQL (trust auth); override with `BD_TEST_PG`.
    fn server() -> String {
        std::env::var("BD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
    }

    fn admin() -> Result<Client, postgres::Error> {
        Client::connect(&format!("{}/postgres", server()), NoTls)
    }

    /// A fresh, empty database, dropped (with its sessions) at the end.
    struct TestDb {
        name: String,
    }

    impl TestDb {
        /// A fresh database; panics when no PostgreSQL runs here (a missing
        /// database must fail the test, not skip it: `bash .ci/run` starts one).
        fn create() -> TestDb {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let mut admin = admin().unwrap_or_else(|e| {
                panic!("no PostgreSQL at {} ({}); start it as .ci/run does", server(), error_text(&e))
            });
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
            let name = format!("bd_test_{}_{}_{}", std::process::id(), nanos, NEXT.fetch_add(1, Ordering::Relaxed));
            admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("create test database");
            TestDb { name }
        }

        fn url(&self) -> String {
            format!("{}/{}", server(), self.name)
        }

        fn open(&self) -> PostgresStore {
            PostgresStore::open(&self.url()).expect("open store")
        }

        /// Ends every session on this database, as an administrator would.
        fn terminate_sessions(&self) {
            admin()
                .unwrap()
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&self.name],
                )
                .unwrap();
        }

        fn session_count(&self) -> i64 {
            admin()
                .unwrap()
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&self.name])
                .unwrap()
                .get(0)
        }

        fn client(&self) -> Client {
            Client::connect(&self.url(), NoTls).unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if let Ok(mut admin) = admin() {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }

    fn message(room_id: i64, user_id: i64, content: &str, at: i64) -> NewMessage {
        NewMessage {
            room_id,
            room: String::new(),
            user_id,
            nickname: "Alice".into(),
            content: content.into(),
            created_at_ms: at,
            client_msg_id: None,
            action: false,
        }
    }

    fn count_messages(db: &TestDb) -> i64 {
        db.client().query_one("SELECT count(*) FROM messages", &[]).unwrap().get(0)
    }

    #[test]
    fn migrations_apply_once() {
        let db = TestDb::create();
        drop(db.open());
        let mut store = db.open();
        assert!(store.rooms().unwrap().is_empty());
        let rows = db.client().query("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version", &[]).unwrap();
        let versions: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let expected: Vec<(String, i64)> = MIGRATIONS.iter().map(|(v, _)| (v.to_string(), 1)).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn three_instances_migrate_a_fresh_database_at_once() {
        let db = TestDb::create();
        let url = db.url();
        let barrier = Arc::new(Barrier::new(3));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    PostgresStore::open(&url).map(drop)
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Ok(()));
        }
        let applied: i64 = db.client().query_one("SELECT count(*) FROM schema_migrations", &[]).unwrap().get(0);
        assert_eq!(applied, MIGRATIONS.len() as i64);
    }

    #[test]
    fn create_room_conflicts_on_an_existing_name() {
        let db = TestDb::create();
        let mut store = db.open();
        let lobby = store.create_room("lobby", 1_700_000_000_123).unwrap();
        assert_eq!(lobby.name, "lobby");
        assert_eq!(store.create_room("lobby", 1_700_000_000_999), Err(StoreError::Conflict));
        let games = store.create_room("games", 1_700_000_000_456).unwrap();
        assert!(games.id > lobby.id);
        assert_eq!(store.rooms().unwrap(), vec![lobby, games]);
    }

    #[test]
    fn upsert_user_ignores_case() {
        let db = TestDb::create();
        let mut store = db.open();
        let id = store.upsert_user("Alice", 1).unwrap();
        assert_eq!(store.upsert_user("ALICE", 2).unwrap(), id);
        assert_eq!(store.upsert_user("alice", 3).unwrap(), id);
        assert_ne!(store.upsert_user("Bob", 4).unwrap(), id);
        let row = db.client().query_one("SELECT nickname, count(*) OVER () FROM users WHERE id = $1", &[&id]).unwrap();
        assert_eq!(row.get::<_, String>(0), "alice");
        let room = store.create_room("lobby", 5).unwrap();
        store.record_join(room.id, id, 6).unwrap();
        store.record_join(room.id, id, 7).unwrap();
    }

    #[test]
    fn insert_messages_keeps_batch_order_and_pages() {
        let db = TestDb::create();
        let mut store = db.open();
        let lobby = store.create_room("lobby", 1).unwrap();
        let other = store.create_room("other", 1).unwrap();
        let alice = store.upsert_user("Alice", 1).unwrap();
        assert_eq!(store.insert_messages(&[]).unwrap(), Vec::<Stored>::new());

        let base = 1_700_000_000_000;
        let mut all = Vec::new();
        for round in 0..5 {
            let batch: Vec<NewMessage> = (0..50)
                .map(|i| {
                    let room = if i % 3 == 0 { other.id } else { lobby.id };
                    message(room, alice, &format!("m{round}-{i}"), base + round * 1000 + i)
                })
                .collect();
            let committed = store.insert_messages(&batch).unwrap();
            assert_eq!(committed.len(), batch.len());
            // Sequence numbers count each room's messages without gaps.
            for (room, first) in [(lobby.id, round * 33 + 1), (other.id, round * 17 + 1)] {
                let seqs: Vec<i64> =
                    committed.iter().zip(&batch).filter(|(_, m)| m.room_id == room).map(|(s, _)| s.seq).collect();
                assert_eq!(seqs, (first..first + seqs.len() as i64).collect::<Vec<_>>());
            }
            let ids: Vec<i64> = committed.iter().map(|s| s.id).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend in batch order: {ids:?}");
            // Each id really holds the message at its batch position.
            let mut check = db.client();
            for (id, m) in ids.iter().zip(&batch) {
                let row = check.query_one("SELECT content, room_id FROM messages WHERE id = $1", &[id]).unwrap();
                assert_eq!(row.get::<_, String>(0), m.content);
                assert_eq!(row.get::<_, i64>(1), m.room_id);
            }
            all.extend(ids.into_iter().zip(batch).filter(|(_, m)| m.room_id == lobby.id));
        }

        // Newest page, then older pages, each oldest first.
        let page = store.messages_before(lobby.id, None, 10).unwrap();
        let expect: Vec<i64> = all[all.len() - 10..].iter().map(|(id, _)| *id).collect();
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), expect);
        let last = page.last().unwrap();
        let (_, sent) = all.last().unwrap();
        assert_eq!(
            (last.room.as_str(), last.nickname.as_str(), last.content.as_str(), last.created_at_ms),
            ("lobby", "Alice", sent.content.as_str(), sent.created_at_ms)
        );
        assert_eq!(last.room_id, lobby.id);
        assert_eq!(last.user_id, alice);

        let mut seen: Vec<i64> = Vec::new();
        let mut before = None;
        loop {
            let page = store.messages_before(lobby.id, before, 7).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.windows(2).all(|w| w[0].id < w[1].id));
            assert!(page.iter().all(|m| m.room_id == lobby.id));
            before = Some(page[0].id);
            seen.splice(0..0, page.iter().map(|m| m.id));
        }
        assert_eq!(seen, all.iter().map(|(id, _)| *id).collect::<Vec<_>>());

        // Forward paging from the start.
        let mut forward: Vec<i64> = Vec::new();
        let mut after = 0;
        loop {
            let page = store.messages_after(lobby.id, after, 9).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().unwrap().id;
            forward.extend(page.iter().map(|m| m.id));
        }
        assert_eq!(forward, seen);
        assert!(store.messages_before(lobby.id, None, 0).unwrap().is_empty());
        assert!(store.messages_after(lobby.id, i64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn a_failed_batch_stores_nothing() {
        let db = TestDb::create();
        let mut store = db.open();
        let lobby = store.create_room("lobby", 1).unwrap();
        let alice = store.upsert_user("Alice", 1).unwrap();
        store.insert_messages(&[message(lobby.id, alice, "kept", 2)]).unwrap();
        // The last message names a room that does not exist.
        let batch = vec![message(lobby.id, alice, "a", 3), message(lobby.id, alice, "b", 4), message(999, alice, "c", 5)];
        assert!(matches!(store.insert_messages(&batch), Err(StoreError::Failed(_))));
        assert_eq!(count_messages(&db), 1);
        // The connection is still good.
        assert_eq!(store.insert_messages(&batch[..2]).unwrap().len(), 2);
        assert_eq!(count_messages(&db), 3);
    }

    #[test]
    fn batches_over_the_same_rooms_from_two_instances_do_not_deadlock() {
        let db = TestDb::create();
        let mut setup = db.open();
        let a = setup.create_room("a", 1).unwrap().id;
        let b = setup.create_room("b", 1).unwrap().id;
        let user = setup.upsert_user("Alice", 1).unwrap();
        let threads: Vec<JoinHandle<()>> = [(a, b), (b, a)]
            .into_iter()
            .map(|(first, second)| {
                let url = db.url();
                std::thread::spawn(move || {
                    let mut store = PostgresStore::open(&url).unwrap();
                    for i in 0..100 {
                        let batch = vec![message(first, user, "x", i), message(second, user, "y", i)];
                        store.insert_messages(&batch).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(count_messages(&db), 400);
    }

    #[test]
    fn terminated_sessions_are_replaced() {
        let db = TestDb::create();
        let mut store = db.open();
        let lobby = store.create_room("lobby", 1).unwrap();
        let alice = store.upsert_user("Alice", 1).unwrap();

        // Killed while idle, used at once: may fail (Unavailable), never panics.
        db.terminate_sessions();
        match store.insert_messages(&[message(lobby.id, alice, "maybe", 2)]) {
            Ok(ids) => assert_eq!(ids.len(), 1),
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
        let before = count_messages(&db);
        assert_eq!(store.insert_messages(&[message(lobby.id, alice, "after", 3)]).unwrap().len(), 1);
        assert_eq!(count_messages(&db), before + 1);

        // Killed while idle, and the store is used again later: it checks
        // the idle session before sending anything, so even a write succeeds.
        for call in 0..4 {
            db.terminate_sessions();
            let deadline = Instant::now() + Duration::from_secs(5);
            while db.session_count() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(IDLE_CHECK_AFTER);
            match call {
                0 => assert_eq!(store.insert_messages(&[message(lobby.id, alice, "x", 4)]).unwrap().len(), 1),
                1 => assert_eq!(store.rooms().unwrap().len(), 1),
                2 => assert_eq!(store.upsert_user("alice", 5).unwrap(), alice),
                _ => store.ping().unwrap(),
            }
        }

        // Killed while idle, then reads: retried on a fresh connection.
        db.terminate_sessions();
        let rooms = store.rooms();
        assert!(matches!(rooms, Ok(_) | Err(StoreError::Unavailable(_))), "{rooms:?}");
        assert_eq!(store.messages_before(lobby.id, None, 10).unwrap().len() as i64, count_messages(&db));
    }

    /// A TCP proxy in front of PostgreSQL that can be pulled out like a plug.
    struct Proxy {
        port: u16,
        stop: Arc<AtomicBool>,
        sockets: Arc<Mutex<Vec<TcpStream>>>,
        accept: Option<JoinHandle<()>>,
    }

    impl Proxy {
        fn start(port: u16) -> Proxy {
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind proxy");
            let port = listener.local_addr().unwrap().port();
            let upstream_addr = {
                let config: Config = server().parse().unwrap();
                target_of(&config).split('/').next().unwrap().to_string()
            };
            let stop = Arc::new(AtomicBool::new(false));
            let sockets = Arc::new(Mutex::new(Vec::new()));
            let accept = {
                let (stop, sockets) = (stop.clone(), sockets.clone());
                std::thread::spawn(move || {
                    for client in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(client) = client else { continue };
                        let Ok(upstream) = TcpStream::connect(&upstream_addr) else { continue };
                        let mut list = sockets.lock().unwrap();
                        list.push(client.try_clone().unwrap());
                        list.push(upstream.try_clone().unwrap());
                        for (mut from, mut to) in
                            [(client.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, client)]
                        {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Both);
                                let _ = from.shutdown(Shutdown::Both);
                            });
                        }
                    }
                })
            };
            Proxy { port, stop, sockets, accept: Some(accept) }
        }

        /// Closes the listener and every connection: the "server" is down.
        fn stop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Ok(mut wake) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = wake.write_all(b"");
            }
            if let Some(accept) = self.accept.take() {
                accept.join().unwrap();
            }
            for socket in self.sockets.lock().unwrap().drain(..) {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.stop();
        }
    }

    #[test]
    fn a_server_outage_is_reported_promptly_and_survived() {
        let db = TestDb::create();
        let mut proxy = Proxy::start(0);
        let port = proxy.port;
        let url = format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/{}", db.name);
        let mut store = PostgresStore::open(&url).unwrap();
        assert_eq!(store.describe(), format!("PostgreSQL at 127.0.0.1:{port}/{}", db.name));
        let lobby = store.create_room("lobby", 1).unwrap();
        let alice = store.upsert_user("Alice", 1).unwrap();
        store.insert_messages(&[message(lobby.id, alice, "before", 2)]).unwrap();

        proxy.stop();
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        let batch = [message(lobby.id, alice, "during", 3), message(lobby.id, alice, "during", 4)];
        for _ in 0..3 {
            match store.insert_messages(&batch) {
                Err(StoreError::Unavailable(why)) => assert!(!why.contains("s3cret"), "{why}"),
                other => panic!("expected Unavailable, got {other:?}"),
            }
            assert!(matches!(store.rooms(), Err(StoreError::Unavailable(_))));
            assert!(matches!(store.ping(), Err(StoreError::Unavailable(_))));
        }
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_eq!(count_messages(&db), 1, "nothing of a failed batch is stored");

        // Back up on the same port: the store finds it by itself.
        let _proxy = Proxy::start(port);
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.ping().is_err() {
            assert!(Instant::now() < deadline, "store did not reconnect");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(store.insert_messages(&batch).unwrap().len(), 2);
        assert_eq!(store.messages_before(lobby.id, None, 10).unwrap().len(), 3);
    }

    #[test]
    fn an_unreachable_server_fails_fast_without_the_password() {
        let started = Instant::now();
        let error = PostgresStore::open("postgres://someone:s3cret-pw@127.0.0.1:1/nowhere").err().unwrap();
        assert!(started.elapsed() < Duration::from_secs(6));
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("127.0.0.1:1/nowhere") && !text.contains("s3cret"), "{text}");
        eprintln!("unreachable: {text}");

        let error = PostgresStore::open("postgres://someone:s3cret-pw@127.0.0.1:notaport/x").err().unwrap();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        eprintln!("bad url: {error}");

        let db = TestDb::create();
        let url = format!("{}/{}_missing", server(), db.name);
        let error = PostgresStore::open(&url).err().unwrap();
        assert!(error.to_string().contains("_missing"), "{error}");
    }

    #[test]
    fn times_round_trip_exactly() {
        let db = TestDb::create();
        let mut store = db.open();
        let times = [0, 1, 999, 1_700_000_000_001, 1_712_345_678_999, 4_102_444_800_123, -1];
        let room = store.create_room("lobby", times[3]).unwrap();
        assert_eq!(store.rooms().unwrap()[0].created_at_ms, times[3]);
        let user = store.upsert_user("Alice", 1).unwrap();
        let batch: Vec<NewMessage> = times.iter().map(|t| message(room.id, user, "t", *t)).collect();
        store.insert_messages(&batch).unwrap();
        let got: Vec<i64> = store.messages_after(room.id, 0, 100).unwrap().iter().map(|m| m.created_at_ms).collect();
        assert_eq!(got, times);
    }

    /// Commit latency of one group commit, for the report (run with --nocapture).
    #[test]
    fn group_commit_latency() {
        let db = TestDb::create();
        let mut store = db.open();
        let room = store.create_room("lobby", 1).unwrap();
        let user = store.upsert_user("Alice", 1).unwrap();
        for size in [1usize, 10, 100] {
            let batch: Vec<NewMessage> =
                (0..size).map(|i| message(room.id, user, &"x".repeat(40 + i % 20), i as i64)).collect();
            store.insert_messages(&batch).unwrap(); // warm up (prepares)
            let mut samples: Vec<Duration> = (0..200)
                .map(|_| {
                    let started = Instant::now();
                    store.insert_messages(&batch).unwrap();
                    started.elapsed()
                })
                .collect();
            samples.sort();
            let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
            println!(
                "group commit of {size:>3} messages: median {:?}, p90 {:?}, mean {:?} ({:.0} messages/s at the median)",
                samples[samples.len() / 2],
                samples[samples.len() * 9 / 10],
                mean,
                size as f64 / samples[samples.len() / 2].as_secs_f64()
            );
        }
    }
}
