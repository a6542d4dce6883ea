//! Validated decoding of the kernel's wire records. Nothing from the ring buffer is trusted:
//! lengths, kinds, versions and string lengths are checked before use.

use std::{fmt, mem::size_of};

use credwatch_common::{
    ARGS_BYTES, CGROUP_PATH_BYTES, CgroupRecord, ConnectRecord, DNS_BYTES, DNS_FIXED_BYTES,
    DnsRecord, FILE_OPEN_FIXED_BYTES, FILENAME_BYTES, FileOpenRecord, KIND_CGROUP, KIND_CONNECT,
    KIND_DNS, KIND_FILE_OPEN, KIND_MEMORY, KIND_PROCESS, KIND_REQUEST, MemoryRecord, PATH_BYTES,
    PROCESS_ARGS_OFFSET, PROCESS_FIXED_BYTES, ProcessRecord, RAW_PATH_BYTES, REQUEST_BYTES,
    REQUEST_FIXED_BYTES, RecordHeader, RepeatKey, RequestRecord, WIRE_VERSION, cgroup_event,
    connect_source, memory_syscall, probe, process_event, request_flag,
};

/// A file-open syscall, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileOpen {
    pub boot_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub syscall: Syscall,
    pub flags: u32,
    /// fd or -errno
    pub result: i64,
    /// Userspace `st_dev` encoding (as `stat` shows it); 0 when the open failed.
    pub dev: u64,
    pub ino: u64,
    pub dirfd: i32,
    /// The opener's start time (ns since boot): with `pid`, its identity.
    pub start_boottime: u64,
    pub secret_id: u32,
    pub matched: u32,
    pub path_flags: u32,
    pub comm: Vec<u8>,
    pub raw_path: Option<Vec<u8>>,
    pub path: Vec<u8>,
    /// The kernel counts repeats of this access in its window under this key (None: the map
    /// was full, repeats are reported one by one).
    pub repeat: Option<RepeatKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Syscall {
    Open,
    #[default]
    Openat,
    Openat2,
    Creat,
    OpenByHandleAt,
    /// IORING_OP_OPENAT/OPENAT2 (the discriminant is the probe id, for `name`).
    IoUringOpen = probe::IO_URING_OPEN as isize,
}

impl Syscall {
    pub fn name(self) -> &'static str {
        probe::NAMES[self as usize]
    }
}

impl TryFrom<u32> for Syscall {
    type Error = DecodeError;
    fn try_from(value: u32) -> Result<Self, DecodeError> {
        Ok(match value {
            probe::OPEN => Syscall::Open,
            probe::OPENAT => Syscall::Openat,
            probe::OPENAT2 => Syscall::Openat2,
            probe::CREAT => Syscall::Creat,
            probe::OPEN_BY_HANDLE_AT => Syscall::OpenByHandleAt,
            probe::IO_URING_OPEN => Syscall::IoUringOpen,
            other => return Err(DecodeError::BadField("probe", other as u64)),
        })
    }
}

/// A process lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEvent {
    pub kind: ProcessEventKind,
    pub boot_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub exit_code: i32,
    pub start_boottime: u64,
    pub cgroup_id: u64,
    pub comm: Vec<u8>,
    /// EXEC: the program path as given to execve.
    pub filename: Option<Vec<u8>>,
    /// EXEC: argv; None when it could not be read.
    pub args: Option<Vec<Vec<u8>>>,
    pub args_truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEventKind {
    Exec,
    Fork,
    Exit,
}

impl TryFrom<u32> for ProcessEventKind {
    type Error = DecodeError;
    fn try_from(value: u32) -> Result<Self, DecodeError> {
        Ok(match value {
            process_event::EXEC => ProcessEventKind::Exec,
            process_event::FORK => ProcessEventKind::Fork,
            process_event::EXIT => ProcessEventKind::Exit,
            other => return Err(DecodeError::BadField("event", other as u64)),
        })
    }
}

/// A cgroup v2 directory appeared or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupEvent {
    pub created: bool,
    pub id: u64,
    pub path: String,
    /// When (CLOCK_BOOTTIME ns).
    pub boot_ns: u64,
}

/// A connect() to a catalogue endpoint's address and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub boot_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub start_boottime: u64,
    /// connect(2)'s result; `None` for a connect seen outside connect(2) (io_uring, TCP Fast
    /// Open) by the cgroup hook, before it was attempted.
    pub result: Option<i64>,
    /// The address as the process gave it (v4-mapped IPv6 shown as IPv4).
    pub address: std::net::IpAddr,
    pub ipv6_socket: bool,
    pub port: u16,
    pub endpoint: u32,
    pub comm: Vec<u8>,
    /// The socket's cookie (0: unknown); requests sent on it carry the same.
    pub cookie: u64,
}

/// A payload sent on a connection whose requests are inspected (its first bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub boot_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub data: Vec<u8>,
    /// The payload's whole length (more than `data` when cut in the kernel).
    pub payload_len: u32,
    /// The connection's last inspected payload: later ones go unseen.
    pub last: bool,
    /// What was copied is not what the server reads (urgent data), or nothing could be copied
    /// (the payload could not be located): judged as unreadable.
    pub unreadable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    FileOpen(Box<FileOpen>),
    Connect(Box<Connect>),
    /// A DNS response a process received (the message bytes).
    /// A DNS response and the cgroup of the socket that received it.
    Dns {
        cgroup_id: u64,
        message: Vec<u8>,
    },
    Process(Box<ProcessEvent>),
    Cgroup(CgroupEvent),
    Memory(Box<MemoryAccess>),
    Request(Box<Request>),
}

/// A syscall into another process's memory (ptrace attach/seize, process_vm_readv/writev).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryAccess {
    pub boot_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub start_boottime: u64,
    pub result: i64,
    /// "ptrace", "process_vm_readv" or "process_vm_writev".
    pub syscall: &'static str,
    /// "PTRACE_ATTACH" or "PTRACE_SEIZE" for ptrace.
    pub request: Option<&'static str>,
    /// The target pid as the caller named it (its own pid namespace).
    pub target: u32,
    pub comm: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    Version(u16),
    Kind(u16),
    SizeMismatch { header: u32, actual: usize },
    BadField(&'static str, u64),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "record of {n} bytes is too short"),
            DecodeError::Version(v) => write!(f, "wire version {v}, expected {WIRE_VERSION}"),
            DecodeError::Kind(k) => write!(f, "unknown record kind {k}"),
            DecodeError::SizeMismatch { header, actual } => {
                write!(f, "header says {header} bytes, record has {actual}")
            }
            DecodeError::BadField(name, value) => {
                write!(f, "field {name} has invalid value {value}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: RecordHeader = read_pod(bytes)?;
    if header.version != WIRE_VERSION {
        return Err(DecodeError::Version(header.version));
    }
    match header.kind {
        KIND_FILE_OPEN => decode_file_open(bytes, header),
        KIND_PROCESS => decode_process(bytes, header),
        KIND_CGROUP => decode_cgroup(bytes, header),
        KIND_CONNECT => decode_connect(bytes, header),
        KIND_MEMORY => decode_memory(bytes, header),
        KIND_REQUEST => {
            // At its used size: the fixed part and the bytes copied.
            let rec: RequestRecord = read_prefix(bytes, header, REQUEST_FIXED_BYTES)?;
            let len = rec.len as usize;
            if len > REQUEST_BYTES
                || len > rec.payload_len as usize
                || REQUEST_FIXED_BYTES + len != header.size as usize
            {
                return Err(DecodeError::BadField("len", len as u64));
            }
            Ok(Event::Request(Box::new(Request {
                boot_ns: rec.boot_ns,
                cookie: rec.cookie,
                cgroup_id: rec.cgroup_id,
                data: rec.data[..len].to_vec(),
                payload_len: rec.payload_len,
                last: rec.flags & request_flag::LAST != 0,
                unreadable: rec.flags & (request_flag::URGENT | request_flag::UNPARSED) != 0,
            })))
        }
        KIND_DNS => {
            // At its used size: the fixed part and the message.
            let rec: DnsRecord = read_prefix(bytes, header, DNS_FIXED_BYTES)?;
            let len = rec.len as usize;
            if len > DNS_BYTES || DNS_FIXED_BYTES + len != header.size as usize {
                return Err(DecodeError::BadField("len", len as u64));
            }
            Ok(Event::Dns {
                cgroup_id: rec.cgroup_id,
                message: rec.data[..len].to_vec(),
            })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

fn decode_process(bytes: &[u8], header: RecordHeader) -> Result<Event, DecodeError> {
    // Fork and exit records end before `filename`, exec records after the used argv.
    let rec: ProcessRecord = read_prefix(bytes, header, PROCESS_FIXED_BYTES)?;
    let kind = ProcessEventKind::try_from(rec.event)?;
    let expected = match kind {
        ProcessEventKind::Exec => PROCESS_ARGS_OFFSET + rec.args_len as usize,
        _ => PROCESS_FIXED_BYTES,
    };
    if header.size as usize != expected {
        return Err(DecodeError::SizeMismatch {
            header: header.size,
            actual: expected,
        });
    }
    let filename_len = rec.filename_len as usize;
    if filename_len > FILENAME_BYTES {
        return Err(DecodeError::BadField("filename_len", filename_len as u64));
    }
    let args_len = rec.args_len as usize;
    if args_len > ARGS_BYTES {
        return Err(DecodeError::BadField("args_len", args_len as u64));
    }
    let is_exec = kind == ProcessEventKind::Exec;
    let args_ok = rec.flags & credwatch_common::process_flag::ARGS_READ_ERROR == 0;
    Ok(Event::Process(Box::new(ProcessEvent {
        kind,
        boot_ns: rec.boot_ns,
        pid: rec.pid,
        ppid: rec.ppid,
        uid: rec.uid,
        gid: rec.gid,
        exit_code: rec.exit_code,
        start_boottime: rec.start_boottime,
        cgroup_id: rec.cgroup_id,
        comm: until_nul(&rec.comm).to_vec(),
        filename: is_exec.then(|| rec.filename[..filename_len].to_vec()),
        args: (is_exec && args_ok).then(|| split_args(&rec.args[..args_len])),
        args_truncated: rec.flags & credwatch_common::process_flag::ARGS_TRUNCATED != 0,
    })))
}

fn decode_connect(bytes: &[u8], header: RecordHeader) -> Result<Event, DecodeError> {
    let rec: ConnectRecord = read_record(bytes, header)?;
    let ipv6_socket = match rec.family {
        2 => false,
        10 => true,
        other => return Err(DecodeError::BadField("family", other as u64)),
    };
    let result = match rec.source {
        connect_source::SYSCALL => Some(rec.result),
        connect_source::CGROUP_HOOK => None,
        other => return Err(DecodeError::BadField("source", other as u64)),
    };
    let v6 = std::net::Ipv6Addr::from(rec.addr);
    let address = match v6.to_ipv4_mapped() {
        Some(v4) => std::net::IpAddr::V4(v4),
        None => std::net::IpAddr::V6(v6),
    };
    Ok(Event::Connect(Box::new(Connect {
        boot_ns: rec.task.boot_ns,
        pid: rec.task.pid,
        tid: rec.task.tid,
        uid: rec.task.uid,
        gid: rec.task.gid,
        cgroup_id: rec.task.cgroup_id,
        start_boottime: rec.task.start_boottime,
        result,
        address,
        ipv6_socket,
        port: rec.port,
        endpoint: rec.endpoint,
        comm: until_nul(&rec.task.comm).to_vec(),
        cookie: rec.cookie,
    })))
}

fn decode_memory(bytes: &[u8], header: RecordHeader) -> Result<Event, DecodeError> {
    let rec: MemoryRecord = read_record(bytes, header)?;
    let syscall = match rec.syscall {
        memory_syscall::PTRACE => "ptrace",
        memory_syscall::PROCESS_VM_READV => "process_vm_readv",
        memory_syscall::PROCESS_VM_WRITEV => "process_vm_writev",
        other => return Err(DecodeError::BadField("syscall", other as u64)),
    };
    let request = match (rec.syscall, rec.request) {
        (memory_syscall::PTRACE, memory_syscall::PTRACE_ATTACH) => Some("PTRACE_ATTACH"),
        (memory_syscall::PTRACE, memory_syscall::PTRACE_SEIZE) => Some("PTRACE_SEIZE"),
        (memory_syscall::PTRACE, other) => return Err(DecodeError::BadField("request", other)),
        _ => None,
    };
    Ok(Event::Memory(Box::new(MemoryAccess {
        boot_ns: rec.task.boot_ns,
        pid: rec.task.pid,
        tid: rec.task.tid,
        uid: rec.task.uid,
        gid: rec.task.gid,
        cgroup_id: rec.task.cgroup_id,
        start_boottime: rec.task.start_boottime,
        result: rec.result,
        syscall,
        request,
        target: rec.target,
        comm: until_nul(&rec.task.comm).to_vec(),
    })))
}

fn decode_cgroup(bytes: &[u8], header: RecordHeader) -> Result<Event, DecodeError> {
    let rec: CgroupRecord = read_record(bytes, header)?;
    let len = rec.path_len as usize;
    if len > CGROUP_PATH_BYTES {
        return Err(DecodeError::BadField("path_len", len as u64));
    }
    let created = match rec.event {
        cgroup_event::MKDIR => true,
        cgroup_event::RMDIR => false,
        other => return Err(DecodeError::BadField("event", other as u64)),
    };
    // cgroup names are chosen by whoever creates them: keep every byte, escaped.
    let path = crate::escape::escape_bytes(&rec.path[..len]);
    Ok(Event::Cgroup(CgroupEvent {
        created,
        id: rec.id,
        path,
        boot_ns: rec.boot_ns,
    }))
}

/// argv as the kernel stores it: NUL-terminated strings back to back.
pub fn split_args(raw: &[u8]) -> Vec<Vec<u8>> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
}

fn decode_file_open(bytes: &[u8], header: RecordHeader) -> Result<Event, DecodeError> {
    // The record leaves the kernel at its used size: the fixed part, the path, the raw path.
    let size = header.size as usize;
    if !(FILE_OPEN_FIXED_BYTES..=size_of::<FileOpenRecord>()).contains(&size) || bytes.len() < size
    {
        return Err(DecodeError::SizeMismatch {
            header: header.size,
            actual: bytes.len(),
        });
    }
    let rec: FileOpenFixed = read_pod(bytes)?;
    let path_len = rec.path_len as usize;
    if path_len > PATH_BYTES {
        return Err(DecodeError::BadField("path_len", path_len as u64));
    }
    let raw_len = rec.raw_len as usize;
    if raw_len > RAW_PATH_BYTES {
        return Err(DecodeError::BadField("raw_len", raw_len as u64));
    }
    if FILE_OPEN_FIXED_BYTES + path_len + raw_len != size {
        return Err(DecodeError::BadField(
            "path_len + raw_len",
            (path_len + raw_len) as u64,
        ));
    }
    let (path, raw_path) = bytes[FILE_OPEN_FIXED_BYTES..size].split_at(path_len);
    // open_by_handle_at has no path string; an io_uring open has one when its submission was
    // seen.
    let has_raw = rec.probe != probe::OPEN_BY_HANDLE_AT
        && (rec.probe != probe::IO_URING_OPEN || raw_len > 0)
        && rec.path_flags & credwatch_common::path_flag::RAW_READ_ERROR == 0;
    Ok(Event::FileOpen(Box::new(FileOpen {
        boot_ns: rec.task.boot_ns,
        pid: rec.task.pid,
        tid: rec.task.tid,
        uid: rec.task.uid,
        gid: rec.task.gid,
        cgroup_id: rec.task.cgroup_id,
        syscall: Syscall::try_from(rec.probe)?,
        flags: rec.open_flags,
        result: rec.result,
        dev: if rec.result >= 0 {
            kernel_dev_to_user(rec.dev)
        } else {
            0
        },
        ino: rec.ino,
        dirfd: rec.dirfd,
        start_boottime: rec.task.start_boottime,
        secret_id: rec.secret_id,
        matched: rec.matched,
        path_flags: rec.path_flags,
        comm: until_nul(&rec.task.comm).to_vec(),
        raw_path: has_raw.then(|| raw_path.to_vec()),
        path: path.to_vec(),
        // The key exactly as the kernel built it (see `repeats.rs` in the probes).
        repeat: (rec.repeat_epoch != 0).then_some(RepeatKey {
            cgroup_id: rec.task.cgroup_id,
            dev: if rec.result >= 0 { rec.dev as u64 } else { 0 },
            object: rec.repeat_object,
            result: rec.result.min(0),
            pid: rec.task.pid,
            flags: rec.open_flags,
            probe: rec.probe,
            epoch: rec.repeat_epoch,
        }),
    })))
}

/// The fixed part of a [`FileOpenRecord`] (the same layout without the tail).
#[repr(C)]
#[derive(Clone, Copy)]
struct FileOpenFixed {
    header: RecordHeader,
    task: credwatch_common::TaskIdentity,
    probe: u32,
    open_flags: u32,
    result: i64,
    ino: u64,
    dev: u32,
    dirfd: i32,
    secret_id: u32,
    matched: u32,
    path_flags: u32,
    path_len: u32,
    raw_len: u32,
    repeat_epoch: u32,
    repeat_object: u64,
}

// The same layout as the record's fixed part, field for field.
const _: () = assert!(size_of::<FileOpenFixed>() == FILE_OPEN_FIXED_BYTES);
const _: () = assert!(
    core::mem::offset_of!(FileOpenFixed, repeat_object)
        == core::mem::offset_of!(FileOpenRecord, repeat_object)
);

/// A record of type `T` that left the kernel without its unused tail: at least `min` bytes, at
/// most a whole `T`; the missing tail reads as zeros.
fn read_prefix<T: Copy>(bytes: &[u8], header: RecordHeader, min: usize) -> Result<T, DecodeError> {
    let size = header.size as usize;
    if !(min..=size_of::<T>()).contains(&size) || bytes.len() < size {
        return Err(DecodeError::SizeMismatch {
            header: header.size,
            actual: bytes.len(),
        });
    }
    let mut whole = vec![0u8; size_of::<T>()];
    whole[..size].copy_from_slice(&bytes[..size]);
    read_pod(&whole)
}

/// A record of type `T`: its header must give exactly T's size, and the bytes must hold it.
fn read_record<T: Copy>(bytes: &[u8], header: RecordHeader) -> Result<T, DecodeError> {
    if header.size as usize != size_of::<T>() || bytes.len() < header.size as usize {
        return Err(DecodeError::SizeMismatch {
            header: header.size,
            actual: bytes.len(),
        });
    }
    read_pod(bytes)
}

fn read_pod<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; T is a #[repr(C)] plain-old-data wire type, read unaligned.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The kernel's `dev_t` (`MAJOR << 20 | MINOR`) in the encoding userspace sees from `stat`.
pub fn kernel_dev_to_user(dev: u32) -> u64 {
    let (major, minor) = (dev >> 20, dev & 0xfffff);
    libc::makedev(major, minor)
}

/// The reverse, for filling the kernel's secret-inode map from `stat` results.
pub fn user_dev_to_kernel(dev: u64) -> u64 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    ((major as u64) << 20) | (minor as u64 & 0xfffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FileOpenRecord {
        // SAFETY: all-zero is a valid FileOpenRecord.
        let mut rec: FileOpenRecord = unsafe { std::mem::zeroed() };
        rec.header = RecordHeader::of::<FileOpenRecord>(KIND_FILE_OPEN);
        rec.header.size = (FILE_OPEN_FIXED_BYTES + 10) as u32;
        rec.probe = probe::OPENAT;
        rec.task.pid = 42;
        rec.result = 3;
        rec.dev = (8 << 20) | 1;
        rec.task.comm[..3].copy_from_slice(b"cat");
        rec.tail[..10].copy_from_slice(b"/run/x/y\xffy");
        rec.path_len = 9;
        rec.raw_len = 1;
        rec
    }

    /// A file-open record as it leaves the kernel: cut at its header's size.
    fn wire(rec: &FileOpenRecord) -> Vec<u8> {
        let mut data = bytes(rec);
        data.truncate(rec.header.size as usize);
        data
    }

    /// The wire bytes of a record.
    fn bytes<T: Copy>(rec: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] struct.
        unsafe { std::slice::from_raw_parts((rec as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_file_open() {
        let data = wire(&record());
        assert_eq!(
            data.len(),
            FILE_OPEN_FIXED_BYTES + 10,
            "a short path, a short record"
        );
        let Ok(Event::FileOpen(open)) = decode(&data) else {
            panic!()
        };
        assert_eq!(open.pid, 42);
        assert_eq!(open.syscall, Syscall::Openat);
        assert_eq!(open.comm, b"cat");
        assert_eq!(open.path, b"/run/x/y\xff");
        assert_eq!(open.raw_path.as_deref(), Some(&b"y"[..]));
        assert_eq!(open.dev, libc::makedev(8, 1));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[1, 0]), Err(DecodeError::Short(2)));
        let data = wire(&record());
        assert!(matches!(
            decode(&data[..100]),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let mut rec = record();
        rec.header.version = 9;
        assert_eq!(decode(&wire(&rec)), Err(DecodeError::Version(9)));
        let mut rec = record();
        rec.header.kind = 77;
        assert_eq!(decode(&wire(&rec)), Err(DecodeError::Kind(77)));
        let mut rec = record();
        rec.path_len = 5000;
        assert_eq!(
            decode(&wire(&rec)),
            Err(DecodeError::BadField("path_len", 5000))
        );
        // The lengths must add up to the record's size.
        let mut rec = record();
        rec.path_len = 8;
        assert_eq!(
            decode(&wire(&rec)),
            Err(DecodeError::BadField("path_len + raw_len", 9))
        );
        let mut rec = record();
        rec.header.size = FILE_OPEN_FIXED_BYTES as u32 - 1;
        assert!(matches!(
            decode(&wire(&rec)),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let mut rec = record();
        rec.probe = 99;
        assert_eq!(decode(&wire(&rec)), Err(DecodeError::BadField("probe", 99)));
    }

    #[test]
    fn decodes_an_exec() {
        // SAFETY: all-zero is a valid ProcessRecord.
        let mut rec: ProcessRecord = unsafe { std::mem::zeroed() };
        rec.header = RecordHeader::of::<ProcessRecord>(KIND_PROCESS);
        rec.event = process_event::EXEC;
        rec.pid = 7;
        rec.filename[..7].copy_from_slice(b"/bin/sh");
        rec.filename_len = 7;
        rec.args[..10].copy_from_slice(b"sh\0-c\0id\xff\0");
        rec.args_len = 10;
        rec.header.size = (PROCESS_ARGS_OFFSET + 10) as u32;
        let mut data = bytes(&rec);
        data.truncate(PROCESS_ARGS_OFFSET + 10);
        let Ok(Event::Process(p)) = decode(&data) else {
            panic!()
        };
        assert_eq!(p.kind, ProcessEventKind::Exec);
        assert_eq!(p.filename.as_deref(), Some(&b"/bin/sh"[..]));
        assert_eq!(
            p.args,
            Some(vec![b"sh".to_vec(), b"-c".to_vec(), b"id\xff".to_vec()])
        );
        // The size must be what the argv needs.
        rec.header.size += 1;
        assert!(matches!(
            decode(&bytes(&rec)),
            Err(DecodeError::SizeMismatch { .. })
        ));
        rec.event = 9;
        assert_eq!(decode(&bytes(&rec)), Err(DecodeError::BadField("event", 9)));
    }

    #[test]
    fn decodes_a_fork_without_its_unused_tail() {
        // SAFETY: all-zero is a valid ProcessRecord.
        let mut rec: ProcessRecord = unsafe { std::mem::zeroed() };
        rec.header = RecordHeader::of::<ProcessRecord>(KIND_PROCESS);
        rec.header.size = PROCESS_FIXED_BYTES as u32;
        rec.event = process_event::FORK;
        rec.pid = 8;
        let mut data = bytes(&rec);
        data.truncate(PROCESS_FIXED_BYTES);
        let Ok(Event::Process(p)) = decode(&data) else {
            panic!()
        };
        assert_eq!(
            (p.kind, p.pid, p.filename),
            (ProcessEventKind::Fork, 8, None)
        );
    }

    #[test]
    fn device_numbers_round_trip() {
        for (major, minor) in [(8, 1), (259, 3), (0, 0x1234)] {
            let user = libc::makedev(major, minor);
            let kernel = user_dev_to_kernel(user);
            assert_eq!(kernel, ((major as u64) << 20) | minor as u64);
            assert_eq!(kernel_dev_to_user(kernel as u32), user);
        }
    }
}
