//! PostgreSQL store, chosen when `DATABASE_URL` is set.

use super::{NewMessage, RoomRecord, Store, StoreError};
use crate::event::ChatMessage;

pub struct PostgresStore {
    _url: String,
}

impl PostgresStore {
    pub fn open(_url: &str) -> Result<PostgresStore, StoreError> {
        Err(StoreError::Failed("the PostgreSQL store is not built yet".into()))
    }
}

impl Store for PostgresStore {
    fn describe(&self) -> String {
        "PostgreSQL".into()
    }
    fn rooms(&mut self) -> Result<Vec<RoomRecord>, StoreError> {
        unreachable!()
    }
    fn create_room(&mut self, _: &str, _: i64) -> Result<RoomRecord, StoreError> {
        unreachable!()
    }
    fn upsert_user(&mut self, _: &str, _: i64) -> Result<i64, StoreError> {
        unreachable!()
    }
    fn record_join(&mut self, _: i64, _: i64, _: i64) -> Result<(), StoreError> {
        unreachable!()
    }
    fn insert_messages(&mut self, _: &[NewMessage]) -> Result<Vec<i64>, StoreError> {
        unreachable!()
    }
    fn messages_before(&mut self, _: i64, _: Option<i64>, _: usize) -> Result<Vec<ChatMessage>, StoreError> {
        unreachable!()
    }
    fn messages_after(&mut self, _: i64, _: i64, _: usize) -> Result<Vec<ChatMessage>, StoreError> {
        unreachable!()
    }
    fn ping(&mut self) -> Result<(), StoreError> {
        unreachable!()
    }
}
