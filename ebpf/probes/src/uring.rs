//! io_uring opens. IORING_OP_OPENAT and IORING_OP_OPENAT2 open files without an open syscall,
//! so the syscall tracepoints never see them. At `io_uring_submit_req` an open request holds
//! the kernel's copy of the path, its dirfd and flags: they are kept per request (the path is
//! freed before completion). At `io_uring_complete` a successful open is judged exactly like a
//! syscall's (`open::io_uring_opened`): the new fd is in the task's fd table — io-wq workers
//! and the SQPOLL thread share the submitter's. Failed ones are counted.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use credwatch_common::{IoUringOffsets, RAW_PATH_BYTES, outcome, probe};

use crate::{URING_OFFSETS, URING_OPENS, URING_SCRATCH, moves, open, stats::count, vfs};

/// UAPI opcodes (`enum io_uring_op`), fixed by the kernel ABI.
const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_OPENAT2: u8 = 28;
const IORING_OP_RENAMEAT: u8 = 35;
/// IOSQE_CQE_SKIP_SUCCESS; the low request flags are the SQE flags (io_uring_types.h).
const CQE_SKIP_SUCCESS: u64 = 1 << 6;

/// The request layout when `req` is an open request (most requests are not: one read and
/// out). `req` is null for auxiliary completions; the read then fails.
/// A rename (see `moves.rs`) is noted on the way. `submitted`: at submission, else completion.
fn open_request(req: u64, submitted: bool) -> Option<IoUringOffsets> {
    let o = URING_OFFSETS.load();
    if o.valid == 0 {
        return None;
    }
    let opcode: u8 = unsafe { vfs::read(req, o.opcode) }.ok()?;
    if opcode == IORING_OP_RENAMEAT {
        let flags: u64 = if submitted {
            unsafe { vfs::read(req, o.flags) }.unwrap_or(0)
        } else {
            0
        };
        moves::io_uring_rename(!submitted, flags & CQE_SKIP_SUCCESS != 0);
        return None;
    }
    (opcode == IORING_OP_OPENAT || opcode == IORING_OP_OPENAT2).then_some(o)
}

/// `io_uring_submit_req`: keeps an open's path, dirfd and flags for its completion. An open
/// whose successful completion will not be posted (so not traced) cannot be followed: counted.
pub fn submit(req: u64) {
    let Some(o) = open_request(req, true) else {
        return;
    };
    let flags: u64 = unsafe { vfs::read(req, o.flags) }.unwrap_or(0);
    if flags & CQE_SKIP_SUCCESS != 0 {
        count(probe::IO_URING_OPEN, outcome::SEEN);
        count(probe::IO_URING_OPEN, outcome::UNMATCHED);
        return;
    }
    let Some(scratch) = URING_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let scratch = unsafe { &mut *scratch };
    let captured = unsafe {
        let filename: u64 = vfs::read(req, o.open_filename).unwrap_or(0);
        let name: u64 = vfs::read(filename, o.filename_name).unwrap_or(0);
        bpf_probe_read_kernel_str(
            scratch.path.as_mut_ptr().cast(),
            RAW_PATH_BYTES as u32,
            name as *const _,
        )
    };
    if captured <= 0 {
        scratch.path[0] = 0;
    }
    scratch.dirfd = unsafe { vfs::read(req, o.open_dfd) }.unwrap_or(open::AT_FDCWD);
    let how_flags = unsafe { vfs::read::<u64>(req, o.open_how_flags) }.unwrap_or(0) as u32;
    // io_uring adds O_LARGEFILE on 64-bit; the process did not ask for it.
    scratch.flags = how_flags & !open::O_LARGEFILE;
    let _ = URING_OPENS.insert(&req, scratch, 0);
}

/// `io_uring_complete`.
pub fn complete(req: u64, cqe: u64) {
    let Some(o) = open_request(req, false) else {
        return;
    };
    // struct io_uring_cqe (UAPI): u64 user_data, s32 res, ...
    let Ok(res) = (unsafe { vfs::read::<i32>(cqe, 8) }) else {
        return count(probe::IO_URING_OPEN, outcome::READ_ERROR);
    };
    let file_slot: u32 = unsafe { vfs::read(req, o.open_file_slot) }.unwrap_or(0);
    let submitted = URING_OPENS.get_ptr(&req);
    if res >= 0 && file_slot != 0 {
        // Into the fixed-file table: there is no fd to follow.
        count(probe::IO_URING_OPEN, outcome::SEEN);
        count(probe::IO_URING_OPEN, outcome::UNMATCHED);
    } else {
        open::io_uring_opened(res as i64, submitted.map(|s| unsafe { &*s }));
    }
    if submitted.is_some() {
        let _ = URING_OPENS.remove(&req);
    }
}
