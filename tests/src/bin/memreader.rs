//! Test workload: reaches into another process's memory the ways a credential dumper does.
//! Forks a child holding a "secret", reads it with process_vm_readv, attaches with
//! PTRACE_ATTACH, then reads its own memory the same way (which is no theft). Prints the
//! child's pid and each call's result.

use std::io::Write as _;

fn main() {
    let secret = *b"hunter2-not-a-real-password-----";
    // SAFETY: fork in a single-threaded program; the child only sleeps.
    let child = unsafe { libc::fork() };
    if child == 0 {
        std::thread::sleep(std::time::Duration::from_secs(30));
        std::process::exit(0);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut buffer = [0u8; 32];
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    let remote = libc::iovec {
        iov_base: secret.as_ptr() as *mut _,
        iov_len: secret.len(),
    };
    // SAFETY: valid iovecs of 32 bytes each.
    let read_child = unsafe { libc::process_vm_readv(child, &local, 1, &remote, 1, 0) };
    // SAFETY: plain syscalls on our own child.
    let none = std::ptr::null_mut::<libc::c_void>();
    let attach = unsafe { libc::ptrace(libc::PTRACE_ATTACH, child, none, none) };
    let mut status = 0;
    unsafe {
        libc::waitpid(child, &mut status, 0);
        libc::ptrace(libc::PTRACE_DETACH, child, none, none);
    }
    let own = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    // The agent names the target from /proc while it exists: a dumper's target usually
    // outlives the dump (here it waits a moment).
    std::thread::sleep(std::time::Duration::from_secs(2));
    unsafe { libc::kill(child, libc::SIGKILL) };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "child {child} readv {read_child} attach {attach} own {own}"
    );
}
