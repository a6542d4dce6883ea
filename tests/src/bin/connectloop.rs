//! Benchmark load: a UDP socket connected to 127.0.0.1:9 (discard; nothing is sent) and
//! closed, N times; prints the mean ns per socket+connect+close. Each connect runs every
//! connect program credwatch attaches (enter, cgroup hook, exit) and is filtered out in the
//! kernel, as almost all connects are.
//! Usage: credwatch-connectloop ITERATIONS

use std::time::Instant;

fn main() {
    let iterations: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("ITERATIONS");
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 9u16.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: plain socket calls with a valid sockaddr; the fd is closed right away.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let r = libc::connect(
                fd,
                (&raw const sin).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert!(r == 0, "connect: {}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{ns:.1}");
}
