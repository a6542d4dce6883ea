//! Validated decoding of the kernel's wire records. Nothing from the ring buffer is trusted:
//! lengths, kinds, versions and string lengths are checked before use.

use std::{fmt, mem::size_of};

use credwatch_common::{
    FileOpenRecord, KIND_FILE_OPEN, PATH_BYTES, RAW_PATH_BYTES, RecordHeader, WIRE_VERSION, probe,
};

/// A file-open syscall, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub secret_id: u32,
    pub matched: u32,
    pub path_flags: u32,
    pub comm: Vec<u8>,
    pub raw_path: Option<Vec<u8>>,
    pub path: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    Open,
    Openat,
    Openat2,
    Creat,
    OpenByHandleAt,
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
            other => return Err(DecodeError::BadField("probe", other as u64)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    FileOpen(Box<FileOpen>),
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
        other => Err(DecodeError::Kind(other)),
    }
}

fn decode_file_open(bytes: &[u8], header: RecordHeader) -> Result<Event, DecodeError> {
    if header.size as usize != size_of::<FileOpenRecord>() || bytes.len() < header.size as usize {
        return Err(DecodeError::SizeMismatch {
            header: header.size,
            actual: bytes.len(),
        });
    }
    let rec: FileOpenRecord = read_pod(bytes)?;
    let path_len = rec.path_len as usize;
    if path_len > PATH_BYTES {
        return Err(DecodeError::BadField("path_len", path_len as u64));
    }
    let raw_len = rec.raw_len as usize;
    if raw_len > RAW_PATH_BYTES {
        return Err(DecodeError::BadField("raw_len", raw_len as u64));
    }
    let comm_len = rec
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(rec.comm.len());
    let has_raw = rec.probe != probe::OPEN_BY_HANDLE_AT
        && rec.path_flags & credwatch_common::path_flag::RAW_READ_ERROR == 0;
    Ok(Event::FileOpen(Box::new(FileOpen {
        boot_ns: rec.boot_ns,
        pid: rec.pid,
        tid: rec.tid,
        uid: rec.uid,
        gid: rec.gid,
        cgroup_id: rec.cgroup_id,
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
        secret_id: rec.secret_id,
        matched: rec.matched,
        path_flags: rec.path_flags,
        comm: rec.comm[..comm_len].to_vec(),
        raw_path: has_raw.then(|| rec.raw_path[..raw_len].to_vec()),
        path: rec.path[..path_len].to_vec(),
    })))
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
        rec.header = RecordHeader {
            kind: KIND_FILE_OPEN,
            version: WIRE_VERSION,
            size: size_of::<FileOpenRecord>() as u32,
        };
        rec.probe = probe::OPENAT;
        rec.pid = 42;
        rec.result = 3;
        rec.dev = (8 << 20) | 1;
        rec.comm[..3].copy_from_slice(b"cat");
        rec.path[..9].copy_from_slice(b"/run/x/y\xff");
        rec.path_len = 9;
        rec.raw_path[..1].copy_from_slice(b"y");
        rec.raw_len = 1;
        rec
    }

    fn bytes(rec: &FileOpenRecord) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain struct.
        unsafe {
            std::slice::from_raw_parts(
                (rec as *const FileOpenRecord).cast::<u8>(),
                size_of::<FileOpenRecord>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_file_open() {
        let Event::FileOpen(open) = decode(&bytes(&record())).unwrap();
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
        let data = bytes(&record());
        assert!(matches!(
            decode(&data[..100]),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let mut rec = record();
        rec.header.version = 9;
        assert_eq!(decode(&bytes(&rec)), Err(DecodeError::Version(9)));
        let mut rec = record();
        rec.header.kind = 77;
        assert_eq!(decode(&bytes(&rec)), Err(DecodeError::Kind(77)));
        let mut rec = record();
        rec.path_len = 5000;
        assert_eq!(
            decode(&bytes(&rec)),
            Err(DecodeError::BadField("path_len", 5000))
        );
        let mut rec = record();
        rec.probe = 99;
        assert_eq!(
            decode(&bytes(&rec)),
            Err(DecodeError::BadField("probe", 99))
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
