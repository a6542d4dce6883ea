//! cgroup v2 ids (what `bpf_get_current_cgroup_id()` returns: the cgroup directory's inode
//! number) → cgroup paths → container ids, for every common runtime and cgroup layout.

use std::{
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
};

/// Where cgroup2 is mounted: `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure
/// cgroup2 hosts (read from mountinfo). The last one wins: in a pod, the host's cgroupfs mounted
/// over the runtime's (namespaced) one is what resolves every container's cgroup.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    last_cgroup2_mount(&mountinfo)
}

fn last_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
    })
}

/// Resolves cgroup ids with `open_by_handle_at` on the cgroup2 mount: a kernfs file handle is
/// the cgroup id itself, so one syscall finds the directory, however new it is.
pub struct CgroupPaths {
    mount: PathBuf,
    mount_fd: File,
}

/// `FILEID_KERNFS` (include/linux/exportfs.h).
const FILEID_KERNFS: i32 = 0xfe;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

impl CgroupPaths {
    pub fn open() -> std::io::Result<Self> {
        let mount = cgroup2_mount()
            .ok_or_else(|| std::io::Error::other("no cgroup2 mount in /proc/self/mountinfo"))?;
        let mount_fd = File::open(&mount)?;
        Ok(CgroupPaths { mount, mount_fd })
    }

    /// The cgroup path ("/system.slice/x.scope"), or None when the cgroup no longer exists.
    pub fn path_of(&self, id: u64) -> Option<String> {
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: a valid handle struct and mount fd; the returned fd is owned by `dir`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.mount_fd.as_raw_fd(),
                &mut handle as *mut KernfsHandle,
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_DIRECTORY,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd is a fresh descriptor we own.
        let dir = unsafe { File::from_raw_fd(fd as i32) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        let relative = target.strip_prefix(&self.mount).ok()?;
        Some(format!("/{}", relative.display()).replace("//", "/"))
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }
}

/// The cgroup v2 path of a process (`0::/path` in `/proc/<pid>/cgroup`), for processes whose
/// cgroup id could not be resolved.
pub fn path_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Which runtime a cgroup path says made the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeHint {
    Containerd,
    Crio,
    Docker,
    Podman,
    /// kubepods cgroupfs layout: containerd or CRI-O, the path does not say which.
    Cri,
    /// `/<id>` or `/<namespace>/<id>`: plain runc or containerd (`ctr`), confirmed by their
    /// state directories.
    RuncOrContainerd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    pub hint: RuntimeHint,
    /// From kubepods paths.
    pub pod_uid: Option<String>,
    /// The containerd namespace of a `/<namespace>/<id>` path.
    pub namespace: Option<String>,
}

/// Parses a cgroup path into the container it belongs to; None for host cgroups.
pub fn parse(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let last = *segments.last()?;
    let pod_uid = segments.iter().find_map(|s| pod_uid_of(s));
    let scoped = |prefix: &str, hint| {
        let id = last.strip_prefix(prefix)?.strip_suffix(".scope")?;
        (!id.starts_with("conmon-")).then(|| ContainerRef {
            id: id.to_string(),
            hint,
            pod_uid: pod_uid.clone(),
            namespace: None,
        })
    };
    if let Some(found) = scoped("cri-containerd-", RuntimeHint::Containerd)
        .or_else(|| scoped("crio-", RuntimeHint::Crio))
        .or_else(|| scoped("docker-", RuntimeHint::Docker))
        .or_else(|| scoped("libpod-", RuntimeHint::Podman))
    {
        return Some(found);
    }
    if segments
        .iter()
        .any(|s| s.ends_with(".slice") || s.ends_with(".scope") || s.ends_with(".service"))
    {
        return None;
    }
    match segments.as_slice() {
        // cgroupfs kubepods: /kubepods[/burstable|/besteffort]/pod<uid>/<id>
        ["kubepods", .., pod, id] if pod.starts_with("pod") => Some(ContainerRef {
            id: id.to_string(),
            hint: RuntimeHint::Cri,
            pod_uid,
            namespace: None,
        }),
        ["kubepods", ..] => None,
        ["docker", id] => Some(ContainerRef {
            id: id.to_string(),
            hint: RuntimeHint::Docker,
            pod_uid: None,
            namespace: None,
        }),
        [id] => Some(ContainerRef {
            id: id.to_string(),
            hint: RuntimeHint::RuncOrContainerd,
            pod_uid: None,
            namespace: None,
        }),
        [namespace, id] => Some(ContainerRef {
            id: id.to_string(),
            hint: RuntimeHint::RuncOrContainerd,
            pod_uid: None,
            namespace: Some(namespace.to_string()),
        }),
        _ => None,
    }
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid with _>.slice` (systemd) → the pod uid.
fn pod_uid_of(segment: &str) -> Option<String> {
    let rest = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = rest.rfind("pod")?;
    if at > 0 && !rest[..at].ends_with('-') {
        return None;
    }
    let uid = &rest[at + 3..];
    (uid.len() >= 32
        && uid
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_'))
    .then(|| uid.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2d9c6a1b7e4f0a8c5d2e1f9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b";
    const UID: &str = "8f3c2a1e-5b6d-4c7e-9f0a-1b2c3d4e5f60";

    fn id_of(path: &str) -> Option<(String, RuntimeHint, Option<String>, Option<String>)> {
        parse(path).map(|c| (c.id, c.hint, c.pod_uid, c.namespace))
    }

    #[test]
    fn kubernetes_systemd_layouts() {
        let uid_ = UID.replace('-', "_");
        for qos in ["burstable", "besteffort"] {
            let path = format!(
                "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/cri-containerd-{ID}.scope"
            );
            assert_eq!(
                id_of(&path),
                Some((ID.into(), RuntimeHint::Containerd, Some(UID.into()), None))
            );
        }
        // Guaranteed pods sit directly under kubepods.slice.
        let path = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope");
        assert_eq!(
            id_of(&path),
            Some((ID.into(), RuntimeHint::Crio, Some(UID.into()), None))
        );
        let conmon = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope");
        assert_eq!(id_of(&conmon), None);
        // The pod's own slice is not a container.
        assert_eq!(
            id_of(&format!("/kubepods.slice/kubepods-pod{uid_}.slice")),
            None
        );
    }

    #[test]
    fn kubernetes_cgroupfs_layouts() {
        for qos in ["/burstable", "/besteffort", ""] {
            let path = format!("/kubepods{qos}/pod{UID}/{ID}");
            assert_eq!(
                id_of(&path),
                Some((ID.into(), RuntimeHint::Cri, Some(UID.into()), None))
            );
        }
        assert_eq!(id_of(&format!("/kubepods/burstable/pod{UID}")), None);
        assert_eq!(id_of("/kubepods/burstable"), None);
    }

    #[test]
    fn docker_podman_runc_containerd() {
        assert_eq!(
            id_of(&format!("/docker/{ID}")),
            Some((ID.into(), RuntimeHint::Docker, None, None))
        );
        assert_eq!(
            id_of(&format!("/system.slice/docker-{ID}.scope")),
            Some((ID.into(), RuntimeHint::Docker, None, None))
        );
        assert_eq!(
            id_of(&format!("/machine.slice/libpod-{ID}.scope")),
            Some((ID.into(), RuntimeHint::Podman, None, None))
        );
        assert_eq!(
            id_of(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            Some((ID.into(), RuntimeHint::Podman, None, None))
        );
        assert_eq!(
            id_of(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            id_of("/probe1"),
            Some(("probe1".into(), RuntimeHint::RuncOrContainerd, None, None))
        );
        assert_eq!(
            id_of("/default/web"),
            Some((
                "web".into(),
                RuntimeHint::RuncOrContainerd,
                None,
                Some("default".into())
            ))
        );
    }

    #[test]
    fn the_last_cgroup2_mount_wins() {
        let hybrid = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            last_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pod = "100 90 0:30 /kubepods/pod1/abc /sys/fs/cgroup ro - cgroup2 cgroup rw\n\
                   120 100 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup rw\n\
                   130 90 0:5 / /dev rw - tmpfs tmpfs rw\n";
        assert_eq!(
            last_cgroup2_mount(pod),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            last_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn host_cgroups_are_not_containers() {
        for path in [
            "/",
            "/init.scope",
            "/system.slice/ssh.service",
            "/user.slice/user-0.slice/session-1.scope",
        ] {
            assert_eq!(id_of(path), None, "{path}");
        }
    }
}
