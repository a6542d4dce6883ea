//! Kernel struct field offsets for the probes, read from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the probes get every offset they use as a load-time
//! global. A field that cannot be found (or has a different width than the probes read) is an
//! error: attaching with a wrong offset would report garbage.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Struct, Type};
use credwatch_common::{IoUringOffsets, KernelOffsets};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where an offset goes in [`KernelOffsets`].
type Slot = fn(&mut KernelOffsets) -> &mut u32;

/// (struct, field, bytes the probes read or 0 for "embedded struct, any size", destination).
const FIELDS: [(&str, &str, usize, Slot); 34] = [
    ("task_struct", "files", 8, |o| &mut o.task_files),
    ("task_struct", "fs", 8, |o| &mut o.task_fs),
    ("files_struct", "fdt", 8, |o| &mut o.files_fdt),
    ("fdtable", "max_fds", 4, |o| &mut o.fdtable_max_fds),
    ("fdtable", "fd", 8, |o| &mut o.fdtable_fd),
    ("file", "f_path", 0, |o| &mut o.file_f_path),
    ("file", "f_inode", 8, |o| &mut o.file_f_inode),
    ("file", "f_flags", 4, |o| &mut o.file_f_flags),
    ("path", "mnt", 8, |o| &mut o.path_mnt),
    ("path", "dentry", 8, |o| &mut o.path_dentry),
    ("fs_struct", "root", 0, |o| &mut o.fs_root),
    ("fs_struct", "pwd", 0, |o| &mut o.fs_pwd),
    ("dentry", "d_parent", 8, |o| &mut o.dentry_d_parent),
    ("dentry", "d_seq", 0, |o| &mut o.dentry_d_seq),
    ("dentry", "d_name", 0, |o| &mut o.dentry_d_name),
    ("qstr", "len", 4, |o| &mut o.qstr_len),
    ("qstr", "name", 8, |o| &mut o.qstr_name),
    ("inode", "i_ino", 8, |o| &mut o.inode_i_ino),
    ("inode", "i_sb", 8, |o| &mut o.inode_i_sb),
    ("super_block", "s_dev", 4, |o| &mut o.sb_s_dev),
    ("mount", "mnt", 0, |o| &mut o.mount_mnt),
    ("mount", "mnt_parent", 8, |o| &mut o.mount_mnt_parent),
    ("mount", "mnt_mountpoint", 8, |o| {
        &mut o.mount_mnt_mountpoint
    }),
    ("vfsmount", "mnt_root", 8, |o| &mut o.vfsmount_mnt_root),
    ("task_struct", "pid", 4, |o| &mut o.task_pid),
    ("task_struct", "tgid", 4, |o| &mut o.task_tgid),
    ("task_struct", "real_parent", 8, |o| &mut o.task_real_parent),
    ("task_struct", "start_boottime", 8, |o| {
        &mut o.task_start_boottime
    }),
    ("task_struct", "mm", 8, |o| &mut o.task_mm),
    ("task_struct", "exit_code", 4, |o| &mut o.task_exit_code),
    ("mm_struct", "arg_start", 8, |o| &mut o.mm_arg_start),
    ("mm_struct", "arg_end", 8, |o| &mut o.mm_arg_end),
    ("linux_binprm", "filename", 8, |o| &mut o.binprm_filename),
    ("linux_binprm", "file", 8, |o| &mut o.binprm_file),
];

pub fn from_btf_file(path: &Path) -> Result<KernelOffsets> {
    let btf =
        Btf::from_file(path).with_context(|| format!("reading kernel BTF {}", path.display()))?;
    let mut offsets = KernelOffsets::default();
    for (structure, field, width, slot) in FIELDS {
        *slot(&mut offsets) = field_offset(&btf, structure, field, width)
            .with_context(|| format!("kernel BTF: {structure}.{field}"))?;
    }
    let o = &offsets;
    // The probes batch reads (one read per dentry step, one per `struct path`), which relies on
    // these layout facts; refuse rather than misread on a kernel where they do not hold.
    let layout = [
        (
            o.path_mnt == 0 && o.path_dentry == 8,
            "struct path is not {mnt, dentry}",
        ),
        (
            o.qstr_len == 4 && o.qstr_name == 8,
            "struct qstr is not {hash, len, name}",
        ),
        (
            o.dentry_d_name == o.dentry_d_parent + 8,
            "dentry.d_name does not follow d_parent",
        ),
    ];
    if let Some((_, what)) = layout.iter().find(|(ok, _)| !ok) {
        bail!("kernel BTF: {what}; the file probes' batched reads would be wrong");
    }
    offsets.valid = 1;
    Ok(offsets)
}

/// io_uring's request layout (internal, so from BTF like the rest): where an open request's
/// `io_open` sits (the request's command area) plus its `file_slot`, the request's opcode and
/// flags. Also checks the `io_uring_complete` tracepoint's arguments (ctx, req, cqe), which
/// older kernels passed differently.
pub fn io_uring_from_btf_file(path: &Path) -> Result<IoUringOffsets> {
    let btf = Btf::from_file(path)?;
    let command = field_offset(&btf, "io_kiocb", "cmd", 0).context("io_kiocb.cmd")?;
    let slot = field_offset(&btf, "io_open", "file_slot", 4).context("io_open.file_slot")?;
    let opcode = field_offset(&btf, "io_kiocb", "opcode", 1).context("io_kiocb.opcode")?;
    let flags = field_offset(&btf, "io_kiocb", "flags", 8).context("io_kiocb.flags")?;
    let open_field = |field: &str, width: usize| {
        field_offset(&btf, "io_open", field, width)
            .map(|offset| command + offset)
            .with_context(|| format!("io_open.{field}"))
    };
    let how = open_field("how", 0)?;
    let how_flags = field_offset(&btf, "open_how", "flags", 8).context("open_how.flags")?;
    let last = tracepoint_parameters(&btf, "btf_trace_io_uring_complete")?;
    if last.len() != 4 || last[3] != "io_uring_cqe" {
        bail!("io_uring_complete's arguments are {last:?}, not (ctx, req, struct io_uring_cqe *)");
    }
    Ok(IoUringOffsets {
        open_file_slot: command + slot,
        opcode,
        flags,
        open_filename: open_field("filename", 8)?,
        open_dfd: open_field("dfd", 4)?,
        open_how_flags: how + how_flags,
        filename_name: field_offset(&btf, "filename", "name", 8).context("filename.name")?,
        valid: 1,
    })
}

/// The parameter types of a `btf_trace_*` typedef: for pointers to structs, the struct's
/// name, otherwise the type's kind.
fn tracepoint_parameters(btf: &Btf, typedef: &str) -> Result<Vec<String>> {
    let ty = btf
        .resolve_types_by_name(typedef)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{typedef} not found"))?;
    let Type::Ptr(ptr) = strip_qualifiers(btf, ty)? else {
        bail!("{typedef} is not a function pointer");
    };
    let Type::FuncProto(proto) = btf.resolve_chained_type(&ptr)? else {
        bail!("{typedef} is not a function pointer");
    };
    proto
        .parameters
        .iter()
        .map(|p| {
            Ok(match strip_qualifiers(btf, btf.resolve_chained_type(p)?)? {
                Type::Ptr(inner) => match strip_qualifiers(btf, btf.resolve_chained_type(&inner)?)?
                {
                    Type::Struct(s) => btf.resolve_name(&s)?,
                    other => other.name().to_string(),
                },
                other => other.name().to_string(),
            })
        })
        .collect()
}

/// Where the first four syscall arguments sit in the saved user registers (`struct pt_regs`),
/// as (offset of the first of 8 words, word index of each argument). None on architectures
/// whose argument registers are not known here, or when they do not fit in 8 words; the
/// probes then save the arguments at syscall entry instead.
pub fn syscall_arg_registers(path: &Path) -> Result<Option<(u32, [u32; 4])>> {
    // x86-64 syscall ABI: rdi, rsi, rdx, r10. (On arm64 x0 is overwritten by the return value.)
    let names: [&str; 4] = match std::env::consts::ARCH {
        "x86_64" => ["di", "si", "dx", "r10"],
        _ => return Ok(None),
    };
    let btf = Btf::from_file(path)?;
    let mut offsets = [0u32; 4];
    for (slot, name) in offsets.iter_mut().zip(names) {
        match field_offset(&btf, "pt_regs", name, 8) {
            Ok(offset) => *slot = offset,
            Err(_) => return Ok(None),
        }
    }
    let base = *offsets.iter().min().unwrap();
    let words = offsets.map(|o| (o - base) / 8);
    if words.iter().any(|&w| w >= 8) || offsets.iter().any(|o| o % 8 != 0) {
        return Ok(None);
    }
    Ok(Some((base, words)))
}

/// Byte offset of `field` in `struct structure`, looking through anonymous members.
fn field_offset(btf: &Btf, structure: &str, field: &str, width: usize) -> Result<u32> {
    let st = btf
        .resolve_types_by_name(structure)?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| anyhow!("struct {structure} not found"))?;
    let (bits, ty) = find_member(btf, &st, field)?.ok_or_else(|| anyhow!("no such field"))?;
    if bits % 8 != 0 {
        bail!("field is a bitfield");
    }
    if width != 0 {
        let size = type_size(btf, ty)?;
        if size != width {
            bail!("field is {size} bytes wide, the probes read {width}");
        }
    }
    Ok(bits / 8)
}

fn find_member(btf: &Btf, st: &Struct, field: &str) -> Result<Option<(u32, Type)>> {
    for member in &st.members {
        let name = btf.resolve_name(member)?;
        let ty = btf.resolve_chained_type(member)?;
        if name == field {
            return Ok(Some((member.bit_offset(), ty)));
        }
        if name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = strip_qualifiers(btf, ty)?
            && let Some((bits, ty)) = find_member(btf, &inner, field)?
        {
            return Ok(Some((member.bit_offset() + bits, ty)));
        }
    }
    Ok(None)
}

fn strip_qualifiers(btf: &Btf, mut ty: Type) -> Result<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

fn type_size(btf: &Btf, ty: Type) -> Result<usize> {
    Ok(match strip_qualifiers(btf, ty)? {
        Type::Int(i) => i.size(),
        Type::Ptr(_) => 8,
        Type::Enum(e) => e.size(),
        Type::Struct(s) | Type::Union(s) => s.size(),
        other => bail!("unexpected type {}", other.name()),
    })
}
