//! The room's SQLite database: schema, migration, and the rows the engine keeps.

use rusqlite::hooks::{CheckpointMode, Wal};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;

/// How many prepared statements a room keeps (more than the engine's distinct statements).
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// The page size of new room databases, in bytes.
const PAGE_BYTES: i64 = 1024;

/// How much WAL a room writes before it checkpoints, in pages of [`PAGE_BYTES`]: the 4 MiB that
/// SQLite's default (1,000 pages of 4 KiB) allows, or small pages would checkpoint (and fsync) four
/// times as often. A database made with larger pages checkpoints after as many of its own pages.
const WAL_CHECKPOINT_PAGES: i32 = (4 << 20) / PAGE_BYTES as i32;

/// When a commit returns: after the WAL is synced (ack.durable), or before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Synchronous {
    /// The WAL is synced at every commit (`synchronous=FULL`).
    Full,
    /// The WAL is synced only at checkpoints (`synchronous=NORMAL`): what the `ack-before-sync`
    /// mutant plants.
    Normal,
}

/// The schema version this engine writes; older databases are migrated on open, one step at a time.
const SCHEMA_VERSION: i64 = 5;

/// Documents, the membership log and the replay windows.
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
INSERT INTO meta (key, value) VALUES ('seq', 0);
";

/// Lists, users and usage, teams, staged sessions, buckets, assets and Yjs state.
const SCHEMA_V2: &str = "
CREATE TABLE list_items (
    doc TEXT NOT NULL,
    list TEXT NOT NULL,
    item TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (doc, list, item)
);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    role TEXT,
    token_role TEXT NOT NULL,
    plan TEXT NOT NULL,
    addons INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    usage INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE teams (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE team_members (
    team TEXT NOT NULL,
    user TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (team, user)
);
CREATE TABLE staged (
    user TEXT NOT NULL,
    doc TEXT NOT NULL,
    doc_type TEXT NOT NULL,
    base_seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user, doc)
);
CREATE TABLE buckets (
    name TEXT PRIMARY KEY,
    contract TEXT NOT NULL,
    version INTEGER NOT NULL,
    value TEXT NOT NULL,
    setter TEXT
);
CREATE TABLE assets (
    bucket TEXT NOT NULL,
    object_key TEXT NOT NULL,
    info TEXT NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (bucket, object_key)
);
CREATE TABLE yjs_updates (
    doc TEXT NOT NULL,
    field TEXT NOT NULL,
    n INTEGER NOT NULL,
    update_v1 BLOB NOT NULL,
    PRIMARY KEY (doc, field, n)
);
INSERT INTO meta (key, value) VALUES ('users_seq', 0), ('teams_seq', 0);
";

/// One staged commit may create several documents at one sequence, so the membership log is keyed
/// by (sequence, document), not by sequence alone.
const SCHEMA_V3: &str = "
CREATE TABLE membership_log_v3 (
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    action TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (seq, doc)
);
INSERT INTO membership_log_v3 (seq, doc, action, at) SELECT seq, doc, action, at FROM membership_log;
DROP TABLE membership_log;
ALTER TABLE membership_log_v3 RENAME TO membership_log;
";

/// The tables keyed by text or by several columns become `WITHOUT ROWID`: a rowid table keeps such a
/// key in a second b-tree, so every insert dirtied two pages (and wrote two to the WAL) where one
/// does. Assets and Yjs updates keep their rowid, since their rows can be large. The sequences of
/// `sys:index` and `sys:trash` move to the meta table (whose page every change writes anyway), so a
/// create no longer needs a membership-log row: the log keeps deletes, restores and purges.
const SCHEMA_V4: &str = "
CREATE TABLE documents_v4 (
    id TEXT PRIMARY KEY,
    doc_type TEXT NOT NULL,
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    data TEXT NOT NULL,
    deleted_seq INTEGER,
    deleted_at INTEGER
) WITHOUT ROWID;
INSERT INTO documents_v4 SELECT id, doc_type, seq, owner, data, deleted_seq, deleted_at FROM documents;
DROP TABLE documents;
ALTER TABLE documents_v4 RENAME TO documents;
CREATE TABLE membership_log_v4 (
    seq INTEGER NOT NULL,
    doc TEXT NOT NULL,
    action TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (seq, doc)
) WITHOUT ROWID;
INSERT INTO membership_log_v4 SELECT seq, doc, action, at FROM membership_log;
DROP TABLE membership_log;
ALTER TABLE membership_log_v4 RENAME TO membership_log;
CREATE TABLE replay_v4 (
    user TEXT NOT NULL,
    client TEXT NOT NULL,
    mid INTEGER NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (user, client, mid)
) WITHOUT ROWID;
INSERT INTO replay_v4 SELECT user, client, mid, answer FROM replay;
DROP TABLE replay;
ALTER TABLE replay_v4 RENAME TO replay;
CREATE TABLE list_items_v4 (
    doc TEXT NOT NULL,
    list TEXT NOT NULL,
    item TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (doc, list, item)
) WITHOUT ROWID;
INSERT INTO list_items_v4 SELECT doc, list, item, key, value FROM list_items;
DROP TABLE list_items;
ALTER TABLE list_items_v4 RENAME TO list_items;
CREATE TABLE users_v4 (
    id TEXT PRIMARY KEY,
    role TEXT,
    token_role TEXT NOT NULL,
    plan TEXT NOT NULL,
    addons INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    usage INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO users_v4 SELECT id, role, token_role, plan, addons, first_seen, last_seen, usage FROM users;
DROP TABLE users;
ALTER TABLE users_v4 RENAME TO users;
CREATE TABLE meta_v4 (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta_v4 SELECT key, value FROM meta;
DROP TABLE meta;
ALTER TABLE meta_v4 RENAME TO meta;
INSERT INTO meta (key, value)
    SELECT 'index_seq', COALESCE(MAX(seq), 0) FROM membership_log WHERE action IN ('create', 'delete', 'restore');
INSERT INTO meta (key, value)
    SELECT 'trash_seq', COALESCE(MAX(seq), 0) FROM membership_log WHERE action IN ('delete', 'restore', 'purge');
";

/// Usage counters move from the users table to the meta table, as rows `usage/<user id>`, beside
/// the room's sequence: a write that charges its author then dirties one page for both (a create
/// wrote 4 WAL frames, now 3).
const SCHEMA_V5: &str = "
INSERT INTO meta (key, value) SELECT 'usage/' || id, usage FROM users WHERE usage != 0;
ALTER TABLE users DROP COLUMN usage;
";

const MIGRATIONS: [&str; 5] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

/// Opens (creating and migrating) a room database at `path` through the VFS named `vfs` (the
/// system's when `None`), or in memory when `path` is `None`.
pub(crate) fn open(
    path: Option<&Path>,
    vfs: Option<&str>,
    synchronous: Synchronous,
) -> rusqlite::Result<Connection> {
    let connection = match (path, vfs) {
        (Some(path), Some(vfs)) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?,
        (Some(path), None) => Connection::open(path)?,
        (None, _) => Connection::open_in_memory()?,
    };
    // The hot statements are prepared once; rusqlite's default cache of 16 is fewer than the engine
    // uses, and a statement pushed out is parsed again on its next use.
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    // One connection owns the file. Taken before WAL mode is entered, the exclusive lock also keeps
    // the WAL index in the process's memory, so a VFS needs no shared memory.
    connection.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    // Rows are small JSON documents and every change rewrites a few whole pages into the WAL, so
    // small pages write less: 1 KiB pages made confirmed creates about 1.4 times faster than the
    // default 4 KiB (BENCHMARKS.md). A database that exists keeps the page size it was made with.
    connection.pragma_update(None, "page_size", PAGE_BYTES)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // ack.durable: with WAL, NORMAL syncs only at checkpoints, so a commit acknowledged before the
    // next one could vanish in a power loss; FULL syncs the WAL at every commit, and group commit
    // pays that sync once per group (BENCHMARKS.md has the cost).
    let mode = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", mode)?;
    connection.wal_hook(Some(checkpoint_after_commit));
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (step, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let transaction = connection.unchecked_transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", step as i64 + 1)?;
        transaction.commit()?;
    }
    debug_assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    Ok(connection)
}

/// The room's checkpoint, run by SQLite after each commit with the WAL's length in pages. It stands
/// in for SQLite's own autocheckpoint, whose failure SQLite reports as the failure of the COMMIT
/// that triggered it: that transaction is durable, yet its writer would be answered `internal`
/// (ack.after-commit). A checkpoint that fails here leaves the WAL longer, and the next commit tries
/// again.
fn checkpoint_after_commit(wal: &Wal, pages: std::os::raw::c_int) -> rusqlite::Result<()> {
    if pages >= WAL_CHECKPOINT_PAGES {
        let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
    }
    Ok(())
}

/// Reads a counter of the meta table.
pub fn meta(connection: &Connection, key: &str) -> rusqlite::Result<u64> {
    connection
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| row.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// Writes a counter of the meta table inside the current transaction.
pub fn set_meta(connection: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    connection
        .prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?
        .execute(params![key, value as i64])
        .map(|_| ())
}

/// Reads the room's committed sequence.
pub fn sequence(connection: &Connection) -> rusqlite::Result<u64> {
    connection
        .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |row| row.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// Writes the room's sequence inside the current transaction.
pub fn set_sequence(connection: &Connection, seq: u64) -> rusqlite::Result<()> {
    connection
        .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'seq'")?
        .execute(params![seq as i64])
        .map(|_| ())
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
    connection
        .prepare_cached(
            "INSERT OR REPLACE INTO documents (id, doc_type, seq, owner, data, deleted_seq, deleted_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            row.id,
            row.doc_type,
            row.seq as i64,
            row.owner,
            row.data,
            deleted_seq,
            deleted_at
        ])?;
    Ok(())
}

/// Removes a document for good (purge): its row, list items and Yjs state.
pub fn delete_document(connection: &Connection, id: &str) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM documents WHERE id = ?1", params![id])?;
    connection.execute("DELETE FROM list_items WHERE doc = ?1", params![id])?;
    connection.execute("DELETE FROM yjs_updates WHERE doc = ?1", params![id])?;
    Ok(())
}

/// Appends a delete / restore / purge to the membership log.
pub fn log_membership(
    connection: &Connection,
    seq: u64,
    doc: &str,
    action: &str,
    at: u64,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached("INSERT INTO membership_log (seq, doc, action, at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![seq as i64, doc, action, at as i64])
        .map(|_| ())
}

/// Remembers a mutation's answer, and forgets the `forget` oldest answers of that client (the room
/// knows how many it keeps, so the trim is one walk down the primary key, not a count).
pub fn remember_answer(
    connection: &Connection,
    key: (&str, &str),
    mid: u64,
    answer: &str,
    forget: usize,
) -> rusqlite::Result<()> {
    let (user, client) = key;
    connection
        .prepare_cached("INSERT OR REPLACE INTO replay (user, client, mid, answer) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![user, client, mid as i64, answer])?;
    if forget > 0 {
        connection
            .prepare_cached(
                "DELETE FROM replay WHERE user = ?1 AND client = ?2 AND mid <=
             (SELECT mid FROM replay WHERE user = ?1 AND client = ?2 ORDER BY mid LIMIT 1 OFFSET ?3)",
            )?
            .execute(params![user, client, forget as i64 - 1])?;
    }
    Ok(())
}

/// How many answers of a client storage holds (the window and, until the next trim, older ones),
/// and its newest processed mutation id.
pub fn replay_window(connection: &Connection, key: (&str, &str)) -> rusqlite::Result<(usize, Option<u64>)> {
    connection
        .prepare_cached("SELECT COUNT(*), MAX(mid) FROM replay WHERE user = ?1 AND client = ?2")?
        .query_row(params![key.0, key.1], |row| {
            Ok((row.get::<_, i64>(0)? as usize, row.get::<_, Option<i64>>(1)?.map(|mid| mid as u64)))
        })
}

/// The remembered answer of a client's mutation `mid`, if it is among the client's newest
/// `window_max` answers. Storage may keep older ones until its next trim; they are not served.
pub fn replay_answer(
    connection: &Connection,
    key: (&str, &str),
    mid: u64,
    window_max: usize,
) -> rusqlite::Result<Option<String>> {
    connection
        .prepare_cached(
            "SELECT answer FROM replay WHERE user = ?1 AND client = ?2 AND mid = ?3
             AND (SELECT COUNT(*) FROM replay WHERE user = ?1 AND client = ?2 AND mid > ?3) < ?4",
        )?
        .query_row(params![key.0, key.1, mid as i64, window_max as i64], |row| row.get(0))
        .optional()
}

/// One stored list item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    /// The document.
    pub doc: String,
    /// The list.
    pub list: String,
    /// The item id.
    pub item: String,
    /// Its fractional key.
    pub key: String,
    /// Its value, as JSON text.
    pub value: String,
}

/// Every stored list item.
pub fn list_items(connection: &Connection) -> rusqlite::Result<Vec<ItemRow>> {
    let mut statement =
        connection.prepare("SELECT doc, list, item, key, value FROM list_items ORDER BY doc, list, item")?;
    let rows = statement.query_map([], |row| {
        Ok(ItemRow {
            doc: row.get(0)?,
            list: row.get(1)?,
            item: row.get(2)?,
            key: row.get(3)?,
            value: row.get(4)?,
        })
    })?;
    rows.collect()
}

/// Inserts or replaces a list item.
pub fn write_item(connection: &Connection, row: &ItemRow) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT OR REPLACE INTO list_items (doc, list, item, key, value) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![row.doc, row.list, row.item, row.key, row.value])
        .map(|_| ())
}

/// Removes a list item.
pub fn delete_item(connection: &Connection, doc: &str, list: &str, item: &str) -> rusqlite::Result<()> {
    connection
        .prepare_cached("DELETE FROM list_items WHERE doc = ?1 AND list = ?2 AND item = ?3")?
        .execute(params![doc, list, item])
        .map(|_| ())
}

/// One user the room has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The user id.
    pub id: String,
    /// The role an admin set in the room, if any.
    pub role: Option<String>,
    /// The role of their latest token.
    pub token_role: String,
    /// Their plan, from their latest token.
    pub plan: String,
    /// Their add-ons, from their latest token.
    pub addons: u32,
    /// Bytes charged to them.
    pub usage: u64,
}

/// Every user the room has seen.
pub fn users(connection: &Connection) -> rusqlite::Result<Vec<UserRow>> {
    let mut statement = connection.prepare(
        "SELECT id, role, token_role, plan, addons, COALESCE(meta.value, 0) FROM users
             LEFT JOIN meta ON meta.key = 'usage/' || users.id ORDER BY id",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(UserRow {
            id: row.get(0)?,
            role: row.get(1)?,
            token_role: row.get(2)?,
            plan: row.get(3)?,
            addons: row.get(4)?,
            usage: row.get::<_, i64>(5)? as u64,
        })
    })?;
    rows.collect()
}

/// Records a user's connection at `now_ms` (first and last seen), or an admin's role change; usage
/// is left alone, since only `add_usage` moves it.
pub fn write_user(connection: &Connection, row: &UserRow, now_ms: u64) -> rusqlite::Result<()> {
    connection
        .execute(
            "INSERT INTO users (id, role, token_role, plan, addons, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (id) DO UPDATE SET role = ?2, token_role = ?3, plan = ?4, addons = ?5, last_seen = ?6",
            params![row.id, row.role, row.token_role, row.plan, row.addons, now_ms as i64],
        )
        .map(|_| ())
}

/// Sets (or clears) the role an admin chose for a user in the room.
pub fn set_role(connection: &Connection, user: &str, role: Option<&str>) -> rusqlite::Result<()> {
    connection.execute("UPDATE users SET role = ?2 WHERE id = ?1", params![user, role]).map(|_| ())
}

/// Moves a user's usage by `delta` bytes (the room checks that it knows the user) and returns
/// what it was before, as committed or as written so far in the current transaction.
pub fn add_usage(connection: &Connection, user: &str, delta: i64) -> rusqlite::Result<u64> {
    connection
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('usage/' || ?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = value + ?2 RETURNING value - ?2",
        )?
        .query_row(params![user, delta], |row| row.get::<_, i64>(0))
        .map(|before| before as u64)
}

/// Every team as (id, name) and every membership as (team, user, status).
#[allow(clippy::type_complexity)]
pub fn teams(
    connection: &Connection,
) -> rusqlite::Result<(Vec<(String, String)>, Vec<(String, String, String)>)> {
    let mut statement = connection.prepare("SELECT id, name FROM teams ORDER BY id")?;
    let teams = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    let mut statement =
        connection.prepare("SELECT team, user, status FROM team_members ORDER BY team, user")?;
    let members = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok((teams, members))
}

/// Replaces a team and its memberships (`None`: deletes it).
pub fn write_team(
    connection: &Connection,
    id: &str,
    team: Option<(&str, &[(&str, &str)])>,
) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM teams WHERE id = ?1", [id])?;
    connection.execute("DELETE FROM team_members WHERE team = ?1", [id])?;
    if let Some((name, members)) = team {
        connection.execute("INSERT INTO teams (id, name) VALUES (?1, ?2)", params![id, name])?;
        for (user, status) in members {
            connection.execute(
                "INSERT INTO team_members (team, user, status) VALUES (?1, ?2, ?3)",
                params![id, user, status],
            )?;
        }
    }
    Ok(())
}

/// One staged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRow {
    /// Whose session.
    pub user: String,
    /// The document.
    pub doc: String,
    /// Its type.
    pub doc_type: String,
    /// The document's sequence when staged.
    pub base_seq: u64,
    /// The staged data, as JSON text.
    pub data: String,
}

/// Every staged write.
pub fn staged(connection: &Connection) -> rusqlite::Result<Vec<StagedRow>> {
    let mut statement =
        connection.prepare("SELECT user, doc, doc_type, base_seq, data FROM staged ORDER BY user, doc")?;
    let rows = statement.query_map([], |row| {
        Ok(StagedRow {
            user: row.get(0)?,
            doc: row.get(1)?,
            doc_type: row.get(2)?,
            base_seq: row.get::<_, i64>(3)? as u64,
            data: row.get(4)?,
        })
    })?;
    rows.collect()
}

/// Replaces a user's staged session.
pub fn write_session(connection: &Connection, user: &str, rows: &[StagedRow]) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM staged WHERE user = ?1", [user])?;
    for row in rows {
        connection.execute(
            "INSERT INTO staged (user, doc, doc_type, base_seq, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.user, row.doc, row.doc_type, row.base_seq as i64, row.data],
        )?;
    }
    Ok(())
}

/// One stored bucket; structured fields are JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    /// The bucket name.
    pub name: String,
    /// Its contract.
    pub contract: String,
    /// Its version.
    pub version: u64,
    /// Its value.
    pub value: String,
    /// Who last set the value.
    pub setter: Option<String>,
}

/// Every bucket, and every asset as (bucket, info JSON) without its bytes.
#[allow(clippy::type_complexity)]
pub fn buckets(connection: &Connection) -> rusqlite::Result<(Vec<BucketRow>, Vec<(String, String)>)> {
    let mut statement =
        connection.prepare("SELECT name, contract, version, value, setter FROM buckets ORDER BY name")?;
    let buckets = statement
        .query_map([], |row| {
            Ok(BucketRow {
                name: row.get(0)?,
                contract: row.get(1)?,
                version: row.get::<_, i64>(2)? as u64,
                value: row.get(3)?,
                setter: row.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut statement = connection.prepare("SELECT bucket, info FROM assets ORDER BY bucket, object_key")?;
    let assets = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    Ok((buckets, assets))
}

/// Inserts or replaces a bucket row.
pub fn write_bucket(connection: &Connection, row: &BucketRow) -> rusqlite::Result<()> {
    connection
        .execute(
            "INSERT OR REPLACE INTO buckets (name, contract, version, value, setter) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![row.name, row.contract, row.version as i64, row.value, row.setter],
        )
        .map(|_| ())
}

/// Deletes a bucket and all its assets.
pub fn delete_bucket(connection: &Connection, name: &str) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM buckets WHERE name = ?1", [name])?;
    connection.execute("DELETE FROM assets WHERE bucket = ?1", [name])?;
    Ok(())
}

/// Stores an asset with its bytes.
pub fn insert_asset(
    connection: &Connection,
    bucket: &str,
    key: &str,
    info: &str,
    bytes: &[u8],
) -> rusqlite::Result<()> {
    connection
        .execute(
            "INSERT INTO assets (bucket, object_key, info, bytes) VALUES (?1, ?2, ?3, ?4)",
            params![bucket, key, info, bytes],
        )
        .map(|_| ())
}

/// Deletes one asset.
pub fn delete_asset(connection: &Connection, bucket: &str, key: &str) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM assets WHERE bucket = ?1 AND object_key = ?2", [bucket, key]).map(|_| ())
}

/// An asset's bytes.
pub fn asset_bytes(connection: &Connection, bucket: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    connection
        .query_row("SELECT bytes FROM assets WHERE bucket = ?1 AND object_key = ?2", [bucket, key], |row| {
            row.get(0)
        })
        .optional()
}

/// A field's stored Yjs updates, in the order they were appended.
pub fn yjs_field_updates(connection: &Connection, doc: &str, field: &str) -> rusqlite::Result<Vec<Vec<u8>>> {
    let mut statement =
        connection.prepare("SELECT update_v1 FROM yjs_updates WHERE doc = ?1 AND field = ?2 ORDER BY n")?;
    let rows = statement.query_map([doc, field], |row| row.get(0))?;
    rows.collect()
}

/// Appends an update to a field's Yjs log and returns how many updates the log now holds.
pub fn append_yjs(connection: &Connection, doc: &str, field: &str, update: &[u8]) -> rusqlite::Result<u64> {
    connection
        .prepare_cached(
            "INSERT INTO yjs_updates (doc, field, n, update_v1) VALUES (?1, ?2,
             (SELECT COALESCE(MAX(n), 0) + 1 FROM yjs_updates WHERE doc = ?1 AND field = ?2), ?3)",
        )?
        .execute(params![doc, field, update])?;
    connection.query_row(
        "SELECT COUNT(*) FROM yjs_updates WHERE doc = ?1 AND field = ?2",
        [doc, field],
        |row| row.get::<_, i64>(0).map(|n| n as u64),
    )
}

/// Replaces a field's Yjs log by one update holding its whole state.
pub fn compact_yjs(connection: &Connection, doc: &str, field: &str, state: &[u8]) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM yjs_updates WHERE doc = ?1 AND field = ?2", [doc, field])?;
    connection
        .execute(
            "INSERT INTO yjs_updates (doc, field, n, update_v1) VALUES (?1, ?2, 1, ?3)",
            params![doc, field, state],
        )
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by schema version 3, with a created, a deleted and a purged document,
    /// a client's remembered answers, and two users, one charged 42 bytes.
    fn version_3(path: &Path) {
        let connection = Connection::open(path).unwrap();
        for (step, migration) in MIGRATIONS[..3].iter().enumerate() {
            connection.execute_batch(migration).unwrap();
            connection.pragma_update(None, "user_version", step as i64 + 1).unwrap();
        }
        connection
            .execute_batch(
                "UPDATE meta SET value = 5 WHERE key = 'seq';
                 INSERT INTO documents VALUES ('a', 't', 1, 'u1', '{}', NULL, NULL);
                 INSERT INTO documents VALUES ('b', 't', 3, 'u1', '{}', 3, 30);
                 INSERT INTO membership_log VALUES (1, 'a', 'create', 10), (2, 'b', 'create', 20),
                     (3, 'b', 'delete', 30), (4, 'c', 'create', 40), (5, 'c', 'purge', 50);
                 INSERT INTO replay VALUES ('u1', 'c1', 7, 'seven'), ('u1', 'c1', 9, 'nine');
                 INSERT INTO users VALUES ('u1', NULL, 'member', 'pro', 0, 1, 2, 42),
                     ('u2', NULL, 'member', 'pro', 0, 1, 2, 0);",
            )
            .unwrap();
    }

    #[test]
    fn version_3_databases_migrate_with_their_rows_and_view_sequences() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("room.sqlite");
        version_3(&path);
        let connection = open(Some(&path), None, Synchronous::Full).unwrap();
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(sequence(&connection).unwrap(), 5);
        // sys:index last changed at the create of c (4); sys:trash at the purge of c (5).
        assert_eq!(
            (meta(&connection, "index_seq").unwrap(), meta(&connection, "trash_seq").unwrap()),
            (4, 5)
        );
        let ids: Vec<String> = documents(&connection).unwrap().into_iter().map(|row| row.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(replay_window(&connection, ("u1", "c1")).unwrap(), (2, Some(9)));
        assert_eq!(replay_answer(&connection, ("u1", "c1"), 7, 2).unwrap().as_deref(), Some("seven"));
        assert_eq!(replay_answer(&connection, ("u1", "c1"), 7, 1).unwrap(), None);
        let usage: Vec<(String, u64)> =
            users(&connection).unwrap().into_iter().map(|row| (row.id, row.usage)).collect();
        assert_eq!(usage, [("u1".to_string(), 42), ("u2".to_string(), 0)]);
        assert_eq!(replay_window(&connection, ("u1", "c2")).unwrap(), (0, None));
    }

    #[test]
    fn remembering_forgets_the_oldest_answers_it_is_told_to() {
        let connection = open(None, None, Synchronous::Full).unwrap();
        for mid in [3, 5, 8, 13] {
            remember_answer(&connection, ("u1", "c1"), mid, &format!("answer {mid}"), 0).unwrap();
        }
        remember_answer(&connection, ("u1", "c1"), 21, "answer 21", 2).unwrap();
        assert_eq!(replay_window(&connection, ("u1", "c1")).unwrap(), (3, Some(21)));
        assert_eq!(replay_answer(&connection, ("u1", "c1"), 5, 8).unwrap(), None);
        assert_eq!(replay_answer(&connection, ("u1", "c1"), 8, 8).unwrap().as_deref(), Some("answer 8"));
        // An answer still stored but older than the newest `window_max` is not served.
        assert_eq!(replay_answer(&connection, ("u1", "c1"), 8, 2).unwrap(), None);
        assert_eq!(replay_answer(&connection, ("u1", "c1"), 13, 2).unwrap().as_deref(), Some("answer 13"));
    }
}
