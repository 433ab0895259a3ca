//! The daemon's SQLite store: VMs and images, WAL mode, versioned migrations.
//! Every multi-row change runs in one transaction, so a killed daemon leaves
//! either the old state or the new one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use banger_proto::{Backend, DiskSize, Image, MemoryMib, VmId, VmName, VmState};
use rusqlite::{Connection, OptionalExtension, Row, params};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening state database {0}")]
    Open(PathBuf, #[source] rusqlite::Error),
    #[error("migrating state database to schema version {0}")]
    Migrate(usize, #[source] rusqlite::Error),
    #[error(
        "state database has schema version {found}, newer than this bangerd understands ({known}): upgrade banger"
    )]
    TooNew { found: usize, known: usize },
    #[error("state database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("stored VM {id} has an invalid {field} {value:?}")]
    BadRow {
        id: String,
        field: &'static str,
        value: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Schema versions in order; index + 1 is the `user_version` after applying.
const MIGRATIONS: &[&str] = &[
    // 1: VMs and images.
    "CREATE TABLE vms (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        image TEXT NOT NULL,
        vmm TEXT NOT NULL,
        vcpu INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        disk_size_bytes INTEGER NOT NULL,
        nat INTEGER NOT NULL DEFAULT 0,
        guest_ip TEXT UNIQUE,
        tap TEXT UNIQUE,
        vsock_cid INTEGER UNIQUE,
        vsock_path TEXT,
        pid INTEGER,
        pid_start_time INTEGER,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        stopped_at INTEGER,
        exit_reason TEXT,
        last_error TEXT
    );
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        rootfs TEXT NOT NULL,
        kernel TEXT,
        initrd TEXT,
        modules_dir TEXT,
        docker INTEGER NOT NULL DEFAULT 0,
        managed INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );",
    // 2: published ports, `PortMapping`s separated by spaces.
    "ALTER TABLE vms ADD COLUMN publish TEXT NOT NULL DEFAULT '';",
    // 3: what `image build` records: packages (one per line), their hash,
    // the base, the log and the build's length.
    "ALTER TABLE images ADD COLUMN packages TEXT NOT NULL DEFAULT '';
    ALTER TABLE images ADD COLUMN packages_sha256 TEXT;
    ALTER TABLE images ADD COLUMN base TEXT;
    ALTER TABLE images ADD COLUMN build_log TEXT;
    ALTER TABLE images ADD COLUMN build_secs INTEGER;",
];

/// The VM model, stored: the daemon's rows are the one [`VmRecord`].
pub use banger_proto::VmRecord;

const VM_COLUMNS: &str = "id, name, state, image, vmm, vcpu, memory_mib, disk_size_bytes, nat,
    guest_ip, tap, vsock_cid, vsock_path, pid, pid_start_time, created_at, started_at,
    stopped_at, exit_reason, last_error, publish";

const IMAGE_COLUMNS: &str =
    "name, rootfs, kernel, initrd, modules_dir, docker, managed, created_at,
    packages, packages_sha256, base, build_log, build_secs";

/// Space held back beside the database: released when SQLite finds the disk
/// full, so the writes that free space (stop, delete) still commit.
pub const RESERVE_BYTES: u64 = 8 << 20;

#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    /// `banger.db.reserve`; `None` for an in-memory store.
    reserve: Option<PathBuf>,
    /// Bumped by every change to the `vms` table, under the connection's
    /// lock: readers cache what they derive from the VM list against it.
    vms_generation: AtomicU64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| StoreError::Open(path.into(), e))?;
        let reserve = PathBuf::from(format!("{}.reserve", path.display()));
        if let Err(e) = refill_reserve(&reserve) {
            tracing::warn!(reserve = %reserve.display(), error = %e, "no space held back for a full disk");
        }
        let mut store = Self::init(conn).map_err(|e| match e {
            StoreError::Query(q) => StoreError::Open(path.into(), q),
            other => other,
        })?;
        store.reserve = Some(reserve);
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(Duration::from_secs(5))?;
        // In-memory databases answer "memory"; files switch to WAL.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            reserve: None,
            vms_generation: AtomicU64::new(0),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent
        // (the transaction rolls back on drop), so the poison is ignored.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn schema_version(&self) -> Result<usize> {
        Ok(user_version(&self.conn())?)
    }

    pub fn list_vms(&self) -> Result<Vec<VmRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {VM_COLUMNS} FROM vms ORDER BY created_at, name"
        ))?;
        let rows = stmt.query_map([], vm_from_row)?;
        rows.map(|r| r?.into_record()).collect()
    }

    /// Changes whenever a VM row is inserted, updated or deleted. Read it
    /// before reading the rows, so a cached copy is never newer than its tag.
    pub fn vms_generation(&self) -> u64 {
        self.vms_generation.load(Ordering::SeqCst)
    }

    fn vms_changed(&self) {
        self.vms_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// SQLite's own check of the database file: `ok` when intact.
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    pub fn vm_count(&self) -> Result<u64> {
        Ok(self
            .conn()
            .query_row("SELECT COUNT(*) FROM vms", [], |r| r.get(0))?)
    }

    pub fn get_vm(&self, id: &str) -> Result<Option<VmRecord>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {VM_COLUMNS} FROM vms WHERE id = ?1"))?;
        stmt.query_row([id], vm_from_row)
            .optional()?
            .map(RawVm::into_record)
            .transpose()
    }

    /// Runs `change` in one transaction: every write it makes lands, or
    /// none does (an error, a panic or a killed daemon rolls it back). On a
    /// full disk the reserve is released and `change` runs once more.
    pub fn write<T>(&self, mut change: impl FnMut(&Writer<'_>) -> Result<T>) -> Result<T> {
        match self.try_write(&mut change) {
            Err(StoreError::Query(e)) if is_disk_full(&e) && self.release_reserve() => {
                tracing::warn!(
                    "the disk holding the state database is full: released the reserved space to finish this write"
                );
                self.try_write(&mut change)
            }
            other => other,
        }
    }

    /// Frees the reserve; `false` when there is none left to free.
    fn release_reserve(&self) -> bool {
        self.reserve
            .as_deref()
            .is_some_and(|reserve| std::fs::remove_file(reserve).is_ok())
    }

    fn try_write<T>(&self, change: &mut impl FnMut(&Writer<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let writer = Writer {
            tx: &tx,
            vms_changed: std::cell::Cell::new(false),
        };
        let out = change(&writer)?;
        let vms_changed = writer.vms_changed.get();
        tx.commit()?;
        if vms_changed {
            self.vms_changed();
        }
        Ok(out)
    }

    pub fn insert_vm(&self, vm: &VmRecord) -> Result<()> {
        self.write(|w| w.insert_vm(vm))
    }

    /// Writes every column of an existing VM row.
    pub fn update_vm(&self, vm: &VmRecord) -> Result<()> {
        self.write(|w| w.update_vm(vm))
    }

    pub fn delete_vm(&self, id: &str) -> Result<()> {
        self.write(|w| w.delete_vm(id))
    }

    pub fn list_images(&self) -> Result<Vec<Image>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {IMAGE_COLUMNS} FROM images ORDER BY name"))?;
        let rows = stmt.query_map([], image_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn get_image(&self, name: &str) -> Result<Option<Image>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE name = ?1"
        ))?;
        Ok(stmt.query_row([name], image_from_row).optional()?)
    }

    /// Inserts or replaces an image by name.
    pub fn put_image(&self, image: &Image) -> Result<()> {
        self.write(|w| w.put_image(image))
    }

    pub fn delete_image(&self, name: &str) -> Result<()> {
        self.write(|w| w.delete_image(name))
    }

    pub fn images_in_use(&self, name: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT name FROM vms WHERE image = ?1 ORDER BY name")?;
        let rows = stmt.query_map([name], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The writes of one [`Store::write`] transaction.
#[derive(Debug)]
pub struct Writer<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    vms_changed: std::cell::Cell<bool>,
}

impl Writer<'_> {
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<()> {
        self.tx.execute(
            &format!(
                "INSERT INTO vms ({VM_COLUMNS}) VALUES
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
            ),
            rusqlite::params_from_iter(vm_params(vm)),
        )?;
        self.vms_changed.set(true);
        Ok(())
    }

    pub fn update_vm(&self, vm: &VmRecord) -> Result<()> {
        self.tx.execute(
            "UPDATE vms SET name = ?2, state = ?3, image = ?4, vmm = ?5, vcpu = ?6,
                memory_mib = ?7, disk_size_bytes = ?8, nat = ?9, guest_ip = ?10, tap = ?11,
                vsock_cid = ?12, vsock_path = ?13, pid = ?14, pid_start_time = ?15,
                created_at = ?16, started_at = ?17, stopped_at = ?18, exit_reason = ?19,
                last_error = ?20, publish = ?21
             WHERE id = ?1",
            rusqlite::params_from_iter(vm_params(vm)),
        )?;
        self.vms_changed.set(true);
        Ok(())
    }

    pub fn delete_vm(&self, id: &str) -> Result<()> {
        self.tx.execute("DELETE FROM vms WHERE id = ?1", [id])?;
        self.vms_changed.set(true);
        Ok(())
    }

    pub fn put_image(&self, image: &Image) -> Result<()> {
        self.tx.execute(
            &format!("INSERT OR REPLACE INTO images ({IMAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
            params![
                image.name,
                path_text(&image.rootfs),
                image.kernel.as_deref().map(path_text),
                image.initrd.as_deref().map(path_text),
                image.modules_dir.as_deref().map(path_text),
                image.docker,
                image.managed,
                image.created_at,
                image.packages.join("\n"),
                image.packages_sha256,
                image.base,
                image.build_log.as_deref().map(path_text),
                image.build_secs,
            ],
        )?;
        Ok(())
    }

    pub fn delete_image(&self, name: &str) -> Result<()> {
        self.tx
            .execute("DELETE FROM images WHERE name = ?1", [name])?;
        Ok(())
    }

    /// Points every VM of image `from` at image `to`.
    pub fn retarget_vms(&self, from: &str, to: &str) -> Result<()> {
        self.tx
            .execute("UPDATE vms SET image = ?2 WHERE image = ?1", [from, to])?;
        self.vms_changed.set(true);
        Ok(())
    }
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Makes `reserve` hold [`RESERVE_BYTES`] of real (not sparse) blocks.
fn refill_reserve(reserve: &Path) -> std::io::Result<()> {
    if std::fs::metadata(reserve).is_ok_and(|m| m.len() == RESERVE_BYTES) {
        return Ok(());
    }
    let tmp = reserve.with_extension("reserve.tmp");
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        let block = vec![0u8; 1 << 20];
        for _ in 0..RESERVE_BYTES / (1 << 20) {
            std::io::Write::write_all(&mut file, &block)?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, reserve)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn user_version(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| usize::try_from(v).unwrap_or(0))
}

fn migrate(conn: &Connection) -> Result<()> {
    let current = user_version(conn)?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        let apply = || -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        apply().map_err(|e| StoreError::Migrate(version, e))?;
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A row before its texts are checked: the fields the model types.
struct RawVm {
    id: String,
    name: String,
    state: String,
    vmm: String,
    guest_ip: Option<String>,
    publish: String,
    rest: VmRecord,
}

impl RawVm {
    fn into_record(self) -> Result<VmRecord> {
        let bad = |field, value: &str| StoreError::BadRow {
            id: self.id.clone(),
            field,
            value: value.to_owned(),
        };
        let guest_ip = match &self.guest_ip {
            Some(text) => Some(text.parse().map_err(|_| bad("guest IP", text))?),
            None => None,
        };
        Ok(VmRecord {
            id: VmId::new(self.id.clone()),
            name: VmName::parse(&self.name).map_err(|_| bad("name", &self.name))?,
            state: VmState::parse(&self.state).ok_or_else(|| bad("state", &self.state))?,
            vmm: Backend::parse(&self.vmm).map_err(|_| bad("backend", &self.vmm))?,
            guest_ip,
            publish: self
                .publish
                .split_whitespace()
                .map(|text| text.parse().map_err(|_| bad("published port", text)))
                .collect::<Result<_>>()?,
            ..self.rest
        })
    }
}

fn vm_from_row(row: &Row<'_>) -> rusqlite::Result<RawVm> {
    Ok(RawVm {
        id: row.get(0)?,
        name: row.get(1)?,
        state: row.get(2)?,
        vmm: row.get(4)?,
        guest_ip: row.get(9)?,
        publish: row.get(20)?,
        // The typed fields are placeholders here, replaced by `into_record`.
        rest: VmRecord {
            id: VmId::new(String::new()),
            name: VmName::parse("x").expect("a valid name"),
            state: VmState::Failed,
            image: row.get(3)?,
            vmm: Backend::Firecracker,
            vcpu: row.get(5)?,
            memory_mib: MemoryMib(row.get(6)?),
            disk_size_bytes: DiskSize(row.get(7)?),
            nat: row.get(8)?,
            guest_ip: None,
            tap: row.get(10)?,
            vsock_cid: row.get(11)?,
            vsock_path: row.get::<_, Option<String>>(12)?.map(PathBuf::from),
            pid: row.get(13)?,
            pid_start_time: row.get(14)?,
            created_at: row.get(15)?,
            started_at: row.get(16)?,
            stopped_at: row.get(17)?,
            exit_reason: row.get(18)?,
            last_error: row.get(19)?,
            publish: Vec::new(),
        },
    })
}

fn vm_params(vm: &VmRecord) -> Vec<Box<dyn rusqlite::ToSql + '_>> {
    vec![
        Box::new(vm.id.as_ref() as &str),
        Box::new(vm.name.as_ref() as &str),
        Box::new(vm.state.as_str()),
        Box::new(&vm.image),
        Box::new(vm.vmm.as_str()),
        Box::new(vm.vcpu),
        Box::new(vm.memory_mib.0),
        Box::new(vm.disk_size_bytes.0),
        Box::new(vm.nat),
        Box::new(vm.guest_ip.map(|ip| ip.to_string())),
        Box::new(&vm.tap),
        Box::new(vm.vsock_cid),
        Box::new(vm.vsock_path.as_deref().map(path_text)),
        Box::new(vm.pid),
        Box::new(vm.pid_start_time),
        Box::new(vm.created_at),
        Box::new(vm.started_at),
        Box::new(vm.stopped_at),
        Box::new(&vm.exit_reason),
        Box::new(&vm.last_error),
        Box::new(
            vm.publish
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}

fn image_from_row(row: &Row<'_>) -> rusqlite::Result<Image> {
    Ok(Image {
        name: row.get(0)?,
        rootfs: PathBuf::from(row.get::<_, String>(1)?),
        kernel: row.get::<_, Option<String>>(2)?.map(PathBuf::from),
        initrd: row.get::<_, Option<String>>(3)?.map(PathBuf::from),
        modules_dir: row.get::<_, Option<String>>(4)?.map(PathBuf::from),
        docker: row.get(5)?,
        managed: row.get(6)?,
        created_at: row.get(7)?,
        packages: row
            .get::<_, String>(8)?
            .lines()
            .map(str::to_owned)
            .collect(),
        packages_sha256: row.get(9)?,
        base: row.get(10)?,
        build_log: row.get::<_, Option<String>>(11)?.map(PathBuf::from),
        build_secs: row.get(12)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_vm(id: &str, name: &str) -> VmRecord {
        VmRecord {
            id: VmId::new(id),
            name: VmName::parse(name).unwrap(),
            state: VmState::Stopped,
            image: "default".into(),
            vmm: Backend::Firecracker,
            vcpu: 2,
            memory_mib: MemoryMib(1024),
            disk_size_bytes: DiskSize(8 << 30),
            nat: false,
            guest_ip: None,
            tap: None,
            vsock_cid: Some(3),
            vsock_path: Some(PathBuf::from("/s/vms/x/vsock.sock")),
            pid: None,
            pid_start_time: None,
            created_at: 1_700_000_000,
            started_at: None,
            stopped_at: None,
            exit_reason: None,
            last_error: None,
            publish: Vec::new(),
        }
    }

    #[test]
    fn migrates_from_empty_and_reopens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("banger.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        store.insert_vm(&sample_vm("a1", "calm-otter")).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_vms().unwrap().len(), 1);
    }

    #[test]
    fn a_version_1_database_gains_published_ports_keeping_its_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("banger.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO vms (id, name, state, image, vmm, vcpu, memory_mib, disk_size_bytes, created_at)
                 VALUES ('a1', 'calm-otter', 'stopped', 'default', 'qemu', 2, 1024, 1073741824, 1)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut vm = store.get_vm("a1").unwrap().unwrap();
        assert!(vm.publish.is_empty());
        vm.publish = vec![
            "8080:80".parse().unwrap(),
            "0.0.0.0:2222:22".parse().unwrap(),
        ];
        store.update_vm(&vm).unwrap();
        assert_eq!(store.get_vm("a1").unwrap().unwrap().publish, vm.publish);
    }

    #[test]
    fn every_vm_change_moves_the_generation() {
        let store = Store::open_in_memory().unwrap();
        let mut seen = vec![store.vms_generation()];
        let mut vm = sample_vm("a1", "calm-otter");
        store.insert_vm(&vm).unwrap();
        seen.push(store.vms_generation());
        vm.state = VmState::Running;
        store.update_vm(&vm).unwrap();
        seen.push(store.vms_generation());
        store.list_vms().unwrap();
        store.get_vm("a1").unwrap();
        assert_eq!(store.vms_generation(), seen[2], "reads change nothing");
        store.delete_vm("a1").unwrap();
        seen.push(store.vms_generation());
        seen.dedup();
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("banger.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let msg = Store::open(&path).unwrap_err().to_string();
        assert!(
            msg.contains("99") && msg.contains("upgrade banger"),
            "{msg}"
        );
    }

    #[test]
    fn a_row_the_model_cannot_hold_is_named_not_guessed() {
        let store = Store::open_in_memory().unwrap();
        let mut vm = sample_vm("a1", "calm-otter");
        vm.guest_ip = Some(std::net::Ipv4Addr::new(10, 219, 0, 2));
        store.insert_vm(&vm).unwrap();
        assert_eq!(
            store.get_vm("a1").unwrap().unwrap(),
            vm,
            "typed fields round-trip"
        );
        store
            .conn()
            .execute("UPDATE vms SET vmm = 'xen' WHERE id = 'a1'", [])
            .unwrap();
        let err = store.get_vm("a1").unwrap_err().to_string();
        assert_eq!(err, "stored VM a1 has an invalid backend \"xen\"");
    }

    #[test]
    fn vm_round_trip_and_unique_names() {
        let store = Store::open_in_memory().unwrap();
        let mut vm = sample_vm("a1", "calm-otter");
        store.insert_vm(&vm).unwrap();
        assert_eq!(store.get_vm("a1").unwrap().unwrap(), vm);
        vm.state = VmState::Running;
        vm.pid = Some(42);
        vm.exit_reason = Some("signal SIGKILL".into());
        store.update_vm(&vm).unwrap();
        assert_eq!(store.get_vm("a1").unwrap().unwrap(), vm);
        assert!(
            store.insert_vm(&sample_vm("b2", "calm-otter")).is_err(),
            "duplicate name"
        );
        store.delete_vm("a1").unwrap();
        assert!(store.get_vm("a1").unwrap().is_none());
    }

    #[test]
    fn image_round_trip() {
        let store = Store::open_in_memory().unwrap();
        let image = Image {
            name: "default".into(),
            rootfs: "/r/rootfs.ext4".into(),
            kernel: Some("/r/vmlinux".into()),
            initrd: None,
            modules_dir: None,
            docker: true,
            managed: false,
            created_at: 5,
            ..Default::default()
        };
        store.put_image(&image).unwrap();
        assert_eq!(store.list_images().unwrap(), vec![image.clone()]);
        assert_eq!(store.get_image("default").unwrap(), Some(image.clone()));
        let built = Image {
            name: "dev".into(),
            managed: true,
            packages: vec!["git".into(), "tmux".into()],
            packages_sha256: Some("ab".repeat(32)),
            base: Some("default".into()),
            build_log: Some("/s/image-build/dev.log".into()),
            build_secs: Some(300),
            ..image.clone()
        };
        store.put_image(&built).unwrap();
        assert_eq!(store.get_image("dev").unwrap(), Some(built));
        store.delete_image("default").unwrap();
        store.delete_image("dev").unwrap();
        assert!(store.list_images().unwrap().is_empty());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let store = Store::open_in_memory().unwrap();
        let generation = store.vms_generation();
        let err = store
            .write(|w| {
                w.insert_vm(&sample_vm("aa", "first"))?;
                w.insert_vm(&sample_vm("aa", "same-id"))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Query(_)), "{err:?}");
        assert_eq!(store.vm_count().unwrap(), 0, "the first insert rolled back");
        assert_eq!(store.vms_generation(), generation);
        let mut second = sample_vm("bb", "second");
        second.vsock_cid = Some(4);
        store
            .write(|w| {
                w.insert_vm(&sample_vm("aa", "first"))?;
                w.insert_vm(&second)
            })
            .unwrap();
        assert_eq!(store.vm_count().unwrap(), 2);
        assert!(store.vms_generation() > generation);
    }

    /// A tmpfs of `size`, unmounted when dropped.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount(size: &str) -> Option<Self> {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(Self(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.0.path())
                .status();
        }
    }

    /// The state's disk fills up: the write that finds it full still
    /// commits (the reserve is released for it), later ones fail cleanly,
    /// and reads keep working.
    #[test]
    fn a_full_disk_releases_the_reserve_for_the_next_write() {
        if !banger_testkit::require(
            banger_testkit::is_root(),
            "a_full_disk_releases_the_reserve_for_the_next_write",
            "needs root to mount a small tmpfs (CI runs as root)",
        ) {
            return;
        }
        let disk = SmallDisk::mount("16m").expect("mounting a 16 MiB tmpfs");
        let db = disk.0.path().join("banger.db");
        let store = Store::open(&db).unwrap();
        let reserve = disk.0.path().join("banger.db.reserve");
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);
        // Everything else on the disk is taken.
        let mut filler = std::fs::File::create(disk.0.path().join("filler")).unwrap();
        let block = vec![1u8; 64 << 10];
        while std::io::Write::write_all(&mut filler, &block).is_ok() {}
        let (mut written, mut after_release) = (0u32, 0u32);
        let err = loop {
            let mut vm = sample_vm(&format!("{written:032x}"), &format!("vm-{written}"));
            vm.vsock_cid = None;
            vm.exit_reason = Some("x".repeat(2000));
            match store.insert_vm(&vm) {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
            if !reserve.exists() {
                after_release += 1;
            }
            assert!(written < 100_000, "the disk never filled");
        };
        assert!(!reserve.exists(), "the reserve was released");
        assert!(
            after_release > 0,
            "the write that found the disk full committed"
        );
        assert!(
            matches!(&err, StoreError::Query(e) if is_disk_full(e)),
            "{err:?}"
        );
        assert_eq!(
            store.vm_count().unwrap(),
            u64::from(written),
            "reads still work"
        );
        // Freeing space (deleting a VM's disks) lets writes go on.
        drop(filler);
        std::fs::remove_file(disk.0.path().join("filler")).unwrap();
        store.delete_vm(&format!("{:032x}", 0)).unwrap();
        let check: String = store
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    /// The child half of `killed_writer_leaves_database_consistent`: writes
    /// pairs of rows in transactions until it is killed.
    #[test]
    #[ignore = "run only as the child process of killed_writer_leaves_database_consistent"]
    fn writer_child() {
        let Some(path) = std::env::var_os("BANGER_TEST_WRITER_DB") else {
            return;
        };
        let store = Store::open(Path::new(&path)).unwrap();
        for i in 0u64.. {
            store
                .write(|w| {
                    for half in ["a", "b"] {
                        let mut vm = sample_vm(&format!("{i}{half}"), &format!("vm-{i}-{half}"));
                        vm.vsock_cid = None;
                        w.insert_vm(&vm)?;
                    }
                    Ok(())
                })
                .unwrap();
        }
    }

    #[test]
    fn killed_writer_leaves_database_consistent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("banger.db");
        Store::open(&path).unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::writer_child",
                "--ignored",
                "--nocapture",
            ])
            .env("BANGER_TEST_WRITER_DB", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it commit some transactions, then kill it mid-write.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let count = Store::open(&path).unwrap().vm_count().unwrap();
            if count >= 50 || std::time::Instant::now() > deadline {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let store = Store::open(&path).unwrap();
        let check: String = store
            .conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let count = store.vm_count().unwrap();
        assert!(count >= 50, "the writer committed only {count} rows");
        assert_eq!(count % 2, 0, "a transaction was half applied: {count} rows");
    }
}
