//! Benchmark and flood load: open+close one file N times and print the mean ns per open.
//! Usage: credwatch-openloop PATH ITERATIONS [OTHER]
//! With OTHER, that file is opened once half-way through (a distinct access inside a flood).

use std::{ffi::CString, time::Instant};

fn open_close(path: &CString) {
    // SAFETY: valid C string; the fd is closed right away.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open failed: {}", std::io::Error::last_os_error());
    unsafe { libc::close(fd) };
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = CString::new(args.next().expect("PATH")).expect("no NUL in path");
    let iterations: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("ITERATIONS");
    let other = args
        .next()
        .map(|p| CString::new(p).expect("no NUL in path"));
    let start = Instant::now();
    for i in 0..iterations {
        if i == iterations / 2
            && let Some(other) = &other
        {
            open_close(other);
        }
        open_close(&path);
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{ns:.1}");
}
