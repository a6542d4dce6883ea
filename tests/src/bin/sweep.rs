//! Benchmark load: a credential sweep. Opens ROOT/d<i>/.ssh/id_rsa for i in 0..COUNT once
//! each (distinct files a catalogue suffix matches), as fast as it can; prints ns per open.
//! Usage: credwatch-sweep ROOT COUNT

use std::{ffi::CString, time::Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let root = args.next().expect("ROOT");
    let count: u64 = args.next().and_then(|n| n.parse().ok()).expect("COUNT");
    let paths: Vec<CString> = (0..count)
        .map(|i| CString::new(format!("{root}/d{i}/.ssh/id_rsa")).expect("no NUL"))
        .collect();
    let start = Instant::now();
    for path in &paths {
        // SAFETY: valid C string; the fd is closed right away.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open failed: {}", std::io::Error::last_os_error());
        unsafe { libc::close(fd) };
    }
    println!("{:.1}", start.elapsed().as_nanos() as f64 / count as f64);
}
