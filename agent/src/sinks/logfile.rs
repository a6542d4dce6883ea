//! The forensic log file: created 0600 (directories 0700), rotated by size keeping `keep` old
//! files (`<path>.1` newest), recreated when deleted, and never left with a partial line: a write
//! that fails half-way (disk full) is cut back, reported, and the next record tries again.
//! Lines can be queued (`queue`) and written together (`flush`): one write and one look at
//! the path per batch instead of per record, which is what keeps a burst of records cheap.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    max_bytes: u64,
    keep: u32,
    /// Whole lines queued for the next `flush`, and how many.
    queued: Vec<u8>,
    queued_lines: usize,
}

/// A batch that could not be written: why, and how many records it held.
#[derive(Debug)]
pub struct Unwritten {
    pub error: io::Error,
    pub lines: usize,
}

impl LogFile {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = open_private(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(1),
            keep,
            queued: Vec::new(),
            queued_lines: 0,
        })
    }

    /// Appends one complete line (with its newline), or nothing.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.queue(line).map_err(|u| u.error)?;
        self.flush().map_err(|u| u.error)
    }

    /// Queues one complete line for the next `flush` (which happens first when the line
    /// would take the file past its size limit).
    pub fn queue(&mut self, line: &[u8]) -> Result<(), Unwritten> {
        let after = self.size + (self.queued.len() + line.len()) as u64;
        if after > self.max_bytes && !self.queued.is_empty() {
            self.flush()?;
        }
        self.queued.extend_from_slice(line);
        self.queued_lines += 1;
        Ok(())
    }

    /// Writes the queued lines, all or none of them.
    pub fn flush(&mut self) -> Result<(), Unwritten> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.queued_lines);
        let mut batch = std::mem::take(&mut self.queued);
        let written = self.write_batch(&batch);
        // The buffer is kept for the next batch: freeing and regrowing megabytes per flush
        // cost the allocator more than the JSON did (malloc_consolidate in profiles).
        batch.clear();
        self.queued = batch;
        written.map_err(|error| Unwritten { error, lines })
    }

    fn write_batch(&mut self, batch: &[u8]) -> io::Result<()> {
        if self.replaced_or_deleted() {
            self.reopen()?;
        }
        if self.size > 0 && self.size + batch.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        match self.file.write_all(batch) {
            Ok(()) => {
                self.size += batch.len() as u64;
                Ok(())
            }
            Err(err) => {
                // Cut a partially written batch back off, so readers never see half a record.
                let _ = self.file.set_len(self.size);
                Err(err)
            }
        }
    }

    /// The path no longer names our file (deleted, or moved away by someone else's rotation).
    fn replaced_or_deleted(&self) -> bool {
        let ours = self.file.metadata().map(|m| (m.dev(), m.ino(), m.nlink()));
        let named = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        match (ours, named) {
            (Ok((dev, ino, links)), Ok(named)) => links == 0 || named != (dev, ino),
            _ => true,
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = open_private(&self.path)?;
        self.size = self.file.metadata()?.len();
        Ok(())
    }

    /// `<path>.N-1` → `<path>.N`, …, `<path>` → `<path>.1`; the oldest beyond `keep` is dropped.
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.reopen()
    }
}

fn open_private(path: &Path) -> io::Result<File> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn line(n: usize) -> Vec<u8> {
        format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(40)).into_bytes()
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files_of_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/credwatch.jsonl");
        let mut log = LogFile::open(&path, 500, 2).unwrap();
        for n in 0..60 {
            log.write_line(&line(n)).unwrap();
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let mut files: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 3, "current + 2 kept: {files:?}");
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.len() <= 500, "{} is {} bytes", f.display(), text.len());
            for l in text.lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
        // The newest records are in the current file, the ones before in .1.
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"n\":59"));
    }

    #[test]
    fn a_deleted_log_is_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credwatch.jsonl");
        let mut log = LogFile::open(&path, 1 << 20, 1).unwrap();
        log.write_line(&line(1)).unwrap();
        std::fs::remove_file(&path).unwrap();
        log.write_line(&line(2)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            String::from_utf8(line(2)).unwrap()
        );
    }

    #[test]
    fn a_failed_write_is_reported() {
        // /dev/full fails every write with ENOSPC.
        let mut log = LogFile {
            path: "/dev/full".into(),
            file: OpenOptions::new().append(true).open("/dev/full").unwrap(),
            size: 0,
            max_bytes: 1 << 20,
            keep: 0,
            queued: Vec::new(),
            queued_lines: 0,
        };
        let err = log.write_line(&line(1)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        // A batch fails as a whole and says how many records it held.
        for n in 0..3 {
            log.queue(&line(n)).unwrap();
        }
        let unwritten = log.flush().unwrap_err();
        assert_eq!(unwritten.lines, 3);
        assert!(log.flush().is_ok(), "nothing left queued");
    }

    #[test]
    fn queued_lines_reach_the_file_on_flush_and_rotation_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credwatch.jsonl");
        let mut log = LogFile::open(&path, 500, 1).unwrap();
        for n in 0..5 {
            log.queue(&line(n)).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "queued, not written"
        );
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
        // More than a file holds: flushed early, rotated, and no file over the limit.
        for n in 5..40 {
            log.queue(&line(n)).unwrap();
        }
        log.flush().unwrap();
        for f in [path.clone(), dir.path().join("credwatch.jsonl.1")] {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(text.len() <= 500, "{} is {} bytes", f.display(), text.len());
        }
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"n\":39"));
    }
}
