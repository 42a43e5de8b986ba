//! The simulation's disk: SQLite's files in memory, and what a power loss takes from them.
//!
//! A run mounts a [`Disk`] at its data directory; the server opens its room databases through the
//! SQLite VFS registered as [`VFS_NAME`], which keeps every file of a mount in memory as two images:
//! what the process reads (every write so far, as the page cache shows it) and what the medium
//! holds (the writes up to the file's last sync). A power loss keeps a seeded subset of each file's
//! unsynced writes, tears the write it interrupted, and forgets the rest; the restarted server reads
//! what is left. A file's creation and deletion are durable at once (the VFS is told nothing of
//! directory syncs).
//!
//! The power goes out at a write ([`Disk::arm`]: that write is torn and fails, and so does every
//! write, sync and delete after it) or between two writes ([`Disk::cut`]). Until the fault driver
//! restores it, reads still see the page cache: the process is dying, not yet dead, and nothing it
//! writes reaches the medium.
//!
//! The VFS is this module's only unsafe code: the callbacks SQLite calls, each a few lines over the
//! safe [`Volume`] methods.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::ffi;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Once};

/// The name the VFS is registered under; a room opened with it must live under a mounted [`Disk`].
pub const VFS_NAME: &str = "roomlab-sim-disk";

/// The mounted disks of every run in the process, by root directory (runs on other threads have
/// their own directories).
static MOUNTS: Mutex<BTreeMap<PathBuf, Arc<Volume>>> = Mutex::new(BTreeMap::new());

/// A run's disk: every SQLite file under `root` lives on it. Unmounted when dropped.
pub struct Disk {
    root: PathBuf,
    volume: Arc<Volume>,
}

/// What a power loss did to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// Unsynced writes (and truncations) that reached the medium.
    pub kept: usize,
    /// Unsynced writes that did not.
    pub dropped: usize,
    /// Bytes of the interrupted write that reached the medium, if a write was interrupted.
    pub torn_bytes: Option<usize>,
}

impl Disk {
    /// Mounts a disk at `root` (registering the VFS on first use).
    pub fn mount(root: &Path) -> Disk {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(register);
        let volume = Arc::new(Volume::default());
        mounts().insert(root.to_path_buf(), volume.clone());
        Disk { root: root.to_path_buf(), volume }
    }

    /// The power goes out at the write `writes_left` writes from now (0: the next one).
    pub fn arm(&self, writes_left: u64) {
        let mut state = self.volume.lock();
        if matches!(state.power, Power::On) {
            state.power = Power::Armed { writes_left };
        }
    }

    /// An armed loss that has not struck will not.
    pub fn disarm(&self) {
        let mut state = self.volume.lock();
        if matches!(state.power, Power::Armed { .. }) {
            state.power = Power::On;
        }
    }

    /// The power goes out now, between two writes.
    pub fn cut(&self) {
        self.volume.lock().power = Power::Out;
    }

    /// Whether the power is out (it went out at an armed write, or was cut).
    pub fn is_out(&self) -> bool {
        matches!(self.volume.lock().power, Power::Out)
    }

    /// Brings the power back: each file keeps what its medium holds, which includes a subset of
    /// its unsynced writes drawn from `seed` and a prefix of the write the loss interrupted.
    pub fn restore(&self, seed: u64) -> Loss {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut state = self.volume.lock();
        debug_assert_eq!(state.power, Power::Out, "power comes back only after it went out");
        let mut loss = Loss::default();
        for image in state.files.values_mut() {
            image.lose_power(&mut rng, &mut loss);
        }
        state.power = Power::On;
        loss
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        mounts().remove(&self.root);
    }
}

fn mounts() -> MutexGuard<'static, BTreeMap<PathBuf, Arc<Volume>>> {
    MOUNTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The disk under `path`, if one is mounted there.
fn volume_of(path: &str) -> Option<Arc<Volume>> {
    let mounts = mounts();
    mounts.iter().find(|(root, _)| Path::new(path).starts_with(root)).map(|(_, volume)| volume.clone())
}

#[derive(Default)]
struct Volume(Mutex<VolumeState>);

#[derive(Default)]
struct VolumeState {
    files: BTreeMap<String, Image>,
    power: Power,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Power {
    #[default]
    On,
    /// The power goes out at the write after `writes_left` more.
    Armed {
        writes_left: u64,
    },
    Out,
}

/// One file: what the process reads, what the medium holds, and what lies between.
#[derive(Default)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Op>,
}

/// A change not yet synced to the medium.
enum Op {
    Write {
        offset: usize,
        data: Vec<u8>,
    },
    Truncate {
        size: usize,
    },
    /// The write the power loss interrupted: only a prefix of it (possibly none) reaches the medium.
    Torn {
        offset: usize,
        data: Vec<u8>,
    },
}

impl Op {
    fn apply(&self, bytes: &mut Vec<u8>, prefix: usize) {
        match self {
            Op::Write { offset, data } | Op::Torn { offset, data } => {
                write_at(bytes, *offset, &data[..prefix.min(data.len())])
            }
            Op::Truncate { size } => bytes.truncate(*size),
        }
    }
}

impl Image {
    fn write(&mut self, offset: usize, data: &[u8]) {
        let op = Op::Write { offset, data: data.to_vec() };
        op.apply(&mut self.live, usize::MAX);
        self.unsynced.push(op);
    }

    fn truncate(&mut self, size: usize) {
        let op = Op::Truncate { size };
        op.apply(&mut self.live, usize::MAX);
        self.unsynced.push(op);
    }

    fn sync(&mut self) {
        for op in std::mem::take(&mut self.unsynced) {
            op.apply(&mut self.durable, usize::MAX);
        }
    }

    /// The medium keeps each unsynced change with even odds, in order, and a prefix of a torn write.
    fn lose_power(&mut self, rng: &mut ChaCha8Rng, loss: &mut Loss) {
        for op in std::mem::take(&mut self.unsynced) {
            match &op {
                Op::Torn { data, .. } => {
                    let prefix = rng.next_u64() as usize % data.len().max(1);
                    op.apply(&mut self.durable, prefix);
                    loss.torn_bytes = Some(prefix);
                }
                _ if rng.next_u64().is_multiple_of(2) => {
                    op.apply(&mut self.durable, usize::MAX);
                    loss.kept += 1;
                }
                _ => loss.dropped += 1,
            }
        }
        self.live = self.durable.clone();
    }
}

/// Why an operation failed, as SQLite's result code.
type Code = c_int;

impl Volume {
    fn lock(&self) -> MutexGuard<'_, VolumeState> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open(&self, name: &str, create: bool) -> Result<(), Code> {
        let mut state = self.lock();
        if state.files.contains_key(name) {
            return Ok(());
        }
        if !create || state.power == Power::Out {
            return Err(ffi::SQLITE_CANTOPEN);
        }
        state.files.insert(name.to_string(), Image::default());
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), Code> {
        let mut state = self.lock();
        if state.power == Power::Out {
            return Err(ffi::SQLITE_IOERR_DELETE);
        }
        state.files.remove(name);
        Ok(())
    }

    fn exists(&self, name: &str) -> bool {
        self.lock().files.contains_key(name)
    }

    fn read(&self, name: &str, offset: usize, buffer: &mut [u8]) -> Result<(), Code> {
        let state = self.lock();
        let live = state.files.get(name).map(|image| image.live.as_slice()).unwrap_or_default();
        read_at(live, offset, buffer)
    }

    fn write(&self, name: &str, offset: usize, data: &[u8]) -> Result<(), Code> {
        let mut state = self.lock();
        match state.power {
            Power::On => {}
            Power::Armed { writes_left } if writes_left > 0 => {
                state.power = Power::Armed { writes_left: writes_left - 1 };
            }
            Power::Armed { .. } => {
                state.power = Power::Out;
                if let Some(image) = state.files.get_mut(name) {
                    image.unsynced.push(Op::Torn { offset, data: data.to_vec() });
                }
                return Err(ffi::SQLITE_IOERR_WRITE);
            }
            Power::Out => return Err(ffi::SQLITE_IOERR_WRITE),
        }
        state.files.entry(name.to_string()).or_default().write(offset, data);
        Ok(())
    }

    fn truncate(&self, name: &str, size: usize) -> Result<(), Code> {
        let mut state = self.lock();
        if state.power == Power::Out {
            return Err(ffi::SQLITE_IOERR_TRUNCATE);
        }
        state.files.entry(name.to_string()).or_default().truncate(size);
        Ok(())
    }

    fn sync(&self, name: &str) -> Result<(), Code> {
        let mut state = self.lock();
        if state.power == Power::Out {
            return Err(ffi::SQLITE_IOERR_FSYNC);
        }
        if let Some(image) = state.files.get_mut(name) {
            image.sync();
        }
        Ok(())
    }

    fn size(&self, name: &str) -> usize {
        self.lock().files.get(name).map_or(0, |image| image.live.len())
    }
}

/// Writes `data` at `offset`, growing the file (zero-filled) to reach it; nothing written, nothing
/// grown (a torn write that kept nothing).
fn write_at(bytes: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let end = offset + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(data);
}

/// Reads `buffer.len()` bytes at `offset`; a read past the end is zero-filled and reported short.
fn read_at(bytes: &[u8], offset: usize, buffer: &mut [u8]) -> Result<(), Code> {
    let available = bytes.get(offset..).unwrap_or_default();
    let count = available.len().min(buffer.len());
    buffer[..count].copy_from_slice(&available[..count]);
    buffer[count..].fill(0);
    if count < buffer.len() {
        return Err(ffi::SQLITE_IOERR_SHORT_READ);
    }
    Ok(())
}

/// What an open SQLite file is.
enum Handle {
    /// A file of a mounted disk, by its full path.
    Named { volume: Arc<Volume>, name: String, delete_on_close: bool },
    /// A temporary file SQLite opened without a name: private to the connection, never durable.
    Anonymous(Vec<u8>),
}

/// The file object SQLite allocates (`szOsFile` bytes) and `x_open` fills.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    handle: *mut Handle,
}

fn code(result: Result<(), Code>) -> c_int {
    result.err().unwrap_or(ffi::SQLITE_OK)
}

/// The handle of an open file.
///
/// # Safety
/// `file` must be a file `x_open` filled and `x_close` has not closed.
unsafe fn handle<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Handle {
    unsafe { &mut *(*(file as *mut File)).handle }
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `name` must be null or a valid C string.
unsafe fn name_of(name: *const c_char) -> Option<String> {
    (!name.is_null()).then(|| unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned())
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let file = file as *mut File;
    unsafe { (*file).base.pMethods = std::ptr::null() };
    let handle = match unsafe { name_of(name) } {
        None => Handle::Anonymous(Vec::new()),
        Some(name) => {
            let Some(volume) = volume_of(&name) else { return ffi::SQLITE_CANTOPEN };
            if let Err(code) = volume.open(&name, flags & ffi::SQLITE_OPEN_CREATE != 0) {
                return code;
            }
            let delete_on_close = flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0;
            Handle::Named { volume, name, delete_on_close }
        }
    };
    if !out_flags.is_null() {
        unsafe { *out_flags = flags };
    }
    unsafe {
        (*file).handle = Box::into_raw(Box::new(handle));
        (*file).base.pMethods = &IO_METHODS;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_delete(_vfs: *mut ffi::sqlite3_vfs, name: *const c_char, _sync_dir: c_int) -> c_int {
    let Some(name) = (unsafe { name_of(name) }) else { return ffi::SQLITE_IOERR_DELETE };
    match volume_of(&name) {
        Some(volume) => code(volume.delete(&name)),
        None => ffi::SQLITE_IOERR_DELETE,
    }
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    let name = unsafe { name_of(name) }.unwrap_or_default();
    let exists = volume_of(&name).is_some_and(|volume| volume.exists(&name));
    unsafe { *out = exists as c_int };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    out_len: c_int,
    out: *mut c_char,
) -> c_int {
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes_with_nul();
    if bytes.len() > out_len.max(0) as usize {
        return ffi::SQLITE_CANTOPEN;
    }
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len()) };
    ffi::SQLITE_OK
}

/// SQLite seeds its generator from the default VFS, not this one; these bytes are fixed anyway,
/// so nothing the disk does depends on the machine.
unsafe extern "C" fn x_randomness(_vfs: *mut ffi::sqlite3_vfs, count: c_int, out: *mut c_char) -> c_int {
    let count = count.max(0) as usize;
    unsafe { std::slice::from_raw_parts_mut(out as *mut u8, count) }.fill(0x5a);
    count as c_int
}

/// The simulation owns time: SQLite never sleeps on its disk (one connection holds each file).
unsafe extern "C" fn x_sleep(_vfs: *mut ffi::sqlite3_vfs, microseconds: c_int) -> c_int {
    microseconds
}

/// A fixed time (the engine passes its clock to SQL as values, never asks SQLite for the date).
unsafe extern "C" fn x_current_time(_vfs: *mut ffi::sqlite3_vfs, julian_day: *mut f64) -> c_int {
    unsafe { *julian_day = 2_461_000.5 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_last_error(_vfs: *mut ffi::sqlite3_vfs, _len: c_int, _out: *mut c_char) -> c_int {
    0
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let handle = unsafe { Box::from_raw((*(file as *mut File)).handle) };
    match *handle {
        Handle::Named { volume, name, delete_on_close: true } => code(volume.delete(&name)),
        _ => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    out: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let buffer = unsafe { std::slice::from_raw_parts_mut(out as *mut u8, amount.max(0) as usize) };
    let offset = offset.max(0) as usize;
    code(match unsafe { handle(file) } {
        Handle::Named { volume, name, .. } => volume.read(name, offset, buffer),
        Handle::Anonymous(bytes) => read_at(bytes, offset, buffer),
    })
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let data = unsafe { std::slice::from_raw_parts(data as *const u8, amount.max(0) as usize) };
    let offset = offset.max(0) as usize;
    code(match unsafe { handle(file) } {
        Handle::Named { volume, name, .. } => volume.write(name, offset, data),
        Handle::Anonymous(bytes) => {
            write_at(bytes, offset, data);
            Ok(())
        }
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let size = size.max(0) as usize;
    code(match unsafe { handle(file) } {
        Handle::Named { volume, name, .. } => volume.truncate(name, size),
        Handle::Anonymous(bytes) => {
            bytes.truncate(size);
            Ok(())
        }
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    code(match unsafe { handle(file) } {
        Handle::Named { volume, name, .. } => volume.sync(name),
        Handle::Anonymous(_) => Ok(()),
    })
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, out: *mut i64) -> c_int {
    let size = match unsafe { handle(file) } {
        Handle::Named { volume, name, .. } => volume.size(name),
        Handle::Anonymous(bytes) => bytes.len(),
    };
    unsafe { *out = size as i64 };
    ffi::SQLITE_OK
}

/// One connection holds each file, in exclusive locking mode: every lock is granted.
unsafe extern "C" fn x_lock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(_file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(_file: *mut ffi::sqlite3_file, _op: c_int, _arg: *mut c_void) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    512
}

/// A write that is cut short keeps a prefix of itself and touches no other byte.
unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}

/// Version 1: no shared memory (the exclusive lock keeps the WAL index in the process) and no
/// memory-mapped pages.
static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_lock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

fn register() {
    let name = std::ffi::CString::new(VFS_NAME).expect("no nul in the name");
    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
        iVersion: 1,
        szOsFile: std::mem::size_of::<File>() as c_int,
        mxPathname: 1024,
        pNext: std::ptr::null_mut(),
        zName: name.into_raw(),
        pAppData: std::ptr::null_mut(),
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: None,
        xDlError: None,
        xDlSym: None,
        xDlClose: None,
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_last_error),
        xCurrentTimeInt64: None,
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    }));
    // SQLite keeps the pointer for the life of the process; the box is leaked for that.
    let result = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    assert_eq!(result, ffi::SQLITE_OK, "registering the simulation's disk with SQLite");
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn open(path: &Path, synchronous: &str) -> Connection {
        let db = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), VFS_NAME).unwrap();
        db.pragma_update(None, "locking_mode", "EXCLUSIVE").unwrap();
        db.pragma_update(None, "journal_mode", "WAL").unwrap();
        db.pragma_update(None, "synchronous", synchronous).unwrap();
        db.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)").unwrap();
        db
    }

    fn rows(db: &Connection) -> i64 {
        db.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0)).unwrap()
    }

    /// Commits `count` rows one at a time, then loses the power with `arm` writes to go (`None`:
    /// cut between writes) during one more commit, restores with `seed`, and reopens: returns the
    /// rows committed before, the rows found after, and the loss.
    fn check(synchronous: &str, count: i64, arm: Option<u64>, seed: u64) -> (i64, i64, Loss) {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::mount(dir.path());
        let path = dir.path().join("room.sqlite");
        let db = open(&path, synchronous);
        for id in 0..count {
            db.execute("INSERT INTO t VALUES (?1, ?2)", (id, "x".repeat(300))).unwrap();
        }
        let committed = rows(&db);
        match arm {
            Some(writes_left) => disk.arm(writes_left),
            None => disk.cut(),
        }
        // A row of many pages: the commit writes more than the armed count.
        let failed = db.execute("INSERT INTO t VALUES (?1, ?2)", (count, "lost".repeat(5_000)));
        assert!(failed.is_err(), "a commit after the power went out must fail");
        assert!(disk.is_out());
        drop(db);
        let loss = disk.restore(seed);
        let db = open(&path, synchronous);
        let integrity: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(integrity, "ok", "seed {seed}: the database survives the power loss intact");
        (committed, rows(&db), loss)
    }

    #[test]
    fn a_synced_commit_survives_every_power_loss() {
        for seed in 0..40 {
            let (committed, found, loss) = check("FULL", 20, Some(seed % 4), seed);
            assert_eq!(found, committed, "seed {seed}: {loss:?}");
            assert!(loss.torn_bytes.is_some(), "an armed loss tears the write it interrupts");
            let (committed, found, _) = check("FULL", 5, None, seed);
            assert_eq!(found, committed, "seed {seed}, a cut between writes");
        }
    }

    #[test]
    fn an_unsynced_commit_is_lost_to_some_power_loss() {
        let lost: Vec<u64> = (0..20).filter(|&seed| check("NORMAL", 20, None, seed).1 < 20).collect();
        assert!(!lost.is_empty(), "synchronous=NORMAL must lose commits to some power loss");
        let (_, found, loss) = check("NORMAL", 20, None, lost[0]);
        assert!(found < 20 && loss.dropped > 0, "{loss:?}");
    }

    #[test]
    fn a_path_outside_every_disk_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let _disk = Disk::mount(&dir.path().join("mounted"));
        let outside = dir.path().join("elsewhere.sqlite");
        let opened = Connection::open_with_flags_and_vfs(&outside, OpenFlags::default(), VFS_NAME)
            .and_then(|db| db.execute_batch("CREATE TABLE t (x)"));
        assert!(opened.is_err());
    }
}
