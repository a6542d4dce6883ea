//! Test helper: performs file opens exactly the way a test asks, through each open syscall.
//!
//! Usage: credwatch-opener [--cpu N] [--uid N] [--hold] OP ARGS [xN] [--next OP ARGS [xN]]...
//!   open PATH | openat PATH | openat2 PATH | creat PATH | by-handle PATH
//!   io_uring PATH | io_uring-fixed PATH | io_uring-skip PATH
//!                           (IORING_OP_OPENAT; into a direct descriptor; with no completion)
//!   openat-dir DIR REL      (openat relative to a directory fd)
//!   chdir-open DIR REL      (chdir, then open a relative path)
//! A trailing `xN` repeats the op N times. Prints `pid=P` then one `result=R` (fd or -errno)
//! per op; with --hold it then waits for stdin to close, so the test can read /proc/P.

use std::{
    ffi::{CString, OsStr, OsString},
    io::{Read as _, Write as _},
    os::unix::ffi::OsStrExt as _,
};

fn c(s: &OsStr) -> CString {
    CString::new(s.as_bytes()).expect("no NUL in argument")
}

fn ret(r: i64) -> i64 {
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        r
    }
}

fn run(op: &str, args: &[OsString]) -> i64 {
    let a = |i: usize| c(&args[i]);
    // SAFETY: raw syscalls with valid C strings and structs; fds are closed after use.
    unsafe {
        let fd = match op {
            "open" => ret(libc::syscall(libc::SYS_open, a(0).as_ptr(), libc::O_RDONLY)),
            "openat" => ret(libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                a(0).as_ptr(),
                libc::O_RDONLY,
            )),
            "openat2" => {
                // struct open_how { u64 flags, mode, resolve; }
                let how: [u64; 3] = [libc::O_RDONLY as u64, 0, 0];
                ret(libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    a(0).as_ptr(),
                    how.as_ptr(),
                    24usize,
                ))
            }
            "creat" => ret(libc::syscall(libc::SYS_creat, a(0).as_ptr(), 0o600)),
            "openat-dir" => {
                let dir = libc::open(a(0).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                assert!(dir >= 0, "open dir");
                let r = ret(libc::syscall(
                    libc::SYS_openat,
                    dir,
                    a(1).as_ptr(),
                    libc::O_RDONLY,
                ));
                libc::close(dir);
                r
            }
            "chdir-open" => {
                assert_eq!(libc::chdir(a(0).as_ptr()), 0, "chdir");
                ret(libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    a(1).as_ptr(),
                    libc::O_RDONLY,
                ))
            }
            "by-handle" => by_handle(&a(0)),
            "io_uring" => io_uring_open(&a(0), false),
            "io_uring-fixed" => io_uring_open(&a(0), true),
            "io_uring-skip" => io_uring_open_skipping_completion(&a(0)),
            other => panic!("unknown op {other}"),
        };
        if fd > 0 || (fd == 0 && !op.starts_with("io_uring-")) {
            libc::close(fd as i32);
        }
        fd
    }
}

/// IORING_OP_OPENAT through an io_uring: into the fd table, or (`fixed`) into slot 0 of the
/// ring's fixed-file table (a "direct descriptor": no fd at all). Returns the completion's
/// result (the fd, 0 for a fixed slot, or -errno).
fn io_uring_open(path: &CString, fixed: bool) -> i64 {
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    let mut op = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), path.as_ptr())
        // Direct descriptors refuse O_CLOEXEC (they are not fds).
        .flags(libc::O_RDONLY | if fixed { 0 } else { libc::O_CLOEXEC });
    if fixed {
        ring.submitter()
            .register_files_sparse(1)
            .expect("register a fixed-file table");
        let slot = io_uring::types::DestinationSlot::try_from_slot_target(0).unwrap();
        op = op.file_index(Some(slot));
    }
    let entry = op.build().user_data(1);
    // SAFETY: the path outlives the request (we wait for its completion).
    unsafe {
        ring.submission()
            .push(&entry)
            .expect("submission queue full")
    };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let result = ring.completion().next().expect("a completion").result() as i64;
    // A fixed slot is not an fd: report it as 0 so the caller does not close fd 0.
    if fixed && result >= 0 { 0 } else { result }
}

/// IORING_OP_OPENAT with IOSQE_CQE_SKIP_SUCCESS (no completion when it succeeds), linked to a
/// NOP whose completion says the open is done. Returns 0 (the fd is not known).
fn io_uring_open_skipping_completion(path: &CString) -> i64 {
    use io_uring::{opcode, squeue::Flags, types};
    let mut ring = io_uring::IoUring::new(4).expect("io_uring_setup");
    let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
        .flags(libc::O_RDONLY | libc::O_CLOEXEC)
        .build()
        .flags(Flags::SKIP_SUCCESS | Flags::IO_LINK)
        .user_data(1);
    let nop = opcode::Nop::new().build().user_data(2);
    // SAFETY: the path outlives the requests (we wait for the linked NOP).
    unsafe {
        let mut sq = ring.submission();
        sq.push(&open).expect("submission queue full");
        sq.push(&nop).expect("submission queue full");
    }
    ring.submit_and_wait(1).expect("io_uring_enter");
    let cqe = ring.completion().next().expect("a completion");
    // The open's own completion appears only if it failed.
    if cqe.user_data() == 1 {
        return cqe.result() as i64;
    }
    0
}

/// name_to_handle_at + open_by_handle_at (needs CAP_DAC_READ_SEARCH).
unsafe fn by_handle(path: &CString) -> i64 {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let mut handle = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id = 0i32;
    unsafe {
        let r = libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut handle as *mut Handle,
            &mut mount_id as *mut i32,
            0,
        );
        assert_eq!(
            r,
            0,
            "name_to_handle_at: {}",
            std::io::Error::last_os_error()
        );
        let mount_fd = libc::open(
            c(OsStr::new("/")).as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        );
        let r = ret(libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &mut handle as *mut Handle,
            libc::O_RDONLY,
        ));
        libc::close(mount_fd);
        r
    }
}

fn main() {
    // Arguments are raw bytes: tests pass paths and arguments that are not UTF-8.
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut hold = false;
    let mut uid = None;
    loop {
        match args.first().and_then(|a| a.to_str()) {
            Some("--hold") => {
                hold = true;
                args.remove(0);
            }
            Some("--cpu") => {
                let cpu: usize = args[1].to_str().and_then(|a| a.parse().ok()).expect("cpu");
                // SAFETY: a zeroed cpu_set_t with one bit set, for this process.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    assert_eq!(
                        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                        0,
                        "pin to cpu"
                    );
                }
                args.drain(..2);
            }
            Some("--comm") => {
                let name = c(&args[1]);
                // SAFETY: PR_SET_NAME with a valid C string (the kernel keeps 15 bytes).
                unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                args.drain(..2);
            }
            Some("--uid") => {
                uid = Some(
                    args[1]
                        .to_str()
                        .and_then(|a| a.parse::<u32>().ok())
                        .expect("uid"),
                );
                args.drain(..2);
            }
            _ => break,
        }
    }
    if let Some(uid) = uid {
        // SAFETY: dropping privileges; group first, while still allowed.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
            assert_eq!(libc::setgid(uid), 0);
            assert_eq!(libc::setuid(uid), 0);
        }
    }
    let mut out = std::io::stdout();
    writeln!(out, "pid={}", std::process::id()).unwrap();
    for op in args.split(|a| a == "--next") {
        let (name, mut rest) = (op[0].to_str().expect("op name"), op[1..].to_vec());
        let repeat = match rest
            .last()
            .and_then(|l| l.to_str())
            .and_then(|l| l.strip_prefix('x'))
            .and_then(|n| n.parse().ok())
        {
            Some(n) => {
                rest.pop();
                n
            }
            None => 1,
        };
        let mut last = 0;
        for _ in 0..repeat {
            last = run(name, &rest);
        }
        writeln!(out, "result={last}").unwrap();
    }
    out.flush().unwrap();
    if hold {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
}
