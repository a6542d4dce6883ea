//! Where judged accesses go: the forensic log and Prometheus metrics.

pub mod forensic;
pub mod logfile;
pub mod metrics;

use forensic::{
    AncestorSection, ContainerSection, FileSection, PodSection, ProcessSection, escape_bytes,
};

use crate::{
    containers::{self, Metadata},
    events::FileOpen,
    process::ProcessInfo,
    secrets::Credential,
};

pub fn container_section(meta: &Metadata) -> ContainerSection {
    ContainerSection {
        id: meta.id.clone(),
        name: meta.name.clone(),
        image: meta.image.clone(),
        runtime: meta.runtime,
        cgroup: meta.cgroup.clone(),
        started: meta.created.clone(),
    }
}

pub fn pod_section(meta: &Metadata) -> Option<PodSection> {
    let pod = meta.pod.as_ref()?;
    Some(PodSection {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        uid: pod.uid.clone(),
        labels: pod.labels.clone(),
        workload: containers::workload(meta),
    })
}

pub fn file_section(open: &FileOpen, credential: &Credential) -> FileSection {
    let resolved = open.result >= 0;
    FileSection {
        path: escape_bytes(&credential.path),
        opened_path: credential.opened_path.as_deref().map(escape_bytes),
        raw_path: open.raw_path.as_deref().map(escape_bytes),
        dev: resolved.then_some(open.dev),
        ino: resolved.then_some(open.ino),
        flags: open_flag_names(open.flags),
        result: open.result,
        errno: (open.result < 0).then(|| errno_name(-open.result)),
        syscall: open.syscall.name(),
        path_truncated: open.path_flags & credwatch_common::path_flag::TRUNCATED != 0,
        outside_root: open.path_flags & credwatch_common::path_flag::OUTSIDE_ROOT != 0,
        path_unresolved: open.path_flags & credwatch_common::path_flag::LEXICAL != 0,
    }
}

/// `boot_to_unix_ns` turns the kernel's boot-time stamps into wall-clock time.
pub fn process_section(info: &ProcessInfo, boot_to_unix_ns: i128) -> ProcessSection {
    ProcessSection {
        pid: info.pid,
        tid: info.tid,
        ppid: info.ppid,
        uid: info.uid,
        gid: info.gid,
        comm: escape_bytes(&info.comm),
        exe: info.program.shown_exe.clone(),
        args: info.program.shown_args.clone(),
        start_time: info
            .start_boottime
            .and_then(|ns| rfc3339(boot_to_unix_ns + ns as i128)),
        ancestors: info
            .ancestors
            .iter()
            .map(|a| AncestorSection {
                pid: a.pid,
                exe: a.program.shown_exe.clone(),
                args: a.program.shown_args.clone(),
            })
            .collect(),
        container_entry: None,
        cgroup: None,
    }
}

pub fn rfc3339(unix_ns: i128) -> Option<String> {
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns).ok()?;
    ts.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Symbolic open flags, e.g. ["O_RDONLY", "O_CLOEXEC"]; unknown bits as hex.
pub fn open_flag_names(flags: u32) -> Vec<String> {
    let flags = flags as i32;
    let mut names = vec![
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => "O_RDONLY",
            libc::O_WRONLY => "O_WRONLY",
            libc::O_RDWR => "O_RDWR",
            _ => "O_ACCMODE",
        }
        .to_string(),
    ];
    let mut rest = flags & !libc::O_ACCMODE;
    // Multi-bit flags first so their bits are not named twice.
    for (bit, name) in [
        (libc::O_TMPFILE, "O_TMPFILE"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_NOCTTY, "O_NOCTTY"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DSYNC, "O_DSYNC"),
        (libc::O_ASYNC, "O_ASYNC"),
        (libc::O_DIRECT, "O_DIRECT"),
        // The kernel value: libc defines O_LARGEFILE as 0 on 64-bit targets.
        (0o100000, "O_LARGEFILE"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_CLOEXEC, "O_CLOEXEC"),
        (libc::O_PATH, "O_PATH"),
    ] {
        if bit != 0 && rest & bit == bit {
            names.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    names
}

pub fn errno_name(errno: i64) -> String {
    let name = match errno as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names() {
        assert_eq!(open_flag_names(0), ["O_RDONLY"]);
        let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u32;
        assert_eq!(
            open_flag_names(f),
            ["O_WRONLY", "O_CREAT", "O_TRUNC", "O_CLOEXEC"]
        );
        assert_eq!(open_flag_names(libc::O_SYNC as u32), ["O_RDONLY", "O_SYNC"]);
        assert_eq!(open_flag_names(0x4000_0000), ["O_RDONLY", "0x40000000"]);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(13), "EACCES");
        assert_eq!(errno_name(999), "E999");
    }
}
