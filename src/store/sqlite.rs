//! The embedded store: one SQLite file, `DATA_DIR/baby-discord.db`.
//!
//! WAL journal with `synchronous=FULL`: a commit is on disk before the
//! storage thread reports it, so an acknowledged message survives `kill -9`
//! and power loss alike; group commit spreads the fsync over a whole batch.

use std::path::Path;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use super::{
    Account, ChangeOutcome, ChangeRequest, ChangeTarget, ChangesQuery, DmConversation, DmRecord, MarkedRead, NewMessage,
    PrivateRoomRecord, RoomActivity, RoomRecord, Store, StoreError, Stored,
};
use crate::event::{now_ms, ChatMessage, MessageChange};

/// Migrations in the order they apply; names are recorded in `schema_migrations`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_initial", include_str!("../../sql/sqlite/0001_initial.sql")),
    ("0002_room_sequence", include_str!("../../sql/sqlite/0002_room_sequence.sql")),
    ("0003_client_message_ids", include_str!("../../sql/sqlite/0003_client_message_ids.sql")),
    ("0004_accounts", include_str!("../../sql/sqlite/0004_accounts.sql")),
    ("0005_direct_messages", include_str!("../../sql/sqlite/0005_direct_messages.sql")),
    ("0006_private_rooms", include_str!("../../sql/sqlite/0006_private_rooms.sql")),
    ("0007_actions", include_str!("../../sql/sqlite/0007_actions.sql")),
    ("0008_edits", include_str!("../../sql/sqlite/0008_edits.sql")),
    ("0009_read_markers_search", include_str!("../../sql/sqlite/0009_read_markers_search.sql")),
];

pub struct SqliteStore {
    conn: Connection,
    path: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the database under `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Failed(e.to_string()))?;
        let path = data_dir.join("baby-discord.db");
        let conn = Connection::open(&path).map_err(failed)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(failed)?;
        let mut store = SqliteStore { conn, path: path.display().to_string() };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(failed)?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
            [],
        )
        .map_err(failed)?;
        for (version, sql) in MIGRATIONS {
            let done: Option<String> = tx
                .query_row("SELECT version FROM schema_migrations WHERE version = ?1", [version], |r| r.get(0))
                .optional()
                .map_err(failed)?;
            if done.is_none() {
                log::info!("applying migration {version}");
                tx.execute_batch(sql).map_err(failed)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    params![version, now_ms()],
                )
                .map_err(failed)?;
            }
        }
        tx.commit().map_err(failed)
    }

    /// Runs `write` as a commit that is not synced to disk by itself:
    /// bookkeeping (a user's row and last-seen time, room memberships) that
    /// a power cut may roll back by a moment without harm. A process crash
    /// loses nothing (the write-ahead log is written before the commit
    /// returns), and since the log is sequential, the next synced commit
    /// (any message) makes these durable too: no message is ever on disk
    /// without the user row it refers to. Syncing each of them made a
    /// storm of 10,000 logins queue every message behind ~20,000 fsyncs.
    fn unsynced<T>(&mut self, write: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.conn.execute_batch("PRAGMA synchronous = NORMAL").map_err(failed)?;
        let result = write(&self.conn);
        self.conn.execute_batch("PRAGMA synchronous = FULL").map_err(failed)?;
        result
    }

    fn query_messages(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<ChatMessage>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(failed)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(ChatMessage {
                    id: r.get(0)?,
                    room_id: r.get(1)?,
                    room: r.get(2)?,
                    user_id: r.get(3)?,
                    nickname: r.get(4)?,
                    content: r.get(5)?,
                    created_at_ms: r.get(6)?,
                    seq: r.get(7)?,
                    edited_at_ms: r.get(8)?,
                    deleted: r.get::<_, Option<i64>>(9)?.is_some(),
                    action: r.get(10)?,
                    rendered: Default::default(),
                })
            })
            .map_err(failed)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(failed)
    }
}

/// Records the `@mentions` of registered users (not the sender) in the
/// newly inserted messages of a batch, in the batch's transaction.
fn record_mentions(tx: &Connection, batch: &[NewMessage], stored: &[Stored]) -> Result<(), StoreError> {
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO mentions (user_id, room_id, message_id)
             SELECT id, ?2, ?3 FROM users WHERE nickname_key = ?1 AND password_hash IS NOT NULL AND id <> ?4
             ON CONFLICT DO NOTHING",
        )
        .map_err(failed)?;
    for (m, s) in batch.iter().zip(stored).filter(|(_, s)| s.earlier.is_none()) {
        for key in crate::names::mentioned_keys(&m.content) {
            insert.execute(params![key, m.room_id, s.id, m.user_id]).map_err(failed)?;
        }
    }
    Ok(())
}

/// Whether an FTS5 `MATCH` expression is accepted, tried on an in-memory
/// FTS5 table (for tests and the `search_query` fuzz target).
pub fn fts5_accepts(query: &str) -> Result<(), String> {
    let conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
    conn.execute_batch("CREATE VIRTUAL TABLE t USING fts5(content); INSERT INTO t (content) VALUES ('hello world');")
        .map_err(|e| e.to_string())?;
    let mut stmt = conn.prepare("SELECT count(*) FROM t WHERE t MATCH ?1").map_err(|e| e.to_string())?;
    stmt.query_row([query], |r| r.get::<_, i64>(0)).map(drop).map_err(|e| e.to_string())
}

const DM_COLUMNS: &str = "id, sender_id, sender, recipient_id, recipient, content, created_at FROM direct_messages";

fn dm_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<DmRecord> {
    Ok(DmRecord {
        id: r.get(0)?,
        sender_id: r.get(1)?,
        sender: r.get(2)?,
        recipient_id: r.get(3)?,
        recipient: r.get(4)?,
        content: r.get(5)?,
        created_at_ms: r.get(6)?,
    })
}

const MESSAGE_COLUMNS: &str = "m.id, m.room_id, r.name, m.user_id, m.nickname, m.content, m.created_at, m.seq, m.edited_at, m.deleted_at,
     m.action FROM messages m JOIN rooms r ON r.id = m.room_id";

/// The message an edit or delete is about, with what decides who may
/// change it: `?2` is the user asking (for the private-room check).
const CHANGE_TARGET_COLUMNS: &str = "m.id, m.room_id, r.name, m.user_id, m.nickname, m.deleted_at IS NOT NULL, r.owner_id,
        (r.owner_id IS NULL OR EXISTS (SELECT 1 FROM room_access a WHERE a.room_id = r.id AND a.user_id = ?2))
     FROM messages m JOIN rooms r ON r.id = m.room_id";

/// The target of a change as read by [`CHANGE_TARGET_COLUMNS`].
struct Target {
    id: i64,
    room_id: i64,
    room: String,
    author_id: i64,
    nickname: String,
    deleted: bool,
    owner_id: Option<i64>,
    visible: bool,
}

fn failed(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull | ErrorCode::CannotOpen) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Failed(e.to_string()),
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("SQLite at {}", self.path)
    }

    fn rooms(&mut self) -> Result<Vec<RoomRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT id, name, created_at FROM rooms ORDER BY id").map_err(failed)?;
        let rows = stmt
            .query_map([], |r| Ok(RoomRecord { id: r.get(0)?, name: r.get(1)?, created_at_ms: r.get(2)? }))
            .map_err(failed)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(failed)
    }

    fn create_room(&mut self, name: &str, at_ms: i64) -> Result<RoomRecord, StoreError> {
        self.conn
            .prepare_cached("INSERT INTO rooms (name, created_at) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![name, at_ms]))
            .map_err(failed)?;
        Ok(RoomRecord { id: self.conn.last_insert_rowid(), name: name.to_string(), created_at_ms: at_ms })
    }

    fn upsert_user(&mut self, nickname: &str, at_ms: i64) -> Result<i64, StoreError> {
        self.unsynced(|conn| {
            conn.prepare_cached(
                "INSERT INTO users (nickname, nickname_key, created_at, last_seen_at) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (nickname_key) DO UPDATE SET nickname = excluded.nickname, last_seen_at = excluded.last_seen_at
                 RETURNING id",
            )
            .and_then(|mut s| s.query_row(params![nickname, nickname.to_ascii_lowercase(), at_ms], |r| r.get(0)))
            .map_err(failed)
        })
    }

    fn upsert_guest(&mut self, nickname: &str, at_ms: i64) -> Result<Option<i64>, StoreError> {
        self.unsynced(|conn| {
            conn.prepare_cached(
                "INSERT INTO users (nickname, nickname_key, created_at, last_seen_at) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (nickname_key) DO UPDATE SET nickname = excluded.nickname, last_seen_at = excluded.last_seen_at
                 WHERE users.password_hash IS NULL
                 RETURNING id",
            )
            .and_then(|mut s| s.query_row(params![nickname, nickname.to_ascii_lowercase(), at_ms], |r| r.get(0)).optional())
            .map_err(failed)
        })
    }

    fn account(&mut self, nickname: &str) -> Result<Option<Account>, StoreError> {
        self.conn
            .prepare_cached("SELECT id, nickname, password_hash FROM users WHERE nickname_key = ?1 AND password_hash IS NOT NULL")
            .and_then(|mut s| {
                s.query_row([nickname.to_ascii_lowercase()], |r| {
                    Ok(Account { user_id: r.get(0)?, nickname: r.get(1)?, password_hash: r.get(2)? })
                })
                .optional()
            })
            .map_err(failed)
    }

    fn account_by_id(&mut self, user_id: i64) -> Result<Option<Account>, StoreError> {
        self.conn
            .prepare_cached("SELECT id, nickname, password_hash FROM users WHERE id = ?1 AND password_hash IS NOT NULL")
            .and_then(|mut s| {
                s.query_row([user_id], |r| Ok(Account { user_id: r.get(0)?, nickname: r.get(1)?, password_hash: r.get(2)? }))
                    .optional()
            })
            .map_err(failed)
    }

    fn register(&mut self, user_id: i64, password_hash: &str, at_ms: i64) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("UPDATE users SET password_hash = ?2, registered_at = ?3 WHERE id = ?1 AND password_hash IS NULL")
            .and_then(|mut s| s.execute(params![user_id, password_hash, at_ms]))
            .map(|n| n == 1)
            .map_err(failed)
    }

    fn set_password(&mut self, user_id: i64, password_hash: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1 AND password_hash IS NOT NULL")
            .and_then(|mut s| s.execute(params![user_id, password_hash]))
            .map(drop)
            .map_err(failed)
    }

    fn save_session(&mut self, token_hash: &str, user_id: i64, at_ms: i64, expires_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO auth_sessions (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![token_hash, user_id, at_ms, expires_ms]))
            .map(drop)
            .map_err(failed)
    }

    fn session_account(&mut self, token_hash: &str, now_ms: i64) -> Result<Option<Account>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT u.id, u.nickname, u.password_hash FROM auth_sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = ?1 AND s.expires_at > ?2 AND u.password_hash IS NOT NULL",
            )
            .and_then(|mut s| {
                s.query_row(params![token_hash, now_ms], |r| {
                    Ok(Account { user_id: r.get(0)?, nickname: r.get(1)?, password_hash: r.get(2)? })
                })
                .optional()
            })
            .map_err(failed)
    }

    fn valid_sessions(&mut self, token_hashes: &[String], now_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM auth_sessions WHERE token_hash = ?1 AND expires_at > ?2")
            .map_err(failed)?;
        let mut valid = Vec::new();
        for hash in token_hashes {
            if stmt.exists(params![hash, now_ms]).map_err(failed)? {
                valid.push(hash.clone());
            }
        }
        Ok(valid)
    }

    fn delete_session(&mut self, token_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM auth_sessions WHERE token_hash = ?1 OR expires_at <= ?2")
            .and_then(|mut s| s.execute(params![token_hash, now_ms]))
            .map(drop)
            .map_err(failed)
    }

    fn create_private_room(&mut self, name: &str, owner_id: i64, at_ms: i64) -> Result<RoomRecord, StoreError> {
        let tx = self.conn.transaction().map_err(failed)?;
        tx.execute("INSERT INTO rooms (name, created_at, owner_id) VALUES (?1, ?2, ?3)", params![name, at_ms, owner_id])
            .map_err(failed)?;
        let id = tx.last_insert_rowid();
        tx.execute("INSERT INTO room_access (room_id, user_id, invited_at) VALUES (?1, ?2, ?3)", params![id, owner_id, at_ms])
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        Ok(RoomRecord { id, name: name.to_string(), created_at_ms: at_ms })
    }

    fn private_rooms(&mut self) -> Result<Vec<PrivateRoomRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.id, r.name, r.owner_id, u.nickname,
                        COALESCE((SELECT group_concat(a.user_id) FROM room_access a WHERE a.room_id = r.id), '')
                 FROM rooms r JOIN users u ON u.id = r.owner_id WHERE r.owner_id IS NOT NULL ORDER BY r.id",
            )
            .map_err(failed)?;
        let rows = stmt
            .query_map([], |r| {
                let allowed: String = r.get(4)?;
                Ok(PrivateRoomRecord {
                    room_id: r.get(0)?,
                    name: r.get(1)?,
                    owner_id: r.get(2)?,
                    owner: r.get(3)?,
                    allowed: allowed.split(',').filter_map(|id| id.parse().ok()).collect(),
                })
            })
            .map_err(failed)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(failed)
    }

    fn grant_room(&mut self, room_id: i64, user_id: i64, at_ms: i64) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("INSERT INTO room_access (room_id, user_id, invited_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")
            .and_then(|mut s| s.execute(params![room_id, user_id, at_ms]))
            .map(|n| n == 1)
            .map_err(failed)
    }

    fn revoke_room(&mut self, room_id: i64, user_id: i64) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("DELETE FROM room_access WHERE room_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.execute(params![room_id, user_id]))
            .map(|n| n == 1)
            .map_err(failed)
    }

    fn insert_dm(&mut self, sender_id: i64, sender: &str, recipient: &str, content: &str, at_ms: i64)
        -> Result<Option<DmRecord>, StoreError> {
        let Some(account) = self.account(recipient)? else { return Ok(None) };
        let id = self
            .conn
            .prepare_cached(
                "INSERT INTO direct_messages (sender_id, recipient_id, sender, recipient, content, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            )
            .and_then(|mut s| {
                s.query_row(params![sender_id, account.user_id, sender, account.nickname, content, at_ms], |r| r.get(0))
            })
            .map_err(failed)?;
        Ok(Some(DmRecord {
            id,
            sender_id,
            sender: sender.to_string(),
            recipient_id: account.user_id,
            recipient: account.nickname,
            content: content.to_string(),
            created_at_ms: at_ms,
        }))
    }

    fn mark_dms_read(&mut self, recipient_id: i64, ids: &[i64], at_ms: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(failed)?;
        {
            let mut update = tx
                .prepare_cached("UPDATE direct_messages SET read_at = ?3 WHERE id = ?1 AND recipient_id = ?2 AND read_at IS NULL")
                .map_err(failed)?;
            for id in ids {
                update.execute(params![id, recipient_id, at_ms]).map_err(failed)?;
            }
        }
        tx.commit().map_err(failed)
    }

    fn unread_dms(&mut self, recipient_id: i64, limit: usize) -> Result<Vec<DmRecord>, StoreError> {
        let sql = format!("SELECT {DM_COLUMNS} WHERE recipient_id = ?1 AND read_at IS NULL ORDER BY id LIMIT ?2");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(failed)?;
        let rows = stmt.query_map(params![recipient_id, limit as i64], dm_from).map_err(failed)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(failed)
    }

    fn dm_conversations(&mut self, user_id: i64) -> Result<Vec<DmConversation>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT CASE WHEN d.sender_id = ?1 THEN d.recipient ELSE d.sender END,
                        c.last_id, d.created_at,
                        (SELECT COUNT(*) FROM direct_messages u
                          WHERE u.recipient_id = ?1 AND u.sender_id = c.other AND u.read_at IS NULL)
                 FROM (SELECT CASE WHEN sender_id = ?1 THEN recipient_id ELSE sender_id END AS other, MAX(id) AS last_id
                       FROM direct_messages WHERE sender_id = ?1 OR recipient_id = ?1 GROUP BY other) c
                 JOIN direct_messages d ON d.id = c.last_id
                 ORDER BY c.last_id DESC",
            )
            .map_err(failed)?;
        let rows = stmt
            .query_map([user_id], |r| Ok(DmConversation { with: r.get(0)?, last_id: r.get(1)?, last_at_ms: r.get(2)?, unread: r.get(3)? }))
            .map_err(failed)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(failed)
    }

    fn dm_history(&mut self, user_id: i64, other_id: i64, before: Option<i64>, limit: usize)
        -> Result<Vec<DmRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {DM_COLUMNS}
               WHERE ((sender_id = ?1 AND recipient_id = ?2) OR (sender_id = ?2 AND recipient_id = ?1)) AND id < ?3
               ORDER BY id DESC LIMIT ?4) ORDER BY id"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(failed)?;
        let rows = stmt
            .query_map(params![user_id, other_id, before.unwrap_or(i64::MAX), limit as i64], dm_from)
            .map_err(failed)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(failed)
    }

    fn record_join(&mut self, room_id: i64, user_id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.unsynced(|conn| {
            conn.prepare_cached(
                "INSERT INTO room_members (room_id, user_id, joined_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room_id, user_id) DO UPDATE SET joined_at = excluded.joined_at",
            )
            .and_then(|mut s| s.execute(params![room_id, user_id, at_ms]))
            .map(drop)
            .map_err(failed)
        })
    }

    fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<Vec<Stored>, StoreError> {
        let tx = self.conn.transaction().map_err(failed)?;
        let mut ids = Vec::with_capacity(batch.len());
        {
            let mut earlier = tx
                .prepare_cached(
                    "SELECT m.id, m.seq, m.created_at FROM client_messages c JOIN messages m ON m.id = c.message_id
                     WHERE c.client_msg_id = ?1",
                )
                .map_err(failed)?;
            let mut record = tx
                .prepare_cached("INSERT INTO client_messages (client_msg_id, message_id) VALUES (?1, ?2)")
                .map_err(failed)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO messages (room_id, user_id, nickname, content, created_at, seq, action)
                     VALUES (?1, ?2, ?3, ?4, ?5,
                             (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE room_id = ?1), ?6)
                     RETURNING id, seq",
                )
                .map_err(failed)?;
            for m in batch {
                let client_id = m.client_msg_id.map(|id| id.to_string());
                if let Some(client_id) = &client_id {
                    let found = earlier
                        .query_row(params![client_id], |r| {
                            Ok(Stored { id: r.get(0)?, seq: r.get(1)?, earlier: Some(r.get(2)?) })
                        })
                        .optional()
                        .map_err(failed)?;
                    if let Some(stored) = found {
                        ids.push(stored);
                        continue;
                    }
                }
                let (id, seq) = insert
                    .query_row(params![m.room_id, m.user_id, m.nickname, m.content, m.created_at_ms, m.action], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(failed)?;
                if let Some(client_id) = &client_id {
                    record.execute(params![client_id, id]).map_err(failed)?;
                }
                ids.push(Stored::new(id, seq));
            }
        }
        record_mentions(&tx, batch, &ids)?;
        tx.commit().map_err(failed)?;
        Ok(ids)
    }

    fn messages_before(
        &mut self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {MESSAGE_COLUMNS} WHERE m.room_id = ?1 AND m.id < ?2 ORDER BY m.id DESC LIMIT ?3) ORDER BY 1"
        );
        self.query_messages(&sql, params![room_id, before.unwrap_or(i64::MAX), limit as i64])
    }

    fn visible_messages_before(
        &mut self,
        room_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {MESSAGE_COLUMNS} WHERE m.room_id = ?1 AND m.id < ?2 AND m.deleted_at IS NULL
              ORDER BY m.id DESC LIMIT ?3) ORDER BY 1"
        );
        self.query_messages(&sql, params![room_id, before.unwrap_or(i64::MAX), limit as i64])
    }

    fn change_message(&mut self, request: &ChangeRequest) -> Result<ChangeOutcome, StoreError> {
        // IMMEDIATE: the write lock is taken before the room's last `seq`
        // is read, so no commit can slip in between.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
        let read = |r: &rusqlite::Row<'_>| {
            Ok(Target {
                id: r.get(0)?,
                room_id: r.get(1)?,
                room: r.get(2)?,
                author_id: r.get(3)?,
                nickname: r.get(4)?,
                deleted: r.get(5)?,
                owner_id: r.get(6)?,
                visible: r.get(7)?,
            })
        };
        let target = match request.target {
            ChangeTarget::Id(id) => tx
                .prepare_cached(&format!("SELECT {CHANGE_TARGET_COLUMNS} WHERE m.id = ?1"))
                .and_then(|mut s| s.query_row(params![id, request.user_id], read).optional()),
            ChangeTarget::LastOwn { room_id } => tx
                .prepare_cached(&format!(
                    "SELECT {CHANGE_TARGET_COLUMNS}
                     WHERE m.room_id = ?1 AND m.user_id = ?2 AND m.deleted_at IS NULL ORDER BY m.id DESC LIMIT 1"
                ))
                .and_then(|mut s| s.query_row(params![room_id, request.user_id], read).optional()),
        }
        .map_err(failed)?;
        let Some(target) = target.filter(|t| !t.deleted && t.visible) else { return Ok(ChangeOutcome::NotFound) };
        let owner_deletes = request.content.is_none() && target.owner_id == Some(request.user_id);
        if target.author_id != request.user_id && !owner_deletes {
            return Ok(ChangeOutcome::NotYours);
        }
        let after_seq: i64 = tx
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_id = ?1", [target.room_id], |r| r.get(0))
            .map_err(failed)?;
        match &request.content {
            Some(text) => tx.execute(
                "UPDATE messages SET content = ?2, edited_at = ?3 WHERE id = ?1",
                params![target.id, text, request.at_ms],
            ),
            None => tx.execute(
                "UPDATE messages SET content = '', deleted_at = ?2 WHERE id = ?1",
                params![target.id, request.at_ms],
            ),
        }
        .map_err(failed)?;
        let kind = if request.content.is_some() { "edit" } else { "delete" };
        let change_id: i64 = tx
            .query_row(
                "INSERT INTO message_changes (room_id, message_id, user_id, kind, after_seq, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                params![target.room_id, target.id, request.user_id, kind, after_seq, request.at_ms],
                |r| r.get(0),
            )
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        Ok(ChangeOutcome::Done(MessageChange {
            change_id,
            id: target.id,
            room_id: target.room_id,
            room: target.room,
            after_seq,
            nickname: target.nickname,
            by: request.by.clone(),
            content: request.content.clone(),
            at_ms: request.at_ms,
            rendered: Default::default(),
        }))
    }

    fn changes_since(&mut self, room_id: i64, query: &ChangesQuery) -> Result<Vec<MessageChange>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT c.id, c.message_id, r.name, c.after_seq, m.nickname, u.nickname, c.kind, m.content,
                        CASE WHEN c.kind = 'edit' THEN m.edited_at ELSE c.created_at END
                 FROM message_changes c JOIN messages m ON m.id = c.message_id
                      JOIN rooms r ON r.id = c.room_id JOIN users u ON u.id = c.user_id
                 WHERE c.room_id = ?1 AND c.message_id <= ?2 AND c.id > ?3
                   AND c.after_seq >= (SELECT seq FROM messages WHERE id = ?4 AND room_id = ?1)
                   AND c.after_seq < ?5
                   AND (c.kind = 'delete' OR m.deleted_at IS NULL)
                 ORDER BY c.id LIMIT ?6",
            )
            .map_err(failed)?;
        let rows = stmt
            .query_map(
                params![
                    room_id,
                    query.through_id,
                    query.after_change,
                    query.resume_id,
                    query.before_seq.unwrap_or(i64::MAX),
                    query.limit as i64
                ],
                |r| {
                    let kind: String = r.get(6)?;
                    Ok(MessageChange {
                        change_id: r.get(0)?,
                        id: r.get(1)?,
                        room_id,
                        room: r.get(2)?,
                        after_seq: r.get(3)?,
                        nickname: r.get(4)?,
                        by: r.get(5)?,
                        content: if kind == "edit" { Some(r.get(7)?) } else { None },
                        at_ms: r.get(8)?,
                        rendered: Default::default(),
                    })
                },
            )
            .map_err(failed)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(failed)
    }

    fn messages_after(&mut self, room_id: i64, after: i64, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} WHERE m.room_id = ?1 AND m.id > ?2 AND m.deleted_at IS NULL ORDER BY m.id LIMIT ?3"
        );
        self.query_messages(&sql, params![room_id, after, limit as i64])
    }

    fn messages_from_seq(&mut self, room_id: i64, from_seq: i64, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.room_id = ?1 AND m.seq >= ?2 ORDER BY m.seq LIMIT ?3");
        self.query_messages(&sql, params![room_id, from_seq, limit as i64])
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.conn.query_row("SELECT 1", [], |_| Ok(())).map_err(failed)
    }

    fn room_activity(&mut self, user_id: i64, room_ids: &[i64]) -> Result<Vec<RoomActivity>, StoreError> {
        let mut last = self
            .conn
            .prepare_cached("SELECT id, seq FROM messages WHERE room_id = ?1 ORDER BY seq DESC LIMIT 1")
            .map_err(failed)?;
        let mut marker = self
            .conn
            .prepare_cached("SELECT message_id, seq FROM read_markers WHERE user_id = ?1 AND room_id = ?2")
            .map_err(failed)?;
        let mut mentions = self
            .conn
            .prepare_cached("SELECT count(*) FROM mentions WHERE user_id = ?1 AND room_id = ?2 AND message_id > ?3")
            .map_err(failed)?;
        let mut activity = Vec::with_capacity(room_ids.len());
        for &room_id in room_ids {
            let newest: Option<(i64, i64)> =
                last.query_row([room_id], |r| Ok((r.get(0)?, r.get(1)?))).optional().map_err(failed)?;
            let mut row = RoomActivity { room_id, last_id: newest.map(|(id, _)| id), ..Default::default() };
            if user_id > 0 {
                let (read_id, read_seq): (i64, i64) = marker
                    .query_row([user_id, room_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(failed)?
                    .unwrap_or((0, 0));
                row.unread = newest.map_or(0, |(_, seq)| (seq - read_seq).max(0));
                row.mentions = mentions.query_row([user_id, room_id, read_id], |r| r.get(0)).map_err(failed)?;
            }
            activity.push(row);
        }
        Ok(activity)
    }

    fn mark_read(&mut self, user_id: i64, room_id: i64, up_to_id: i64, at_ms: i64) -> Result<MarkedRead, StoreError> {
        let tx = self.conn.transaction().map_err(failed)?;
        let target: Option<(i64, i64)> = tx
            .prepare_cached("SELECT id, seq FROM messages WHERE room_id = ?1 AND id <= ?2 ORDER BY id DESC LIMIT 1")
            .and_then(|mut s| s.query_row([room_id, up_to_id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(failed)?;
        let old: Option<(i64, i64)> = tx
            .prepare_cached("SELECT message_id, seq FROM read_markers WHERE user_id = ?1 AND room_id = ?2")
            .and_then(|mut s| s.query_row([user_id, room_id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(failed)?;
        let old_seq = old.map_or(0, |(_, seq)| seq);
        let outcome = match target {
            Some((id, seq)) if seq > old_seq => {
                tx.prepare_cached(
                    "INSERT INTO read_markers (user_id, room_id, message_id, seq, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (user_id, room_id) DO UPDATE
                     SET message_id = excluded.message_id, seq = excluded.seq, updated_at = excluded.updated_at
                     WHERE excluded.seq > read_markers.seq",
                )
                .and_then(|mut s| s.execute(params![user_id, room_id, id, seq, at_ms]))
                .map_err(failed)?;
                MarkedRead { had_marker: old.is_some(), moved: seq - old_seq, at_id: Some(id) }
            }
            _ => MarkedRead { had_marker: old.is_some(), moved: 0, at_id: old.map(|(id, _)| id) },
        };
        tx.commit().map_err(failed)?;
        Ok(outcome)
    }

    fn search(&mut self, room_id: i64, words: &str, limit: usize) -> Result<Vec<ChatMessage>, StoreError> {
        let Ok(query) = super::search::fts5_query(words) else { return Ok(Vec::new()) };
        // FTS5 walks its matches newest first (rowid = message id) and
        // stops once `limit` of them are in the room.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} JOIN messages_fts ON messages_fts.rowid = m.id
             WHERE messages_fts MATCH ?1 AND m.room_id = ?2 AND m.content <> ''
             ORDER BY messages_fts.rowid DESC LIMIT ?3"
        );
        self.query_messages(&sql, params![query, room_id, limit as i64])
    }
}
