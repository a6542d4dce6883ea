//! Test helper: connects to ADDR:PORT without connect(2), the way that syscall tracepoints
//! cannot see.
//!
//! Usage: credwatch-connector io_uring|fastopen|connect ADDR PORT
//!   io_uring   IORING_OP_CONNECT through an io_uring
//!   fastopen   sendto(2) with MSG_FASTOPEN on a TCP socket (connects and sends in one call)
//!   connect    plain connect(2), for comparison
//! Prints `pid=P` and `result=R` (0 or -errno).

use std::net::{IpAddr, SocketAddr};

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the family-specific view fits inside it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn errno_result(r: isize) -> i64 {
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, how, addr, port] = &args[..] else {
        eprintln!("usage: credwatch-connector io_uring|fastopen|connect ADDR PORT");
        std::process::exit(2);
    };
    let ip: IpAddr = addr.parse().expect("an IP address");
    let target = SocketAddr::new(ip, port.parse().expect("a port"));
    let (storage, len) = sockaddr(target);
    let family = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    println!("pid={}", std::process::id());
    // SAFETY: plain socket calls with a valid sockaddr; the fd is closed at exit.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    let sa = (&raw const storage).cast::<libc::sockaddr>();
    let result = match how.as_str() {
        "io_uring" => {
            let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
            let op = io_uring::opcode::Connect::new(io_uring::types::Fd(fd), sa, len)
                .build()
                .user_data(1);
            // SAFETY: the sockaddr outlives the submission (we wait for its completion).
            unsafe { ring.submission().push(&op).expect("submission queue full") };
            ring.submit_and_wait(1).expect("io_uring_enter");
            let cqe = ring.completion().next().expect("a completion");
            cqe.result() as i64
        }
        "fastopen" => {
            // A credential request: a benign one to a metadata address is only counted.
            let request = b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.0\r\n\r\n";
            let r = unsafe {
                libc::sendto(
                    fd,
                    request.as_ptr().cast(),
                    request.len(),
                    libc::MSG_FASTOPEN,
                    sa,
                    len,
                )
            };
            errno_result(r)
        }
        "connect" => errno_result(unsafe { libc::connect(fd, sa, len) } as isize),
        other => panic!("unknown mode {other}"),
    };
    println!("result={result}");
}
