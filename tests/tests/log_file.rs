//! The forensic log file when the disk fills: on a deliberately tiny tmpfs, writes fail with
//! ENOSPC, the file keeps only whole records (a half-written line is cut back off), and writing
//! resumes once there is space again.

use std::{ffi::CString, path::Path};

use credwatch::sinks::logfile::LogFile;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let options = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: valid C strings; root is required (the privileged suite runs as root).
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: unmounting what we mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_disk_leaves_only_whole_records_and_writing_resumes() {
    let dir = std::env::temp_dir().join(format!("credwatch-full-{}", std::process::id()));
    let _fs = Tmpfs::mount(&dir, "16k");
    let path = dir.join("credwatch.jsonl");
    let mut log = LogFile::open(&path, 1 << 20, 1).unwrap();
    let line = |n: usize| format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "p".repeat(700)).into_bytes();
    let mut failures = 0;
    let mut written = 0;
    for n in 0..40 {
        match log.write_line(&line(n)) {
            Ok(()) => written += 1,
            Err(err) => {
                assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
                failures += 1;
            }
        }
    }
    assert!(
        written > 0 && failures > 0,
        "{written} written, {failures} failed"
    );
    let check_whole = || {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("partial record {l:?}: {e}"));
        }
        text.lines().count()
    };
    assert_eq!(check_whole(), written);
    // Space comes back (an operator deletes the full file): the log recreates it and resumes.
    std::fs::remove_file(&path).unwrap();
    log.write_line(&line(99)).unwrap();
    assert_eq!(check_whole(), 1);
}
