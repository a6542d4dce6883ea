//! io_uring opens. IORING_OP_OPENAT and IORING_OP_OPENAT2 open files without an open syscall,
//! so the syscall tracepoints never see them. `io_uring_submit_req` notes each open request
//! (and whether it targets the ring's fixed-file table); `io_uring_complete` then finds the new
//! fd in the task's fd table — io-wq workers and the SQPOLL thread share it — and judges it
//! exactly like a syscall's open (`open::io_uring_opened`).

use credwatch_common::{outcome, probe};

use crate::{URING_OFFSETS, URING_OPENS, open, stats::count, vfs};

/// UAPI opcodes (`enum io_uring_op`), fixed by the kernel ABI.
const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_OPENAT2: u8 = 28;

pub fn submit(req: u64, opcode: u8) {
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return;
    }
    let o = URING_OFFSETS.load();
    if o.valid == 0 {
        return;
    }
    let file_slot: u32 = unsafe { vfs::read(req, o.open_file_slot) }.unwrap_or(0);
    let _ = URING_OPENS.insert(&req, &file_slot, 0);
}

pub fn complete(req: u64, res: i32) {
    // Most completions are not opens: one lookup and out.
    let Some(file_slot) = (unsafe { URING_OPENS.get(&req) }).copied() else {
        return;
    };
    let _ = URING_OPENS.remove(&req);
    // Requests are recycled: make sure this one is still an open (an open whose completion was
    // skipped, IOSQE_CQE_SKIP_SUCCESS, leaves its entry behind).
    let o = URING_OFFSETS.load();
    let opcode: u8 = unsafe { vfs::read(req, o.opcode) }.unwrap_or(0);
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return;
    }
    if res < 0 || file_slot != 0 {
        count(probe::IO_URING_OPEN, outcome::SEEN);
        // A failed open has no file, and one into the fixed-file table has no fd to follow.
        let what = if res < 0 {
            outcome::FILTERED
        } else {
            outcome::UNMATCHED
        };
        return count(probe::IO_URING_OPEN, what);
    }
    open::io_uring_opened(res as i64);
}
