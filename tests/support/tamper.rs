//! Tampering with a stopped node's evidence log as an insider with the database would: a copy of
//! the node's folder, its records read and written back one per row as text (the store keeps each
//! commit's records in one lz4-packed row; a row of one line of text is a record as well), the
//! chain's hashes recomputed or not. A node on a PostgreSQL store gets a copy of its database.

use std::path::{Path, PathBuf};

use ferry::evidence::{Record, GENESIS};
use ferry::store::Location;

/// A copy of a node's folder (config, certificates, data) whose log is tampered with.
pub struct Copy {
    /// The copy's folder.
    pub dir: PathBuf,
}

impl Copy {
    /// Copies the stopped node's folder `dir` to `to` (replacing what is there).
    pub fn of(dir: &Path, to: &Path) -> Copy {
        let _ = std::fs::remove_dir_all(to);
        copy_dir(dir, to);
        let copy = Copy { dir: to.to_owned() };
        if let Location::Postgres { url, .. } = copy.location() {
            let text = std::fs::read_to_string(copy.config()).unwrap();
            std::fs::write(copy.config(), text.replace(&url, &super::postgres::copy_database(&url))).unwrap();
        }
        copy
    }

    /// Where the copy's store is.
    fn location(&self) -> Location {
        ferry::config::Config::load(&self.config()).unwrap().store_location()
    }

    /// The copy's config.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config/ferry.toml")
    }

    /// The log's records, in order.
    pub fn records(&self) -> Vec<Record> {
        let location = self.location();
        let read = move || {
            ferry::store::read_log(&location, 0)
                .unwrap()
                .map(|read| serde_json::from_str(&read.unwrap().1).unwrap())
                .collect()
        };
        std::thread::spawn(read).join().unwrap()
    }

    /// Writes `records` back as the whole log, one row each; with `rechain`, each record's seq,
    /// `prev` and `hash` recomputed as if the log had always been so.
    pub fn write(&self, mut records: Vec<Record>, rechain: bool) {
        if rechain {
            let mut prev = GENESIS.to_owned();
            for (seq, record) in (1..).zip(records.iter_mut()) {
                record.seq = seq;
                record.prev = prev;
                record.hash = record.chain_hash();
                prev = record.hash.clone();
            }
        }
        let rows: Vec<(i64, String)> = records.iter().map(|r| (r.seq, serde_json::to_string(r).unwrap())).collect();
        match self.location() {
            Location::Sqlite(data) => {
                let db = rusqlite::Connection::open(data.join("ferry.db")).unwrap();
                db.execute("DELETE FROM evidence", []).unwrap();
                for (seq, text) in &rows {
                    db.execute("INSERT INTO evidence (seq, records) VALUES (?1, ?2)", rusqlite::params![seq, text])
                        .unwrap();
                }
            }
            // PostgreSQL keeps blocks as bytes: each row one record, packed as the node packs them.
            Location::Postgres { url, member, .. } => std::thread::spawn(move || {
                let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                db.execute("DELETE FROM evidence WHERE member = $1", &[&member]).unwrap();
                for (seq, text) in &rows {
                    let packed = lz4_flex::block::compress_prepend_size(text.as_bytes());
                    db.execute(
                        "INSERT INTO evidence (member, seq, records) VALUES ($1, $2, $3)",
                        &[&member, seq, &packed],
                    )
                    .unwrap();
                }
            })
            .join()
            .unwrap(),
        }
    }

    /// `ferry audit verify ARGS` on the copy (bounded): the exit code, stdout and stderr.
    pub fn verify(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = super::cli::ferry_cmd();
        cmd.args(["audit", "verify"]).args(args).arg("--config").arg(self.config());
        let out = super::cli::run_bounded(&mut cmd, std::time::Duration::from_secs(60));
        (out.status.code().unwrap_or(-1), super::cli::stdout(&out), super::cli::stderr(&out))
    }
}

/// `records` without the time-stamp records and this node's checkpoint records (`out`) of heads
/// at seq `from` or later: what an insider who changes the log from `from` on also removes, since
/// they would show the change.
pub fn unanchored(records: Vec<Record>, from: i64) -> Vec<Record> {
    let shows = |r: &Record| match (&r.entry.timestamp, &r.entry.checkpoint) {
        (Some(stamp), _) => stamp.seq >= from,
        (_, Some(checkpoint)) => r.entry.direction == "out" && checkpoint.head.seq as i64 >= from,
        _ => false,
    };
    records.into_iter().filter(|r| !shows(r)).collect()
}

/// Copies the folder `from` to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
