//! Canonical secret paths, shared by the matcher and `credwatch learn`.
//!
//! Kubernetes writes Secret, ConfigMap and projected volumes with an atomic writer: the files
//! live in a timestamped directory (`..2026_11_30_18_00_00.123456789`) that `..data` points at,
//! and each visible name is a symlink through `..data`. The kernel resolves the symlinks, so
//! an open of `/run/secrets/app/token` is seen at `/run/secrets/app/..2026_…/token`, and the
//! directory changes at every rotation. Dropping that one component gives the name the
//! workload uses and keeps it stable across rotations.

use std::borrow::Cow;

/// `path` with atomic-writer components (`..data`, `..<timestamp>`) removed.
pub fn canonical(path: &[u8]) -> Cow<'_, [u8]> {
    if !path.split(|&b| b == b'/').any(is_atomic_writer_dir) {
        return Cow::Borrowed(path);
    }
    let kept: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !is_atomic_writer_dir(c))
        .collect();
    Cow::Owned(kept.join(&b'/'))
}

/// `..data`, or `..YYYY_MM_DD_HH_MM_SS.<digits>` as Kubernetes' AtomicWriter names them.
fn is_atomic_writer_dir(component: &[u8]) -> bool {
    if component == b"..data" {
        return true;
    }
    let Some(rest) = component.strip_prefix(b"..") else {
        return false;
    };
    // 2006_01_02_15_04_05.<random digits>
    let shape = b"dddd_dd_dd_dd_dd_dd.";
    rest.len() > shape.len()
        && rest.iter().zip(shape).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            other => c == other,
        })
        && rest[shape.len()..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_directories_are_dropped() {
        let c = |p: &str| String::from_utf8(canonical(p.as_bytes()).into_owned()).unwrap();
        assert_eq!(
            c(
                "/var/run/secrets/kubernetes.io/serviceaccount/..2026_11_30_18_00_00.123456789/token"
            ),
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        );
        assert_eq!(c("/etc/app/..data/password"), "/etc/app/password");
        assert_eq!(c("/run/secrets/db_password"), "/run/secrets/db_password");
        // Look-alikes stay.
        assert_eq!(c("/run/secrets/..2026/token"), "/run/secrets/..2026/token");
        assert_eq!(
            c("/run/secrets/..hidden/token"),
            "/run/secrets/..hidden/token"
        );
    }
}
