//! io_uring opens. IORING_OP_OPENAT and IORING_OP_OPENAT2 open files without an open syscall,
//! so the syscall tracepoints never see them. At `io_uring_complete` an open request's new fd
//! is in the task's fd table — io-wq workers and the SQPOLL thread share the submitter's — and
//! is judged exactly like a syscall's open (`open::io_uring_opened`). The request itself tells
//! what it was (its opcode, and the `io_open` in its command area), so nothing needs to be
//! remembered between submission and completion.

use credwatch_common::{outcome, probe};

use crate::{URING_OFFSETS, open, stats::count, vfs};

/// UAPI opcodes (`enum io_uring_op`), fixed by the kernel ABI.
const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_OPENAT2: u8 = 28;
/// IOSQE_CQE_SKIP_SUCCESS; the low request flags are the SQE flags (io_uring_types.h).
const CQE_SKIP_SUCCESS: u64 = 1 << 6;

fn is_open(opcode: u8) -> bool {
    opcode == IORING_OP_OPENAT || opcode == IORING_OP_OPENAT2
}

/// `io_uring_submit_req`: an open whose successful completion will not be posted (so not
/// traced) cannot be followed; it is counted, not lost silently.
pub fn submit(req: u64) {
    let o = URING_OFFSETS.load();
    if o.valid == 0 {
        return;
    }
    let Ok(opcode) = (unsafe { vfs::read::<u8>(req, o.opcode) }) else {
        return;
    };
    if !is_open(opcode) {
        return;
    }
    let flags: u64 = unsafe { vfs::read(req, o.flags) }.unwrap_or(0);
    if flags & CQE_SKIP_SUCCESS != 0 {
        count(probe::IO_URING_OPEN, outcome::SEEN);
        count(probe::IO_URING_OPEN, outcome::UNMATCHED);
    }
}

/// `io_uring_complete`: `req` is null for auxiliary completions (the read then fails).
pub fn complete(req: u64, cqe: u64) {
    let o = URING_OFFSETS.load();
    if o.valid == 0 {
        return;
    }
    // Most completions are not opens: one read and out.
    let Ok(opcode) = (unsafe { vfs::read::<u8>(req, o.opcode) }) else {
        return;
    };
    if !is_open(opcode) {
        return;
    }
    // struct io_uring_cqe (UAPI): u64 user_data, s32 res, ...
    let Ok(res) = (unsafe { vfs::read::<i32>(cqe, 8) }) else {
        return count(probe::IO_URING_OPEN, outcome::READ_ERROR);
    };
    let file_slot: u32 = unsafe { vfs::read(req, o.open_file_slot) }.unwrap_or(0);
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
