//! The room's SQLite database: schema, migration, and the rows the engine keeps.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// The schema version this engine writes; older databases are migrated on open.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    doc_type TEXT NOT NULL,
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    data TEXT NOT NULL,
    deleted_seq INTEGER,
    deleted_at INTEGER
);
CREATE TABLE membership_log (
    seq INTEGER PRIMARY KEY,
    doc TEXT NOT NULL,
    action TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE replay (
    user TEXT NOT NULL,
    client TEXT NOT NULL,
    mid INTEGER NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (user, client, mid)
);
";

/// Opens (creating and migrating) a room database at `path`, or in memory when `path` is `None`.
pub fn open(path: Option<&Path>) -> rusqlite::Result<Connection> {
    let connection = match path {
        Some(path) => Connection::open(path)?,
        None => Connection::open_in_memory()?,
    };
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version < SCHEMA_VERSION {
        let transaction = connection.unchecked_transaction()?;
        transaction.execute_batch(SCHEMA_V1)?;
        transaction.execute("INSERT INTO meta (key, value) VALUES ('seq', 0)", [])?;
        transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        transaction.commit()?;
    }
    Ok(connection)
}

/// Reads the room's committed sequence.
pub fn sequence(connection: &Connection) -> rusqlite::Result<u64> {
    connection
        .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |row| row.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// Writes the room's sequence inside the current transaction.
pub fn set_sequence(connection: &Connection, seq: u64) -> rusqlite::Result<()> {
    connection.execute("UPDATE meta SET value = ?1 WHERE key = 'seq'", params![seq as i64]).map(|_| ())
}

/// One stored document, live or soft-deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRow {
    /// The document id.
    pub id: String,
    /// Its type.
    pub doc_type: String,
    /// The sequence of its last content change.
    pub seq: u64,
    /// Its creator.
    pub owner: String,
    /// Its data, as JSON text.
    pub data: String,
    /// When soft-deleted: the room sequence and the time (ms) of the delete.
    pub deleted: Option<(u64, u64)>,
}

/// Every stored document, by id.
pub fn documents(connection: &Connection) -> rusqlite::Result<Vec<DocumentRow>> {
    let mut statement = connection.prepare(
        "SELECT id, doc_type, seq, owner, data, deleted_seq, deleted_at FROM documents ORDER BY id",
    )?;
    let rows = statement.query_map([], |row| {
        let deleted_seq: Option<i64> = row.get(5)?;
        let deleted_at: Option<i64> = row.get(6)?;
        Ok(DocumentRow {
            id: row.get(0)?,
            doc_type: row.get(1)?,
            seq: row.get::<_, i64>(2)? as u64,
            owner: row.get(3)?,
            data: row.get(4)?,
            deleted: deleted_seq.zip(deleted_at).map(|(s, a)| (s as u64, a as u64)),
        })
    })?;
    rows.collect()
}

/// Inserts or replaces a document row.
pub fn write_document(connection: &Connection, row: &DocumentRow) -> rusqlite::Result<()> {
    let (deleted_seq, deleted_at) = match row.deleted {
        Some((seq, at)) => (Some(seq as i64), Some(at as i64)),
        None => (None, None),
    };
    connection.execute(
        "INSERT OR REPLACE INTO documents (id, doc_type, seq, owner, data, deleted_seq, deleted_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![row.id, row.doc_type, row.seq as i64, row.owner, row.data, deleted_seq, deleted_at],
    )?;
    Ok(())
}

/// Removes a document row for good (purge).
pub fn delete_document(connection: &Connection, id: &str) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM documents WHERE id = ?1", params![id]).map(|_| ())
}

/// Appends a create / delete / restore / purge to the membership log.
pub fn log_membership(
    connection: &Connection,
    seq: u64,
    doc: &str,
    action: &str,
    at: u64,
) -> rusqlite::Result<()> {
    connection
        .execute(
            "INSERT INTO membership_log (seq, doc, action, at) VALUES (?1, ?2, ?3, ?4)",
            params![seq as i64, doc, action, at as i64],
        )
        .map(|_| ())
}

/// The room sequence of the newest membership-log entry with one of `actions` (0 if none).
pub fn last_membership_seq(connection: &Connection, actions: &[&str]) -> rusqlite::Result<u64> {
    let placeholders = vec!["?"; actions.len()].join(", ");
    let sql = format!("SELECT COALESCE(MAX(seq), 0) FROM membership_log WHERE action IN ({placeholders})");
    connection
        .query_row(&sql, rusqlite::params_from_iter(actions.iter()), |row| row.get::<_, i64>(0))
        .map(|seq| seq as u64)
}

/// Remembers a mutation's answer and forgets answers beyond the newest `window` of that client.
pub fn remember_answer(
    connection: &Connection,
    key: (&str, &str),
    mid: u64,
    answer: &str,
    window: usize,
) -> rusqlite::Result<()> {
    let (user, client) = key;
    connection.execute(
        "INSERT OR REPLACE INTO replay (user, client, mid, answer) VALUES (?1, ?2, ?3, ?4)",
        params![user, client, mid as i64, answer],
    )?;
    // Everything at or below the oldest answer to keep, found by one walk down the primary key.
    connection.execute(
        "DELETE FROM replay WHERE user = ?1 AND client = ?2 AND mid <=
         (SELECT mid FROM replay WHERE user = ?1 AND client = ?2 ORDER BY mid DESC LIMIT 1 OFFSET ?3)",
        params![user, client, window as i64],
    )?;
    Ok(())
}

/// The newest processed mutation id of a client, and the remembered answer for `mid` if any.
pub fn replay_lookup(
    connection: &Connection,
    key: (&str, &str),
    mid: u64,
) -> rusqlite::Result<(Option<u64>, Option<String>)> {
    let (user, client) = key;
    let newest: Option<i64> = connection.query_row(
        "SELECT MAX(mid) FROM replay WHERE user = ?1 AND client = ?2",
        params![user, client],
        |row| row.get(0),
    )?;
    let answer = connection
        .query_row(
            "SELECT answer FROM replay WHERE user = ?1 AND client = ?2 AND mid = ?3",
            params![user, client, mid as i64],
            |row| row.get(0),
        )
        .optional()?;
    Ok((newest.map(|n| n as u64), answer))
}
