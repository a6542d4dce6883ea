//! tracefs: mounted if missing (tracepoint attach needs it), and the syscall tracepoint layout
//! that the probes assume checked against the kernel's own `format` files.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use log::info;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

fn root() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

pub fn ensure_mounted() -> Result<()> {
    if root().is_some() {
        return Ok(());
    }
    info!("tracefs is not mounted; mounting it at {TRACEFS}");
    let target = std::ffi::CString::new(TRACEFS)?;
    let fstype = std::ffi::CString::new("tracefs")?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("tracefs is not mounted and mounting it at {TRACEFS} failed: {err}");
    }
    Ok(())
}

/// The cgroup tracepoints are read at fixed offsets (`root` @8, `id` @16, `path` @24): refuse
/// to attach when the kernel's layout differs.
pub fn check_cgroup_format(tracepoint: &str) -> Result<()> {
    check_format(
        "cgroup",
        tracepoint,
        &[("root", 8, 4), ("id", 16, 8), ("path", 24, 4)],
    )
}

/// A tracepoint's fields as its program reads them: (name, offset, size).
pub type Fields = [(&'static str, usize, usize)];

/// Checks that a tracepoint's fields are where its program reads them.
pub fn check_format(category: &str, tracepoint: &str, wanted: &Fields) -> Result<()> {
    let root = root().context("tracefs not mounted")?;
    let path = root
        .join("events")
        .join(category)
        .join(tracepoint)
        .join("format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("tracepoint {category}/{tracepoint} not available"))?;
    let fields = parse_fields(&text);
    for &(name, offset, size) in wanted {
        if !fields
            .iter()
            .any(|f| f.0 == name && f.1 == offset && f.2 == size)
        {
            bail!(
                "{}: field {name} is not at offset {offset} size {size}",
                path.display()
            );
        }
    }
    Ok(())
}

/// (name, offset, size) of each field in a tracepoint `format` file.
fn parse_fields(text: &str) -> Vec<(String, usize, usize)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?.split(';').next()?;
            let name = decl
                .rsplit([' ', '*'])
                .next()?
                .trim_end_matches("[]")
                .to_string();
            let number = |key: &str| -> Option<usize> {
                line.split(key)
                    .nth(1)?
                    .split(';')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            };
            Some((name, number("offset:")?, number("size:")?))
        })
        .collect()
}

/// The probes read syscall arguments at offset 16 + 8·i and the return value at 16. Refuse to
/// attach when the kernel says otherwise rather than read the wrong bytes.
pub fn check_syscall_format(tracepoint: &str) -> Result<()> {
    let root = root().context("tracefs not mounted")?;
    let path = root.join("events/syscalls").join(tracepoint).join("format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("tracepoint syscalls/{tracepoint} not available"))?;
    check_format_text(&path, &text, tracepoint.starts_with("sys_exit"))
}

fn check_format_text(path: &Path, text: &str, exit: bool) -> Result<()> {
    let fields: Vec<(String, usize, usize)> = parse_fields(text)
        .into_iter()
        .filter(|(name, _, _)| !name.starts_with("common_") && name != "__syscall_nr")
        .collect();
    for (i, (name, offset, size)) in fields.iter().enumerate() {
        let want = 16 + 8 * i;
        if *offset != want || *size != 8 {
            bail!(
                "{}: field {name} at offset {offset} size {size}, probes expect offset {want} size 8",
                path.display()
            );
        }
    }
    if exit && fields.first().map(|f| f.0.as_str()) != Some("ret") {
        bail!("{}: no `ret` field", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTER: &str = "name: sys_enter_openat\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n";

    #[test]
    fn accepts_the_standard_layout() {
        check_format_text(Path::new("f"), ENTER, false).unwrap();
        let exit = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        check_format_text(Path::new("f"), exit, true).unwrap();
    }

    #[test]
    fn rejects_a_moved_argument() {
        let moved = ENTER.replace("offset:24", "offset:32");
        assert!(check_format_text(Path::new("f"), &moved, false).is_err());
    }
}
