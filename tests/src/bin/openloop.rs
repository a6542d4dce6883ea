//! Benchmark load: open+close one file N times and print the mean ns per open.
//! Usage: credwatch-openloop PATH ITERATIONS

use std::{ffi::CString, time::Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = CString::new(args.next().expect("PATH")).expect("no NUL in path");
    let iterations: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("ITERATIONS");
    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: valid C string; the fd is closed right away.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(fd >= 0, "open failed: {}", std::io::Error::last_os_error());
        unsafe { libc::close(fd) };
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{ns:.1}");
}
