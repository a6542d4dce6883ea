//! What a request to a plain-HTTP credential endpoint asks for. The instance metadata service
//! answers the region and the instance id as readily as the node's credentials, and SDKs ask
//! for the former all the time: a connect alone says nothing. The kernel copies the first
//! bytes of each payload sent on such a connection (`RequestRecord`); this module reads the
//! request line with `httparse` and decides.
//!
//! Only what can be shown to be one whole request for a path outside the endpoint's
//! `httpPaths` is benign. A credential path, a request cut in the kernel, a body, a second
//! (pipelined) request in the same payload, or bytes that are no request at all are judged as
//! credential accesses: a client that wants to hide a credential request behind a benign one
//! gains nothing. Only the method and the path (without query string) are kept; headers and
//! bodies are never.

use globset::GlobSet;

/// The request line's parts that go into a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    /// Percent-decoded, `.`/`..`, repeated and trailing `/` resolved, query string and fragment
    /// dropped,
    /// escaped (`crate::escape`).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// One whole request for a path that hands out no credential: counted, not recorded.
    Benign(RequestLine),
    /// A request for one of the endpoint's credential paths.
    Credential(RequestLine),
    /// Not shown to be benign (cut, a body, pipelined, not HTTP): recorded, with the request
    /// line when one was read.
    Unreadable(Option<RequestLine>),
}

/// Headers parsed at most: more (or a longer request) is unreadable.
const MAX_HEADERS: usize = 32;

/// Judges one payload (`data`, the first bytes of `payload_len`) against `credential_paths`.
pub fn judge(data: &[u8], payload_len: u32, credential_paths: &GlobSet) -> Judged {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let status = request.parse(data);
    let line = match (request.method, request.path) {
        (Some(method), Some(path)) => Some(RequestLine {
            method: method.to_string(),
            path: normalize(path),
        }),
        _ => None,
    };
    let Some(line) = line else {
        return Judged::Unreadable(None);
    };
    if credential_paths.is_match(&line.path) {
        return Judged::Credential(line);
    }
    // A target that is neither origin-form (`/path`) nor plain `http://` absolute form, or one
    // with a fragment, may be served by a path other than the one read here (servers differ:
    // `HTTP://h/x`, `http:/x`, `x:/y`, a `#` kept in the path): not benign.
    let target = request.path.unwrap_or_default();
    if !(target.starts_with('/') || target.starts_with("http://")) || target.contains('#') {
        return Judged::Unreadable(Some(line));
    }
    let whole = matches!(status, Ok(httparse::Status::Complete(end))
        if end == data.len() && data.len() == payload_len as usize);
    let bodiless = request.headers.iter().all(|h| {
        let name = h.name.to_ascii_lowercase();
        (name != "content-length" || h.value.trim_ascii() == b"0") && name != "transfer-encoding"
    });
    if whole && bodiless {
        Judged::Benign(line)
    } else {
        Judged::Unreadable(Some(line))
    }
}

/// The path a server would serve: the target without query string or fragment,
/// percent-decoded, with `.`, `..` and empty segments resolved the way a file path is (so
/// `//latest/./meta-data/%69am/` cannot pass for something else). An absolute-form target
/// (`http://host/path`, sent to a proxy) keeps its path.
pub fn normalize(target: &str) -> String {
    let target = target.split(['?', '#']).next().unwrap_or_default();
    let target = target
        .strip_prefix("http://")
        .map(|rest| rest.find('/').map_or("/", |at| &rest[at..]))
        .unwrap_or(target);
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(target).collect();
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    // (a trailing `/` goes too: `iam/security-credentials/` lists what `iam/security-credentials`
    // does, and one pattern covers both)
    let mut path = b"/".to_vec();
    path.extend(segments.join(&b"/"[..]));
    // Decoded bytes are the workload's: escaped like every other string from it.
    crate::escape::escape_bytes(&path)
}

/// Where a request sent to an HTTP proxy goes: `CONNECT host:port` (HTTPS_PROXY: a tunnel,
/// usually TLS inside) or an absolute-form target `http://host[:port]/path` (HTTP_PROXY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    pub tunnel: bool,
    /// Lower-case, without brackets (IPv6) or a trailing dot; escaped when it goes into a
    /// record.
    pub host: String,
    pub port: u16,
}

/// The target of a proxy request, read from the request line only (`httparse`, bounded like
/// `judge`); None when the payload is no such request.
pub fn proxy_target(data: &[u8]) -> Option<ProxyRequest> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    // A partial request still has its request line.
    let _ = request.parse(data);
    let (method, target) = (request.method?, request.path?);
    let (tunnel, authority, default_port) = if method.eq_ignore_ascii_case("CONNECT") {
        (true, target, None)
    } else {
        let lower = target.get(..7)?.to_ascii_lowercase();
        if lower != "http://" {
            return None;
        }
        let rest = &target[7..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        (false, &rest[..end], Some(80))
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            (host, rest.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port?,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(ProxyRequest { tunnel, host, port })
}

#[cfg(test)]
mod tests {
    use globset::{GlobBuilder, GlobSetBuilder};

    use super::*;

    #[test]
    fn proxy_requests_name_their_target() {
        let target = |data: &str| proxy_target(data.as_bytes());
        assert_eq!(
            target(
                "CONNECT secretsmanager.us-east-1.amazonaws.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"
            ),
            Some(ProxyRequest {
                tunnel: true,
                host: "secretsmanager.us-east-1.amazonaws.com".into(),
                port: 443
            })
        );
        assert_eq!(
            target("GET HTTP://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n"),
            Some(ProxyRequest {
                tunnel: false,
                host: "169.254.169.254".into(),
                port: 80
            }),
            "partial, upper-case scheme"
        );
        assert_eq!(
            target("CONNECT [fd00:ec2::254]:80 HTTP/1.1\r\n\r\n").map(|t| t.host),
            Some("fd00:ec2::254".into())
        );
        assert_eq!(
            target("GET http://u:p@Vault.Example.:8200/v1 HTTP/1.1\r\n\r\n")
                .map(|t| (t.host, t.port)),
            Some(("vault.example".into(), 8200))
        );
        // Not a proxy request, or nothing to name.
        for data in [
            "GET /latest/meta-data/ HTTP/1.1\r\n\r\n",
            "CONNECT host-without-port HTTP/1.1\r\n\r\n",
            "CONNECT :443 HTTP/1.1\r\n\r\n",
            "\x16\x03\x01\x02\x00",
            "GET https://x/ HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(target(data), None, "{data:?}");
        }
    }

    fn aws() -> GlobSet {
        let mut set = GlobSetBuilder::new();
        for p in [
            "/latest/meta-data/iam/security-credentials",
            "/latest/meta-data/iam/security-credentials/**",
        ] {
            set.add(GlobBuilder::new(p).literal_separator(true).build().unwrap());
        }
        set.build().unwrap()
    }

    fn judge_all(request: &str) -> Judged {
        judge(request.as_bytes(), request.len() as u32, &aws())
    }

    fn line(method: &str, path: &str) -> RequestLine {
        RequestLine {
            method: method.into(),
            path: path.into(),
        }
    }

    #[test]
    fn credential_paths_are_credentials_and_others_are_not() {
        assert_eq!(
            judge_all(
                "GET /latest/meta-data/iam/security-credentials/web HTTP/1.1\r\nHost: x\r\n\r\n"
            ),
            Judged::Credential(line(
                "GET",
                "/latest/meta-data/iam/security-credentials/web"
            ))
        );
        assert_eq!(
            judge_all("GET /latest/meta-data/placement/region HTTP/1.1\r\nHost: x\r\n\r\n"),
            Judged::Benign(line("GET", "/latest/meta-data/placement/region"))
        );
        assert_eq!(
            judge_all("GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\n\r\n"),
            Judged::Credential(line("GET", "/latest/meta-data/iam/security-credentials"))
        );
        // IMDSv2's session token is not a credential by itself.
        assert_eq!(
            judge_all("PUT /latest/api/token HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Judged::Benign(line("PUT", "/latest/api/token"))
        );
    }

    #[test]
    fn disguised_paths_are_resolved_first() {
        for disguised in [
            "//latest/meta-data/iam/security-credentials/web",
            "/latest/./meta-data/iam/security-credentials/web",
            "/latest/meta-data/placement/../iam/security-credentials/web",
            "/latest/meta-data/%69am/security-credentials/web",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/web",
        ] {
            let request = format!("GET {disguised} HTTP/1.1\r\n\r\n");
            assert!(
                matches!(judge_all(&request), Judged::Credential(_)),
                "{disguised}"
            );
        }
    }

    #[test]
    fn query_strings_are_never_kept() {
        let request =
            "GET /latest/dynamic/instance-identity/document?token=s3cr3t HTTP/1.1\r\n\r\n";
        let Judged::Benign(l) = judge_all(request) else {
            panic!("{request}")
        };
        assert_eq!(l.path, "/latest/dynamic/instance-identity/document");
    }

    #[test]
    fn what_cannot_be_shown_benign_is_unreadable() {
        // A benign request with a credential request pipelined behind it.
        let pipelined = "GET /latest/meta-data/ HTTP/1.1\r\n\r\nGET /latest/meta-data/iam/security-credentials/web HTTP/1.1\r\n\r\n";
        assert_eq!(
            judge_all(pipelined),
            Judged::Unreadable(Some(line("GET", "/latest/meta-data")))
        );
        // A body (which a second request could hide in, from the parser's point of view).
        assert!(matches!(
            judge_all("POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            Judged::Unreadable(Some(_))
        ));
        assert!(matches!(
            judge_all("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Judged::Unreadable(Some(_))
        ));
        // Cut in the kernel: the rest was not seen.
        let request = "GET /latest/meta-data/ HTTP/1.1\r\n\r\n";
        assert!(matches!(
            judge(request.as_bytes(), 5000, &aws()),
            Judged::Unreadable(Some(_))
        ));
        // Not HTTP at all, and a request line longer than what the kernel copies.
        assert_eq!(
            judge(&[0x16, 3, 1, 0, 0xff], 5, &aws()),
            Judged::Unreadable(None)
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(8192));
        assert_eq!(
            judge(&long.as_bytes()[..1024], long.len() as u32, &aws()),
            Judged::Unreadable(None)
        );
        assert_eq!(judge(b"", 0, &aws()), Judged::Unreadable(None));
        // Targets a server may resolve differently.
        for target in [
            "HTTP://h/latest/meta-data/x",
            "https://h/x",
            "http:/x",
            "x:/y",
            "/latest/meta-data/x#frag",
        ] {
            let request = format!("GET {target} HTTP/1.1\r\n\r\n");
            assert!(
                matches!(judge_all(&request), Judged::Unreadable(Some(_))),
                "{target}"
            );
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/a//b/"), "/a/b");
        assert_eq!(normalize("/../../etc"), "/etc");
        assert_eq!(normalize("/a%2Fb"), "/a/b");
        assert_eq!(normalize("http://h"), "/");
    }
}
