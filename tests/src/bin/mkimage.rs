//! Benchmark input: a generated OCI image layout of about SIZE_MIB of layer data, gzip layers
//! (as registries serve them): text files (configuration- and source-like, credential-free
//! apart from one planted AWS credentials file) and binary files, sizes 1 KiB to 256 KiB.
//! Deterministic (a fixed-seed generator). Usage: credwatch-mkimage DIR SIZE_MIB
//! Prints the total uncompressed layer bytes.

use std::{io::Write as _, path::Path};

use sha2::{Digest as _, Sha256};

const LAYERS: u64 = 8;
const WORDS: &[&str] = &[
    "server", "listen", "port", "timeout", "config", "value", "return", "function", "import",
    "module", "string", "buffer", "request", "response", "handler", "error", "status", "include",
    "static", "public", "class", "const", "let", "if", "else", "for", "while", "true", "false",
    "null", "path", "user", "group", "cache", "version", "build", "release", "debug", "=", "{",
    "}", "(", ")", ";", ":", "#", "//", "0", "1", "42", "8080",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).expect("write blob");
    (format!("sha256:{hex}"), bytes.len())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DIR"));
    let size_mib: u64 = args.next().and_then(|n| n.parse().ok()).expect("SIZE_MIB");
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create DIR");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_layer = size_mib * (1 << 20) / LAYERS;
    let mut total = 0u64;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut content = Vec::new();
    for layer in 0..LAYERS {
        let mut builder = tar::Builder::new(Vec::with_capacity(per_layer as usize + (1 << 20)));
        let mut written = 0u64;
        let mut file = 0u64;
        while written < per_layer {
            let size = 1024 + rng.next() % (255 * 1024);
            content.clear();
            let binary = rng.next() % 5 == 0;
            if binary {
                content.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
                while (content.len() as u64) < size {
                    content.extend_from_slice(&rng.next().to_le_bytes());
                }
            } else {
                while (content.len() as u64) < size {
                    let word = WORDS[(rng.next() % WORDS.len() as u64) as usize];
                    content.extend_from_slice(word.as_bytes());
                    content.push(if rng.next() % 8 == 0 { b'\n' } else { b' ' });
                }
            }
            let path = format!(
                "usr/share/app{layer}/d{}/f{file}{}",
                file / 64,
                if binary { ".so" } else { ".conf" }
            );
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, &path, &content[..])
                .unwrap();
            written += content.len() as u64;
            file += 1;
        }
        if layer == LAYERS - 1 {
            let secret = b"[default]\naws_access_key_id = AKIAQYLPMN5HHHFPZAM2\naws_secret_access_key = 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\n";
            let mut header = tar::Header::new_gnu();
            header.set_size(secret.len() as u64);
            header.set_mode(0o600);
            builder
                .append_data(&mut header, "root/.aws/credentials", &secret[..])
                .unwrap();
        }
        let raw = builder.into_inner().unwrap();
        total += raw.len() as u64;
        diff_ids.push(format!(
            "sha256:{}",
            Sha256::digest(&raw)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        layers.push(blob(&dir, &gz.finish().unwrap()));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {"Env": ["PATH=/usr/bin"]},
    });
    let (config_digest, config_size) = blob(&dir, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = blob(&dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    println!("{total}");
}
