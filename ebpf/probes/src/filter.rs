//! The in-kernel credential filter: exact secret inodes, path prefixes and reversed path
//! suffixes, all filled by the agent from the credential catalogue; and the cheap checks
//! that decide, before the path walk, that most opened files cannot match them.

use aya_ebpf::{helpers::generated, maps::lpm_trie::Key};
use credwatch_common::{
    DirKey, DirVerdict, FileKey, InodeKey, LEAF_KEY_BYTES, LeafKeyData, PATH_BYTES, PATH_KEY_BYTES,
    PathKeyData, filter_epoch, matched,
};

use crate::{
    DIR_PREFIXES, DIR_VERDICTS, FILE_VERDICTS, FILTER_EPOCH, LEAF_SUFFIXES, PATH_PREFIXES,
    PATH_SUFFIXES, SECRET_INODES,
    vfs::{self, KPath, PATH_MASK, offset},
};

/// Secret id for (dev, ino), or 0.
#[inline(always)]
pub fn secret_inode(dev: u32, ino: u64) -> u32 {
    let key = InodeKey {
        dev: dev as u64,
        ino,
    };
    unsafe { SECRET_INODES.get(&key) }.copied().unwrap_or(0)
}

/// Matches the path that ends at `PATH_BYTES` in `buf` and starts at `pos` against the prefix
/// and suffix tries. `key` is scratch memory for the trie keys; `rule` receives the matching
/// catalogue entry. A truncated path has no known start, so only its suffix is checked.
#[inline(always)]
pub unsafe fn match_path(
    buf: *const u8,
    pos: usize,
    truncated: bool,
    key: *mut Key<PathKeyData>,
    rule: *mut u32,
) -> u32 {
    let len = PATH_BYTES - pos;
    let n = if len > PATH_KEY_BYTES {
        PATH_KEY_BYTES
    } else {
        len
    };
    let data = unsafe { core::ptr::addr_of_mut!((*key).data) as *mut u8 };
    let mut hits = 0;
    unsafe {
        if !truncated {
            (*key).prefix_len = (n * 8) as u32;
            generated::bpf_probe_read_kernel(
                data.cast(),
                n as u32,
                buf.add(pos & PATH_MASK).cast(),
            );
            if let Some(entry) = PATH_PREFIXES.get(&*key) {
                hits |= matched::PREFIX;
                *rule = *entry;
            }
        }
        // The suffix trie holds byte-reversed suffixes ("/.aws/credentials" as
        // "slaitnederc/swa./"), so a longest-prefix match on the reversed path finds them.
        // The path ends at PATH_BYTES (8-aligned), so the reversal is one byte swap per
        // 8-byte word, over the full key width: bytes past `n` are ignored by the trie
        // (prefix_len), and a fixed, branch-free loop is cheap and easy on the verifier.
        let words = data as *mut u64;
        let tail = buf.add(PATH_BYTES) as *const u64;
        for i in 0..PATH_KEY_BYTES / 8 {
            *words.add(i) = (*tail.sub(i + 1)).swap_bytes();
        }
        (*key).prefix_len = (n * 8) as u32;
        if let Some(entry) = PATH_SUFFIXES.get(&*key) {
            hits |= matched::SUFFIX;
            *rule = *entry;
        }
    }
    hits
}

/// Working memory of the cheap checks (in `Scratch`).
#[repr(C)]
pub struct Cheap {
    /// Kernel struct fields read in one go (see `vfs::read_fields`).
    pub words: [u64; 8],
    /// The end of the file name lands at byte 64, behind a `/`; the rest is room the verifier
    /// needs to see (a position up to 63 plus up to 32 bytes).
    leaf: [u64; 12],
    leaf_key: Key<LeafKeyData>,
    /// The file's directory, should its verdict be remembered after the walk.
    dir_key: DirKey,
    /// The file, should it turn out not to be a credential.
    file_key: FileKey,
    /// Its dentry's name (`d_name.name`).
    name: u64,
    /// Its dentry's rename sequence when `seen_before` read it.
    seq: u32,
    /// 1: what is decided about the file may be remembered (see `remember_file`).
    rememberable: u32,
    /// The filter's epoch when the check began (see `filter_epoch`).
    epoch: u64,
    /// The file name's length (0: no name was read, nothing to remember).
    leaf_len: u32,
    /// Where the name's end goes in `leaf`.
    at: u32,
}

impl Cheap {
    /// Nothing to remember about this file's directory (its walk was not `worth_walking`'s).
    #[inline(always)]
    pub fn forget_name(&mut self) {
        self.leaf_len = 0;
    }
}

/// The filter's epoch now: the agent's generation of the keys and secret inodes plus the
/// programs' generation of moves in the file tree (`filter_epoch`; both only grow).
#[inline(always)]
fn epoch() -> u64 {
    let slot = |i| FILTER_EPOCH.get(i).copied().unwrap_or(0);
    // 0: nothing may be remembered or trusted (the agent has not allowed it: a probe that
    // sees moves is missing). The agent's epoch is 1 or more once allowed.
    if slot(filter_epoch::REMEMBER) == 0 {
        return 0;
    }
    slot(filter_epoch::KEYS).wrapping_add(slot(filter_epoch::TREE))
}

/// The first cheap fact: this very file (same dentry, name, parent, inode, mount and root)
/// was found not to be a credential since the keys and the secret inodes last changed.
/// Reads the epoch first, so that a decision made now and remembered by `remember_file` is
/// one made with keys and inodes at least that new.
#[inline(always)]
pub unsafe fn seen_before(c: &mut Cheap, at: KPath, inode: u64, root: KPath) -> bool {
    c.epoch = epoch();
    c.rememberable = 0;
    c.leaf_len = 0;
    let parent_at = offset!(dentry_d_parent);
    let fields = [
        offset!(dentry_d_seq),
        parent_at,
        parent_at + 8,
        parent_at + 16,
    ];
    let Ok([seq, parent, hash_len, name]) =
        (unsafe { vfs::read_fields(at.dentry, fields, &mut c.words) })
    else {
        // Unknown: nothing remembered, nothing skipped (the inode and the walk decide).
        c.name = 0;
        return false;
    };
    // An odd sequence is a rename in progress: decide, but remember nothing.
    c.seq = seq as u32;
    c.rememberable = (seq & 1 == 0 && c.epoch != 0) as u32;
    c.name = name;
    c.file_key = FileKey {
        dentry: at.dentry,
        name: hash_len,
        parent,
        inode,
        mnt: at.mnt,
        root_mnt: root.mnt,
        root_dentry: root.dentry,
    };
    c.epoch != 0 && unsafe { FILE_VERDICTS.get(&c.file_key) }.is_some_and(|e| *e == c.epoch)
}

/// Whether what was decided about the file may be remembered: its name matched no suffix
/// key's name part (a file called `credentials` is walked every time: whether it is one
/// depends on its directories, which a rename higher up changes without changing any of its
/// keys), and the file was not renamed while it was looked at (its dentry's sequence is the
/// one `seen_before` read: the name read for the check is then the name in the key).
#[inline(always)]
pub unsafe fn may_remember(c: &Cheap, dentry: u64) -> bool {
    c.rememberable != 0
        && unsafe { vfs::read::<u32>(dentry, offset!(dentry_d_seq)) }.is_ok_and(|s| s == c.seq)
}

/// Remembers that the file `seen_before` looked at is not a credential (after
/// `may_remember`).
#[inline(always)]
pub fn remember_file(c: &Cheap) {
    let _ = FILE_VERDICTS.insert(&c.file_key, &c.epoch, 0);
}

/// The cheap facts, decided before the walk that builds an opened file's whole path: whether
/// the file's name can end a suffix key, and whether a prefix key can start a path in the
/// file's directory (decided once per directory, after a walk, and remembered). Anything
/// unknown means walk: this only ever spares opens that cannot match.
#[inline(always)]
pub unsafe fn worth_walking(c: &mut Cheap, at: KPath, root: KPath) -> bool {
    c.leaf_len = 0;
    // Read by `seen_before`.
    let (parent, hash_len, name) = (c.file_key.parent, c.file_key.name, c.name);
    let len = ((hash_len >> 32) & 0xff) as usize;
    if parent == at.dentry || len == 0 || name == 0 {
        // A file system's root (no name of its own), or its name could not be read.
        c.rememberable = 0;
        return true;
    }
    if unsafe { leaf_may_match(c, name, len) } {
        c.rememberable = 0;
        return true;
    }
    c.leaf_len = len as u32;
    c.dir_key = DirKey {
        mnt: at.mnt,
        dentry: parent,
        root_mnt: root.mnt,
        root_dentry: root.dentry,
    };
    match unsafe { DIR_VERDICTS.get(&c.dir_key) } {
        // A mount's root file (bind-mounted) is named by its mount point, not this directory.
        Some(v) => c.epoch == 0 || v.epoch != c.epoch || v.walk != 0 || v.mnt_root == at.dentry,
        None => true,
    }
}

/// Whether the file name `name` (`len` bytes) can end one of the suffix keys: the last
/// `LEAF_KEY_BYTES` of `/` + name, byte-reversed, against the trie of the keys' name parts.
#[inline(always)]
unsafe fn leaf_may_match(c: &mut Cheap, name: u64, len: usize) -> bool {
    let n = if len > LEAF_KEY_BYTES {
        LEAF_KEY_BYTES
    } else {
        len
    };
    unsafe {
        let buf = c.leaf.as_mut_ptr() as *mut u8;
        // Through map memory, so that the compiler cannot drop the mask the verifier needs
        // (it knows n ≤ 32; the verifier only sees the masked position).
        core::ptr::write_volatile(&mut c.at, (64 - n) as u32);
        let at = core::ptr::read_volatile(&c.at) as usize & 63;
        if generated::bpf_probe_read_kernel(
            buf.add(at & 63).cast(),
            n as u32,
            (name + (len - n) as u64) as *const _,
        ) != 0
        {
            return true;
        }
        // Outside the key when the name fills it (n = 32): harmless.
        *buf.add(at.wrapping_sub(1) & 63) = b'/';
        // The name ends at byte 64 (8-aligned): reversing is one byte swap per word. Bytes
        // past the key's length are ignored by the trie.
        let words = core::ptr::addr_of_mut!(c.leaf_key.data) as *mut u64;
        let tail = buf.add(64) as *const u64;
        for i in 0..LEAF_KEY_BYTES / 8 {
            *words.add(i) = (*tail.sub(i + 1)).swap_bytes();
        }
        let bytes = if n + 1 > LEAF_KEY_BYTES {
            LEAF_KEY_BYTES
        } else {
            n + 1
        };
        c.leaf_key.prefix_len = (bytes * 8) as u32;
        LEAF_SUFFIXES.get(&c.leaf_key).is_some()
    }
}

/// After a clean walk of a file that `worth_walking` read the name of: decides for its
/// directory whether a prefix key can match a file in it — a key starts the directory's path
/// (`/proc/` for `/proc/1`), or the directory's path starts a key (`/etc/` for
/// `/etc/ssh/ssh_host_`) — and remembers that. `buf[pos..PATH_BYTES]` is the file's path.
#[inline(always)]
pub unsafe fn remember_dir(
    c: &mut Cheap,
    key: &mut Key<PathKeyData>,
    buf: *const u8,
    pos: usize,
    at: KPath,
) {
    let leaf = c.leaf_len as usize;
    if leaf == 0 || pos + leaf >= PATH_BYTES || c.epoch == 0 {
        return;
    }
    // The directory's path and its `/`: [pos, dir_end).
    let dir_end = PATH_BYTES - leaf;
    let m = dir_end - pos;
    let n = if m > PATH_KEY_BYTES {
        PATH_KEY_BYTES
    } else {
        m
    };
    unsafe {
        let Ok(mnt_root) = vfs::read::<u64>(at.mnt, offset!(vfsmount_mnt_root)) else {
            return;
        };
        if mnt_root == at.dentry {
            return;
        }
        key.prefix_len = (n * 8) as u32;
        generated::bpf_probe_read_kernel(
            core::ptr::addr_of_mut!(key.data).cast(),
            n as u32,
            buf.add(pos & PATH_MASK).cast(),
        );
        let walk = PATH_PREFIXES.get(&*key).is_some()
            || DIR_PREFIXES
                .get(&*key)
                .is_some_and(|len| *len as usize == m);
        let verdict = DirVerdict {
            mnt_root,
            epoch: c.epoch,
            walk: walk as u32,
            _pad: 0,
        };
        let _ = DIR_VERDICTS.insert(&c.dir_key, &verdict, 0);
    }
}
