//! Untrusted bytes from workloads (paths, argv, comm) as text. A leaf module: decoding, the
//! sinks and learn all use it, none of them through another.
//!
//! Bytes are kept verbatim where they are valid UTF-8; every byte that is not is written as
//! `\xNN`, and a literal backslash as `\\`, so nothing is dropped and the escaping is
//! unambiguous. JSON's own escaping (quotes, control characters) is done by serde_json on top.

/// Escapes untrusted bytes into a string (see the module doc).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
