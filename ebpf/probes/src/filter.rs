//! The in-kernel credential filter: exact secret inodes, path prefixes and reversed path
//! suffixes, all filled by the agent from the credential catalogue.

use aya_ebpf::{helpers::generated, maps::lpm_trie::Key};
use credwatch_common::{InodeKey, PATH_BYTES, PATH_KEY_BYTES, PathKeyData, matched};

use crate::{PATH_PREFIXES, PATH_SUFFIXES, SECRET_INODES, vfs::PATH_MASK};

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
