//! Connections to an HTTP proxy a container is configured with (`HTTPS_PROXY`, `HTTP_PROXY`):
//! the proxy's address names nothing, what the connection asks it for does. The kernel copies
//! the first bytes of the connection's first payloads (as for an inspected endpoint); each one
//! that is a proxy request is read: `CONNECT host:port` names a tunnel's target (and when that
//! is no catalogue endpoint, the ClientHello sent through the tunnel may name one: a fronted
//! domain), an absolute-form `GET http://host/path` is judged like a request sent to the
//! endpoint itself. Records name the target and carry `network.proxy`.

use std::time::Instant;

use super::{INSPECTED_IDLE, Naming, Pipeline};
use crate::{
    events,
    requests::{self, Judged, ProxyRequest},
    sinks::forensic::HttpSection,
    tls_hello,
};

/// ClientHello bytes gathered at most inside a tunnel (two payloads, as for a direct one).
const HELLO_BYTES: usize = 2 * credwatch_common::REQUEST_BYTES;
/// Bytes of a request line sent in pieces gathered at most before it is read as it is.
const LINE_BYTES: usize = credwatch_common::REQUEST_BYTES;

pub struct Proxied {
    connect: events::Connect,
    pub deadline: Instant,
    /// A `CONNECT` to a target no catalogue entry names: the tunnel's ClientHello may.
    tunnel: Option<ProxyRequest>,
    hello: Vec<u8>,
    /// The start of a request whose line has not ended yet (a client writing in pieces).
    line: Vec<u8>,
    /// Something was sent (a connection that sends nothing is counted as unnamed when over).
    sent: bool,
    /// Counted as unnamed already (once per connection: a payload that could not be read as a
    /// proxy request, urgent data, a request line cut short).
    counted: bool,
}

impl Pipeline {
    pub(super) fn await_proxied(&mut self, c: &events::Connect) {
        // (Waited on as long as an answered inspected connection: a client that stays silent
        // a while before asking must not outlast it.)
        let waiting = Proxied {
            connect: c.clone(),
            deadline: Instant::now() + INSPECTED_IDLE,
            tunnel: None,
            hello: Vec::new(),
            line: Vec::new(),
            sent: false,
            counted: false,
        };
        if c.cookie == 0 {
            return; // its payloads cannot be told apart from others'
        }
        if let Err((refused, _)) = self.proxied.insert(c.cookie, c.cgroup_id, waiting) {
            self.count_refused(c, refused);
            self.count_unnamed(c);
        }
    }

    /// One payload sent to the proxy.
    pub(super) fn proxied_request(&mut self, r: &events::Request) {
        let Some(waiting) = self.proxied.get_mut(r.cookie) else {
            return;
        };
        waiting.deadline = Instant::now() + INSPECTED_IDLE;
        waiting.sent = true;
        let c = waiting.connect.clone();
        if let Some(tunnel) = waiting.tunnel.clone() {
            let room = HELLO_BYTES.saturating_sub(waiting.hello.len());
            waiting
                .hello
                .extend_from_slice(&r.data[..r.data.len().min(room)]);
            let named = match tls_hello::server_name(&waiting.hello) {
                tls_hello::Hello::NeedMore if !r.last && room > 0 => return,
                tls_hello::Hello::Named(name) => Some(name),
                _ => None,
            };
            self.proxied.remove(r.cookie);
            match named {
                Some(name) => {
                    if let Some(index) = self.endpoint_for(&name, tunnel.port) {
                        let naming = Naming {
                            sni: Some(name),
                            proxied: Some(tunnel),
                            request: None,
                        };
                        self.record_connect(&c, index, naming);
                    }
                }
                None => self.count_unnamed(&c),
            }
            return;
        }
        // The proxy reads a request line however it was cut into segments: so is it here (a
        // line starting with a method token, until its end, bounded).
        let mut data = std::mem::take(&mut waiting.line);
        data.extend_from_slice(&r.data);
        // (Blank lines before a request line are skipped by proxies too.)
        let blank = data
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        data.drain(..blank);
        let payload_len = (data.len() + r.payload_len as usize - r.data.len()) as u32;
        let unfinished = !data.contains(&b'\n')
            && data.first().is_some_and(u8::is_ascii_uppercase)
            && data.len() < LINE_BYTES
            && data.len() == payload_len as usize;
        if (unfinished || data.is_empty()) && !r.last && !r.unreadable {
            waiting.line = data;
            return;
        }
        let counted = std::mem::replace(&mut waiting.counted, true);
        if r.last {
            self.proxied.remove(r.cookie);
        }
        // Tunnel bytes after a CONNECT the proxy answered, a ClientHello sent straight to the
        // "proxy" (a name that was no proxy), or nothing a proxy reads as a request.
        let Some(target) = (!r.unreadable)
            .then(|| requests::proxy_target(&data))
            .flatten()
        else {
            if let tls_hello::Hello::Named(name) = tls_hello::server_name(&data)
                && let Some(index) = self.endpoint_for(&name, c.port)
            {
                self.proxied.remove(r.cookie);
                let naming = Naming {
                    sni: Some(name),
                    ..Naming::default()
                };
                return self.record_connect(&c, index, naming);
            }
            if !counted {
                self.count_unnamed(&c);
            }
            return;
        };
        // Read: only a payload that cannot be is counted.
        if let Some(waiting) = self.proxied.get_mut(r.cookie) {
            waiting.counted = counted;
        }
        let Some(index) = self.endpoint_for(&target.host, target.port) else {
            if target.tunnel
                && let Some(waiting) = self.proxied.get_mut(r.cookie)
            {
                waiting.tunnel = Some(target);
            }
            return;
        };
        if target.tunnel {
            // What goes through the tunnel to a catalogue endpoint is not read.
            self.proxied.remove(r.cookie);
            let naming = Naming {
                proxied: Some(target),
                ..Naming::default()
            };
            return self.record_connect(&c, index, naming);
        }
        // Absolute form: judged like the same request sent to the endpoint itself.
        let endpoint = &self.policies.catalog.endpoints[index];
        let service = endpoint.name.clone();
        let request = match endpoint.http_paths.as_ref() {
            None => None,
            Some(paths) => {
                let judged = requests::judge(&data, payload_len, paths);
                let (credential, request) = match judged {
                    Judged::Benign(_) => ("false", None),
                    Judged::Credential(line) => ("true", Some(("credential", Some(line)))),
                    Judged::Unreadable(line) => ("unreadable", Some(("unreadable", line))),
                };
                self.metrics
                    .endpoint_requests
                    .with_label_values(&[service.as_str(), credential])
                    .inc();
                let Some((why, line)) = request else {
                    return;
                };
                let http = line.map(|l| HttpSection {
                    method: l.method,
                    path: l.path,
                });
                Some((why, http))
            }
        };
        let naming = Naming {
            proxied: Some(target),
            request,
            ..Naming::default()
        };
        self.record_connect(&c, index, naming);
    }

    /// A proxied connection is over (closed, or idle): one still waiting for its tunnel's
    /// ClientHello stays unnamed.
    pub(super) fn finish_proxied(&mut self, cookie: u64) {
        if let Some(waiting) = self.proxied.remove(cookie)
            && (waiting.tunnel.is_some() || !waiting.sent)
            && !waiting.counted
        {
            self.count_unnamed(&waiting.connect);
        }
    }
}
