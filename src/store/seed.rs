//! `baby-discord seed-unread`: fills the configured store with a large
//! history for measuring `GET /api/rooms` (unread counts and mentions) and
//! search, through the same [`Store`] calls the server makes, so mentions
//! and the full-text index are recorded exactly as in service.
//!
//! It registers one account (`--user`, `--password`), creates `--rooms`
//! rooms (`bench-000`, `bench-001`…), and stores `--messages` messages
//! round-robin across them, one in every 47 mentioning the account. Half
//! way through, the account's read marker is moved to the newest message of
//! every room, so each room ends with about half its messages unread.

use std::time::Instant;

use super::{NewMessage, Store, StoreError};
use crate::accounts::{Hasher, Secret};
use crate::event::now_ms;

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub rooms: usize,
    pub messages: usize,
    pub user: String,
    pub password: String,
}

impl Default for SeedPlan {
    fn default() -> SeedPlan {
        SeedPlan { rooms: 100, messages: 1_000_000, user: "bench".into(), password: "benchpassword".into() }
    }
}

impl SeedPlan {
    /// Reads `--rooms N --messages N --user NAME --password PW` (each optional).
    pub fn from_args(args: &[String]) -> Result<SeedPlan, String> {
        let mut plan = SeedPlan::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || value.parse::<usize>().map_err(|_| format!("{flag} needs a whole number, not {value:?}"));
            match flag.as_str() {
                "--rooms" => plan.rooms = number()?.clamp(1, 10_000),
                "--messages" => plan.messages = number()?,
                "--user" => plan.user = value.clone(),
                "--password" => plan.password = value.clone(),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        crate::names::validate_nickname(&plan.user).map_err(|e| e.to_string())?;
        crate::accounts::validate_password(&Secret::new(&plan.password)).map_err(|e| e.to_string())?;
        Ok(plan)
    }
}

/// Words the seeded messages are made of, so searches have something to find.
const WORDS: &[&str] = &[
    "apple", "banana", "cherry", "deploy", "review", "lunch", "coffee", "release", "bug", "fix", "meeting", "tomorrow",
    "database", "server", "latency", "ticket", "weekend", "build", "green", "red",
];

/// Messages per committed batch.
const BATCH: usize = 5_000;

/// Seeds `store` as `plan` says, printing progress; returns a summary line.
pub fn seed_unread(store: &mut dyn Store, plan: &SeedPlan) -> Result<String, StoreError> {
    let started = Instant::now();
    let at = now_ms();
    let user_id = store.upsert_user(&plan.user, at)?;
    let hash = Hasher::start(1)
        .hash(&Secret::new(&plan.password))
        .map_err(|e| StoreError::Failed(format!("cannot hash the password: {e}")))?;
    if !store.register(user_id, &hash, at)? {
        store.set_password(user_id, &hash)?;
    }
    let sender_id = store.upsert_user("seeder", at)?;
    let existing = store.rooms()?;
    let mut rooms = Vec::with_capacity(plan.rooms);
    for i in 0..plan.rooms {
        let name = format!("bench-{i:03}");
        let record = match existing.iter().find(|r| r.name == name) {
            Some(record) => record.clone(),
            None => store.create_room(&name, at)?,
        };
        rooms.push(record);
    }
    let mut batch = Vec::with_capacity(BATCH);
    for n in 0..plan.messages {
        let room = &rooms[n % rooms.len()];
        let mut content = format!("message {n} about {} and {}", WORDS[n % WORDS.len()], WORDS[(n / 7) % WORDS.len()]);
        if n % 47 == 0 {
            content.push_str(&format!(" @{}", plan.user));
        }
        batch.push(NewMessage {
            room_id: room.id,
            room: room.name.clone(),
            user_id: sender_id,
            nickname: "seeder".into(),
            content,
            created_at_ms: at + n as i64,
            client_msg_id: None,
            action: false,
        });
        if batch.len() == BATCH || n + 1 == plan.messages {
            store.insert_messages(&batch)?;
            batch.clear();
            eprint!("\rseeded {} of {} messages", n + 1, plan.messages);
        }
        if n + 1 == plan.messages / 2 {
            for room in &rooms {
                store.mark_read(user_id, room.id, i64::MAX, now_ms())?;
            }
        }
    }
    eprintln!();
    Ok(format!(
        "seeded {} messages in {} rooms for '{}' in {:.1} s ({})",
        plan.messages,
        rooms.len(),
        plan.user,
        started.elapsed().as_secs_f64(),
        store.describe()
    ))
}
