//! What counts as a credential inside a file or a string: one keyword prefilter pass
//! (aho-corasick) over the bytes, then a bounded shape check anchored at each hit. Also the type
//! checks that separate a credential from a harmless file at a catalogue path (a private key
//! from a certificate, a kubeconfig with a token from one with a CA only).

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use regex::bytes::Regex;

/// A credential found in some bytes: the rule, where it starts, and the matched value (kept in
/// memory for the fingerprint only; never printed).
pub struct Hit<'a> {
    pub rule: &'static str,
    /// The part of the value that is public by design (a key type or token prefix): the only
    /// part a preview may show.
    pub public_prefix: String,
    pub value: &'a [u8],
}

/// One shape: the keyword the prefilter looks for, the rule name, and the full shape anchored
/// at the keyword (at most `SHAPE_WINDOW` bytes are looked at).
struct Shape {
    keyword: &'static str,
    rule: &'static str,
    shape: &'static str,
    /// How many leading bytes of the match are a public prefix.
    public: PublicPart,
}

enum PublicPart {
    Keyword,
    /// The whole first line (a PEM header names the key type only).
    FirstLine,
}

const SHAPE_WINDOW: usize = 8192;

const SHAPES: &[Shape] = &[
    Shape {
        keyword: "-----BEGIN ",
        rule: "private-key",
        // The body is required: a header alone (documentation, a parser's source) is not a key.
        shape: r"^-----BEGIN ((RSA|DSA|EC|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY( BLOCK)?-----\r?\n[A-Za-z0-9+/=\r\n:,\- ]{64,}",
        public: PublicPart::FirstLine,
    },
    Shape {
        keyword: "AKIA",
        rule: "aws-access-key-id",
        shape: r"^AKIA[A-Z2-7]{16}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "ASIA",
        rule: "aws-access-key-id",
        shape: r"^ASIA[A-Z2-7]{16}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "aws_secret_access_key",
        rule: "aws-secret-access-key",
        shape: r"(?i)^aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+]{40}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "ghp_",
        rule: "github-token",
        shape: r"^ghp_[A-Za-z0-9]{36}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "gho_",
        rule: "github-token",
        shape: r"^gho_[A-Za-z0-9]{36}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "ghs_",
        rule: "github-token",
        shape: r"^ghs_[A-Za-z0-9]{36}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "github_pat_",
        rule: "github-token",
        shape: r"^github_pat_[A-Za-z0-9_]{82}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "glpat-",
        rule: "gitlab-token",
        shape: r"^glpat-[A-Za-z0-9_\-]{20,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "npm_",
        rule: "npm-token",
        shape: r"^npm_[A-Za-z0-9]{36}\b",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "pypi-AgE",
        rule: "pypi-token",
        shape: r"^pypi-AgE[A-Za-z0-9_\-]{50,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "xoxa-",
        rule: "slack-token",
        shape: r"^xoxa-[0-9A-Za-z\-]{10,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "xoxb-",
        rule: "slack-token",
        shape: r"^xoxb-[0-9A-Za-z\-]{10,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "xoxp-",
        rule: "slack-token",
        shape: r"^xoxp-[0-9A-Za-z\-]{10,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "xoxo-",
        rule: "slack-token",
        shape: r"^xoxo-[0-9A-Za-z\-]{10,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "xoxs-",
        rule: "slack-token",
        shape: r"^xoxs-[0-9A-Za-z\-]{10,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "xoxr-",
        rule: "slack-token",
        shape: r"^xoxr-[0-9A-Za-z\-]{10,}",
        public: PublicPart::Keyword,
    },
    Shape {
        keyword: "\"private_key_id\"",
        rule: "gcp-service-account-key",
        shape: r#"^"private_key_id"\s*:\s*"[0-9a-f]{40}""#,
        public: PublicPart::Keyword,
    },
];

struct Compiled {
    prefilter: AhoCorasick,
    shapes: Vec<Regex>,
}

static COMPILED: LazyLock<Compiled> = LazyLock::new(|| Compiled {
    // Leftmost-first (not overlapping) so the search runs on its SIMD prefilter; keywords do
    // not contain one another.
    prefilter: AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(SHAPES.iter().map(|s| s.keyword))
        .expect("static keywords"),
    shapes: SHAPES
        .iter()
        .map(|s| Regex::new(s.shape).expect("static shape"))
        .collect(),
});

/// Every credential in `bytes`, at most one per (rule, value).
pub fn scan(bytes: &[u8]) -> Vec<Hit<'_>> {
    let compiled = &*COMPILED;
    let mut hits: Vec<Hit> = Vec::new();
    for found in compiled.prefilter.find_iter(bytes) {
        let index = found.pattern().as_usize();
        let start = found.start();
        let window = &bytes[start..bytes.len().min(start + SHAPE_WINDOW)];
        let Some(m) = compiled.shapes[index].find(window) else {
            continue;
        };
        let value = &window[..m.end()];
        let shape = &SHAPES[index];
        if hits
            .iter()
            .any(|h| h.rule == shape.rule && h.value == value)
        {
            continue;
        }
        let public_prefix = match shape.public {
            PublicPart::Keyword => shape.keyword.trim_matches('"').to_string(),
            PublicPart::FirstLine => {
                String::from_utf8_lossy(value.split(|b| *b == b'\n').next().unwrap_or_default())
                    .trim_end()
                    .to_string()
            }
        };
        hits.push(Hit {
            rule: shape.rule,
            public_prefix,
            value,
        });
    }
    hits
}

/// Binaries are skipped by the content scan: executables and anything with a NUL byte early
/// on (secrets in binaries are out of scope; their bytes would only produce noise).
pub fn looks_binary(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF") || head[..head.len().min(1024)].contains(&0)
}

/// AWS's documentation keys (`AKIAIOSFODNN7EXAMPLE`) and the like: findings, demoted.
pub fn is_known_example(value: &[u8]) -> bool {
    const EXAMPLES: &[&[u8]] = &[
        b"AKIAIOSFODNN7EXAMPLE",
        b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ];
    EXAMPLES
        .iter()
        .any(|e| value.windows(e.len()).any(|w| w == *e))
}

/// What a file at a catalogue path holds, where the type separates a credential from a
/// harmless file. `None`: no type check for this rule (any non-empty file is a finding).
pub fn catalogue_file_holds_credential(rule: &str, path: &str, bytes: &[u8]) -> Option<bool> {
    static KUBECONFIG: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?m)^\s*(token|client-key-data|client-key|password|auth-provider|exec):")
            .unwrap()
    });
    static DOCKER_AUTH: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#""(auth|identitytoken|registrytoken)"\s*:\s*"[^"]+""#).unwrap()
    });
    static NPMRC: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?m)(_authToken|_auth|_password)\s*=\s*\S+").unwrap());
    static PYPIRC: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?m)^\s*password\s*[=:]\s*\S+").unwrap());
    static GIT_CREDENTIALS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?m)^[a-z][a-z0-9+.\-]*://[^:/@\s]*:[^@\s]+@").unwrap());
    static NETRC: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\bpassword\s+\S+").unwrap());
    static AWS: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?im)^\s*(aws_secret_access_key|aws_session_token)\s*=\s*\S+").unwrap()
    });
    let name = path.rsplit('/').next().unwrap_or(path);
    let private_key = || scan(bytes).iter().any(|h| h.rule == "private-key");
    Some(match rule {
        "kubeconfig" => KUBECONFIG.is_match(bytes),
        "docker-config" => DOCKER_AUTH.is_match(bytes),
        "aws-shared-credentials" => AWS.is_match(bytes),
        "git-credentials" if name == ".netrc" => NETRC.is_match(bytes),
        "git-credentials" => GIT_CREDENTIALS.is_match(bytes),
        "tool-tokens" if name == ".npmrc" => NPMRC.is_match(bytes),
        "tool-tokens" if name == ".pypirc" => PYPIRC.is_match(bytes),
        // Key directories also hold certificates and public keys.
        "ssh-private-keys" | "tls-private-keys" => private_key(),
        _ if name.ends_with(".key") || name.ends_with(".pem") => private_key(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<&'static str> {
        scan(text.as_bytes()).iter().map(|h| h.rule).collect()
    }

    #[test]
    fn shapes_need_their_whole_form() {
        assert_eq!(rules("id AKIAQYLPMN5HHHFPZAM2 x"), ["aws-access-key-id"]);
        assert!(rules("AKIA is a prefix").is_empty());
        assert!(rules("-----BEGIN RSA PRIVATE KEY-----\n(elided)").is_empty());
        assert!(rules("-----BEGIN CERTIFICATE-----\nMIIB").is_empty());
        let key = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"
        );
        let hits = scan(key.as_bytes());
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].public_prefix, "-----BEGIN OPENSSH PRIVATE KEY-----");
        assert_eq!(
            rules(&format!("t=ghp_{}", "a".repeat(36))),
            ["github-token"]
        );
        assert!(rules(&format!("t=ghp_{}", "a".repeat(20))).is_empty());
    }

    #[test]
    fn type_checks_separate_credentials_from_harmless_files() {
        let kube_ca = "clusters:\n- cluster:\n    certificate-authority-data: LS0t\n";
        let kube_token = "users:\n- name: a\n  user:\n    token: abc\n";
        assert_eq!(
            catalogue_file_holds_credential("kubeconfig", "/root/.kube/config", kube_ca.as_bytes()),
            Some(false)
        );
        assert_eq!(
            catalogue_file_holds_credential(
                "kubeconfig",
                "/root/.kube/config",
                kube_token.as_bytes()
            ),
            Some(true)
        );
        let store = r#"{"credsStore": "desktop"}"#;
        let auths = r#"{"auths": {"r.io": {"auth": "dXNlcjpwYXNz"}}}"#;
        let docker = |b: &str| {
            catalogue_file_holds_credential(
                "docker-config",
                "/root/.docker/config.json",
                b.as_bytes(),
            )
        };
        assert_eq!(docker(store), Some(false));
        assert_eq!(docker(auths), Some(true));
        assert_eq!(
            catalogue_file_holds_credential(
                "tool-tokens",
                "/root/.npmrc",
                b"registry=https://r/\n"
            ),
            Some(false)
        );
        assert_eq!(
            catalogue_file_holds_credential(
                "tool-tokens",
                "/root/.npmrc",
                b"//r/:_authToken=abc\n"
            ),
            Some(true)
        );
        assert_eq!(
            catalogue_file_holds_credential(
                "git-credentials",
                "/root/.git-credentials",
                b"https://u:p@github.com\n"
            ),
            Some(true)
        );
        assert_eq!(
            catalogue_file_holds_credential(
                "host-credential-stores",
                "/etc/shadow",
                b"root:*:1::::::\n"
            ),
            None
        );
    }
}
