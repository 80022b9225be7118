//! Deleting and relabelling a user's images so that nothing is ever lost: a delete moves the file into
//! `DATA/.finetune-trash/<class>/` (hidden, so training never sees it), a relabel moves it to the
//! sibling class folder, no move ever overwrites a file (a clash gets a `-1`, `-2`… suffix), and every
//! action is appended to `DATA/.finetune-trash/actions.jsonl` *before* the file moves, so the log always
//! knows where a file may be. Undo and `--restore` are further log entries, never rewrites of it.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// The hidden folder that holds deleted images and the log.
pub const TRASH: &str = ".finetune-trash";
pub const LOG: &str = "actions.jsonl";
/// The log is read whole on open; a million actions fit in far less.
const MAX_LOG_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TrashError {
    #[error("{path} is outside the data folder {root}; only files under it can be touched")]
    Outside { path: PathBuf, root: PathBuf },
    #[error("`{0}` is not a class name (one folder name, without `/`, `\\` or `..`)")]
    BadLabel(String),
    #[error("{0} has a name that is not UTF-8; rename it to clean it here")]
    NotUtf8(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line} is not an action ({msg}); fix or remove that line")]
    Log {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("nothing to undo")]
    NothingToUndo,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TrashError + 'a {
    move |source| TrashError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Delete,
    Move,
    Undo,
}

/// One line of the log. Paths are relative to the data folder, `/`-separated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// Unix seconds.
    pub time: u64,
    pub action: Kind,
    pub from: String,
    pub to: String,
    /// For an undo: the action it reverses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of: Option<u64>,
    /// For an undo: the file was no longer where the action had put it, so nothing moved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

/// A data folder's trash and action log.
pub struct Trash {
    root: PathBuf,
    entries: Vec<Entry>,
    /// The highest sequence number in the log, so an action numbers itself without a scan.
    last_seq: u64,
}

impl Trash {
    /// Reads the log of `data` (none yet is an empty one).
    pub fn open(data: &Path) -> Result<Trash, TrashError> {
        let root = data.canonicalize().map_err(io("open", data))?;
        let log = root.join(TRASH).join(LOG);
        let mut entries = Vec::new();
        if log.exists() {
            let bytes = crate::data::files::read_capped(&log, MAX_LOG_BYTES).map_err(|e| {
                TrashError::Io {
                    what: "read",
                    path: log.clone(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
            let text = String::from_utf8_lossy(&bytes);
            let complete = text.ends_with('\n');
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Entry>(l) {
                    Ok(e) => entries.push(e),
                    // A crash while appending leaves a partial last line: that action never
                    // happened (the log is written before the file moves, and the write failed).
                    Err(_) if i + 1 == lines.len() && !complete => {
                        eprintln!(
                            "warning: {} ends with an incomplete line (an interrupted write); ignored",
                            log.display()
                        );
                    }
                    Err(e) => {
                        return Err(TrashError::Log {
                            path: log,
                            line: i + 1,
                            msg: e.to_string(),
                        })
                    }
                }
            }
        }
        let last_seq = entries.iter().map(|e| e.seq).max().unwrap_or(0);
        Ok(Trash {
            root,
            entries,
            last_seq,
        })
    }

    /// The data folder, canonical.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Deletes and moves not undone, oldest first.
    pub fn active(&self) -> Vec<&Entry> {
        let undone: std::collections::HashSet<u64> =
            self.entries.iter().filter_map(|e| e.of).collect();
        self.entries
            .iter()
            .filter(|e| e.action != Kind::Undo && !undone.contains(&e.seq))
            .collect()
    }

    /// `p` resolved (symlinks followed) if it is a file under the data folder and outside the
    /// trash; anything else is refused, so no request can reach another file.
    pub fn inside(&self, p: &Path) -> Result<PathBuf, TrashError> {
        let c = p.canonicalize().map_err(io("open", p))?;
        if !c.starts_with(&self.root) {
            return Err(TrashError::Outside {
                path: p.to_path_buf(),
                root: self.root.clone(),
            });
        }
        Ok(c)
    }

    /// `path` relative to the data folder, as the log writes it.
    pub fn rel(&self, path: &Path) -> Result<String, TrashError> {
        let r = path
            .strip_prefix(&self.root)
            .map_err(|_| TrashError::Outside {
                path: path.to_path_buf(),
                root: self.root.clone(),
            })?;
        let parts: Option<Vec<&str>> = r.components().map(|c| c.as_os_str().to_str()).collect();
        parts
            .map(|p| p.join("/"))
            .ok_or_else(|| TrashError::NotUtf8(path.to_path_buf()))
    }

    fn abs(&self, rel: &str) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(rel.split('/'));
        p
    }

    /// Moves `file` (under the data folder) into the trash folder of `class`.
    pub fn delete(&mut self, file: &Path, class: &str) -> Result<(Entry, PathBuf), TrashError> {
        check_label(class)?;
        let dir = self.root.join(TRASH).join(class);
        self.relocate(Kind::Delete, file, &dir, None)
    }

    /// Moves `file` into the folder of class `label` beside its own class folder.
    pub fn relabel(&mut self, file: &Path, label: &str) -> Result<(Entry, PathBuf), TrashError> {
        check_label(label)?;
        let class_dir = file.parent().unwrap_or(&self.root);
        let dir = class_dir.parent().unwrap_or(&self.root).join(label);
        self.relocate(Kind::Move, file, &dir, None)
    }

    /// Reverses the newest action not yet undone; returns the undo entry and where the file is now.
    pub fn undo(&mut self) -> Result<(Entry, Option<PathBuf>), TrashError> {
        let last = self
            .active()
            .last()
            .map(|e| (*e).clone())
            .ok_or(TrashError::NothingToUndo)?;
        let now = self.abs(&last.to);
        let back = self.abs(&last.from);
        if now.symlink_metadata().is_err() {
            // Someone removed or moved the file since: record that it could not come back.
            let e = self.append(Kind::Undo, &last.to, &last.from, Some(last.seq), true)?;
            return Ok((e, None));
        }
        let dir = back.parent().unwrap_or(&self.root).to_path_buf();
        let name = back.file_name().map(|n| n.to_os_string());
        let (e, at) = self.relocate_named(Kind::Undo, &now, &dir, name, Some(last.seq))?;
        Ok((e, Some(at)))
    }

    /// Undoes every action, newest first (`finetune clean --restore`).
    pub fn restore(&mut self) -> Result<Vec<Entry>, TrashError> {
        let mut done = Vec::new();
        while !self.active().is_empty() {
            done.push(self.undo()?.0);
        }
        Ok(done)
    }

    fn relocate(
        &mut self,
        kind: Kind,
        file: &Path,
        dir: &Path,
        of: Option<u64>,
    ) -> Result<(Entry, PathBuf), TrashError> {
        // The file itself (a link is moved as a link) in its resolved folder, and only if what
        // it points to is inside the data folder too.
        self.inside(file)?;
        let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(TrashError::Outside {
                path: file.to_path_buf(),
                root: self.root.clone(),
            });
        };
        let file = self.inside(parent)?.join(name);
        if file.starts_with(self.root.join(TRASH)) {
            return Err(TrashError::Outside {
                path: file,
                root: self.root.clone(),
            });
        }
        let name = file.file_name().map(|n| n.to_os_string());
        self.relocate_named(kind, &file, dir, name, of)
    }

    /// Log first, then move without overwriting: a crash in between leaves a log entry whose
    /// file is still at `from`, which undo and restore handle (`missing`), never a lost file.
    fn relocate_named(
        &mut self,
        kind: Kind,
        file: &Path,
        dir: &Path,
        name: Option<std::ffi::OsString>,
        of: Option<u64>,
    ) -> Result<(Entry, PathBuf), TrashError> {
        let name = name.ok_or_else(|| TrashError::BadLabel(file.display().to_string()))?;
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let dir = self.inside(dir)?;
        let from = self.rel(file)?;
        for k in 0..10_000u32 {
            let cand = dir.join(suffixed(&name, k));
            if cand.symlink_metadata().is_ok() {
                continue;
            }
            let to = self.rel(&cand)?;
            let entry = self.append(kind, &from, &to, of, false)?;
            match place(file, &cand) {
                Ok(()) => return Ok((entry, cand)),
                // Taken between the check and the link (another program): try the next name,
                // after recording that this attempt moved nothing.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    self.append(Kind::Undo, &to, &from, Some(entry.seq), true)?;
                }
                Err(e) => {
                    self.append(Kind::Undo, &to, &from, Some(entry.seq), true)?;
                    return Err(TrashError::Io {
                        what: "move",
                        path: file.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        Err(TrashError::Io {
            what: "find a free name in",
            path: dir,
            source: std::io::Error::other("10000 names taken"),
        })
    }

    fn append(
        &mut self,
        action: Kind,
        from: &str,
        to: &str,
        of: Option<u64>,
        missing: bool,
    ) -> Result<Entry, TrashError> {
        let e = Entry {
            seq: self.last_seq + 1,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            action,
            from: from.to_string(),
            to: to.to_string(),
            of,
            missing,
        };
        let dir = self.root.join(TRASH);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let log = dir.join(LOG);
        let mut line = serde_json::to_string(&e).unwrap_or_default();
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io("open", &log))?;
        f.write_all(line.as_bytes()).map_err(io("write", &log))?;
        f.sync_data().map_err(io("write", &log))?;
        self.last_seq = e.seq;
        self.entries.push(e.clone());
        Ok(e)
    }
}

/// A class name is one ordinary folder name: it can never climb out of the data folder.
pub fn check_label(label: &str) -> Result<(), TrashError> {
    let mut comps = Path::new(label).components();
    let one_normal = matches!(comps.next(), Some(Component::Normal(_))) && comps.next().is_none();
    if !one_normal || label.contains(['/', '\\', '\0']) || label.starts_with('.') {
        return Err(TrashError::BadLabel(label.to_string()));
    }
    Ok(())
}

/// `name`, then `stem-1.ext`, `stem-2.ext`…
fn suffixed(name: &std::ffi::OsStr, k: u32) -> std::ffi::OsString {
    if k == 0 {
        return name.to_os_string();
    }
    let p = Path::new(name);
    let stem = p.file_stem().unwrap_or(name).to_string_lossy();
    match p.extension() {
        Some(ext) => format!("{stem}-{k}.{}", ext.to_string_lossy()).into(),
        None => format!("{stem}-{k}").into(),
    }
}

/// Moves `from` to `to` only if `to` does not exist. A hard link is the portable atomic
/// "create if absent" for an existing file (rename would replace); where the file system has no
/// hard links, a checked rename (nothing else moves files in the folder meanwhile but the user).
fn place(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => std::fs::remove_file(from),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => {
            if to.symlink_metadata().is_ok() {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            std::fs::rename(from, to)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("data");
        for (c, f) in [("cat", "a.jpg"), ("cat", "b.jpg"), ("dog", "a.jpg")] {
            std::fs::create_dir_all(d.join(c)).unwrap();
            std::fs::write(d.join(c).join(f), format!("{c}/{f}")).unwrap();
        }
        (t, d.canonicalize().unwrap())
    }

    #[test]
    fn delete_move_undo_restore_lose_nothing() {
        let (_t, d) = folder();
        let mut tr = Trash::open(&d).unwrap();
        let (e, at) = tr.delete(&d.join("cat/a.jpg"), "cat").unwrap();
        assert_eq!(e.to, ".finetune-trash/cat/a.jpg");
        assert_eq!(std::fs::read_to_string(&at).unwrap(), "cat/a.jpg");
        // dog/a.jpg exists: the move gets a suffix instead of overwriting it.
        let (e, at) = tr.relabel(&d.join("cat/b.jpg"), "dog").unwrap();
        assert_eq!(e.to, "dog/b.jpg");
        std::fs::write(d.join("cat/c.jpg"), "c").unwrap();
        std::fs::write(d.join("dog/c.jpg"), "other c").unwrap();
        let (e2, _) = tr.relabel(&d.join("cat/c.jpg"), "dog").unwrap();
        assert_eq!(e2.to, "dog/c-1.jpg");
        assert_eq!(
            std::fs::read_to_string(d.join("dog/c.jpg")).unwrap(),
            "other c"
        );
        assert_eq!(tr.active().len(), 3);
        // A fresh open reads the same state from the log.
        let mut tr = Trash::open(&d).unwrap();
        assert_eq!(tr.active().len(), 3);
        let (u, now) = tr.undo().unwrap();
        assert_eq!((u.of, u.to.as_str()), (Some(e2.seq), "cat/c.jpg"));
        assert_eq!(now.unwrap(), d.join("cat/c.jpg"));
        assert!(at.exists());
        let done = tr.restore().unwrap();
        assert_eq!(done.len(), 2);
        assert!(tr.active().is_empty());
        for (c, f, want) in [
            ("cat", "a.jpg", "cat/a.jpg"),
            ("cat", "b.jpg", "cat/b.jpg"),
            ("cat", "c.jpg", "c"),
            ("dog", "a.jpg", "dog/a.jpg"),
            ("dog", "c.jpg", "other c"),
        ] {
            assert_eq!(std::fs::read_to_string(d.join(c).join(f)).unwrap(), want);
        }
        assert!(matches!(tr.undo(), Err(TrashError::NothingToUndo)));
    }

    #[test]
    fn nothing_outside_the_folder_is_touched() {
        let (t, d) = folder();
        let outside = t.path().join("secret.jpg");
        std::fs::write(&outside, "secret").unwrap();
        let mut tr = Trash::open(&d).unwrap();
        for bad in ["..", "../x", "a/b", "/etc", ".finetune-trash", "", "a\\b"] {
            assert!(
                matches!(
                    tr.relabel(&d.join("cat/a.jpg"), bad),
                    Err(TrashError::BadLabel(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            tr.delete(&outside, "cat"),
            Err(TrashError::Outside { .. })
        ));
        assert!(matches!(
            tr.delete(&d.join("cat/../../secret.jpg"), "cat"),
            Err(TrashError::Outside { .. })
        ));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&outside, d.join("cat/link.jpg")).unwrap();
            assert!(matches!(
                tr.delete(&d.join("cat/link.jpg"), "cat"),
                Err(TrashError::Outside { .. })
            ));
            // A class folder that is a link out of the data folder is no destination.
            std::os::unix::fs::symlink(t.path(), d.join("out")).unwrap();
            assert!(matches!(
                tr.relabel(&d.join("cat/a.jpg"), "out"),
                Err(TrashError::Outside { .. })
            ));
        }
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
        assert!(d.join("cat/a.jpg").exists());
        assert!(tr.entries().is_empty(), "refusals are not logged");
    }

    #[test]
    fn a_torn_last_line_is_ignored_a_bad_middle_line_refused() {
        let (_t, d) = folder();
        let mut tr = Trash::open(&d).unwrap();
        tr.delete(&d.join("cat/a.jpg"), "cat").unwrap();
        let log = d.join(TRASH).join(LOG);
        let good = std::fs::read_to_string(&log).unwrap();
        std::fs::write(&log, format!("{good}{{\"seq\":2,\"ti")).unwrap();
        assert_eq!(Trash::open(&d).unwrap().active().len(), 1);
        std::fs::write(&log, format!("garbage\n{good}")).unwrap();
        let e = Trash::open(&d).err().unwrap().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn undo_of_a_vanished_file_is_recorded_not_stuck() {
        let (_t, d) = folder();
        let mut tr = Trash::open(&d).unwrap();
        let (_, at) = tr.delete(&d.join("cat/a.jpg"), "cat").unwrap();
        std::fs::remove_file(at).unwrap();
        let (u, now) = tr.undo().unwrap();
        assert!(u.missing && now.is_none());
        assert!(tr.active().is_empty());
    }
}
