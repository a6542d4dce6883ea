//! The server name (SNI) of a TLS ClientHello, read with `tls-parser` from the first bytes a
//! connection sent (one or two payloads: a post-quantum key share makes a ClientHello ~1.8 KB).
//! It names a connection to a credential endpoint whose address nothing else named: an
//! `/etc/hosts` entry, a hard-coded address, a lookup the agent did not see.

use tls_parser::{
    Err, SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType,
    parse_tls_client_hello_extensions, parse_tls_message_handshake, parse_tls_raw_record,
    parse_tls_record_header,
};

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The host name the client asked for (lower case, checked to be a DNS name).
    Named(String),
    /// Not a ClientHello, one without a server name, or one whose name is no DNS name.
    Unnamed,
    /// A ClientHello cut short: the next payload may complete it.
    NeedMore,
}

pub fn server_name(bytes: &[u8]) -> Hello {
    // The record header first: a payload that is no TLS handshake is unnamed at once, not
    // "incomplete" for the length its first bytes happen to spell.
    match parse_tls_record_header(bytes) {
        Ok((_, header))
            if header.record_type == TlsRecordType::Handshake && header.version.0 >> 8 == 3 => {}
        Ok(_) => return Hello::Unnamed,
        Err(Err::Incomplete(_)) => return Hello::NeedMore,
        Err(_) => return Hello::Unnamed,
    }
    let record = match parse_tls_raw_record(bytes) {
        Ok((_, record)) => record,
        Err(Err::Incomplete(_)) => return Hello::NeedMore,
        Err(_) => return Hello::Unnamed,
    };
    if record.hdr.record_type != TlsRecordType::Handshake {
        return Hello::Unnamed;
    }
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(record.data)
    else {
        // (a ClientHello spread over several TLS records is not read)
        return Hello::Unnamed;
    };
    let Some(Ok((_, extensions))) = hello.ext.map(parse_tls_client_hello_extensions) else {
        return Hello::Unnamed;
    };
    extensions
        .iter()
        .find_map(|e| match e {
            TlsExtension::SNI(names) => names
                .iter()
                .find(|(kind, _)| *kind == SNIType::HostName)
                .and_then(|(_, name)| dns_name(name)),
            _ => None,
        })
        .map_or(Hello::Unnamed, Hello::Named)
}

/// A server name as a DNS name: letters, digits, `-` and `.`, at most 253 bytes. Anything else
/// is the workload's invention and names nothing.
fn dns_name(bytes: &[u8]) -> Option<String> {
    let valid = !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.');
    valid.then(|| String::from_utf8_lossy(bytes).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello record with an SNI extension for `name`, then `padding`
    /// bytes of a padding extension (to make it large).
    pub fn client_hello(name: &[u8], padding: usize) -> Vec<u8> {
        let mut sni = Vec::new();
        sni.extend((name.len() as u16 + 3).to_be_bytes()); // server name list length
        sni.push(0); // host_name
        sni.extend((name.len() as u16).to_be_bytes());
        sni.extend(name);
        let mut ext = Vec::new();
        ext.extend(0u16.to_be_bytes()); // server_name
        ext.extend((sni.len() as u16).to_be_bytes());
        ext.extend(&sni);
        ext.extend(21u16.to_be_bytes()); // padding
        ext.extend((padding as u16).to_be_bytes());
        ext.extend(vec![0u8; padding]);
        let mut body = Vec::new();
        body.extend([3, 3]); // TLS 1.2
        body.extend([7u8; 32]); // random
        body.push(0); // session id
        body.extend(2u16.to_be_bytes());
        body.extend([0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // one compression method: null
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(&ext);
        let mut handshake = vec![1]; // client_hello
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(&body);
        let mut record = vec![22, 3, 1]; // handshake, TLS 1.0 record version
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(&handshake);
        record
    }

    #[test]
    fn the_server_name_is_read() {
        let hello = client_hello(b"SecretsManager.us-east-1.amazonaws.com", 0);
        assert_eq!(
            server_name(&hello),
            Hello::Named("secretsmanager.us-east-1.amazonaws.com".into())
        );
    }

    #[test]
    fn a_hello_in_two_parts_needs_both() {
        let hello = client_hello(b"vault.example.com", 1500);
        assert_eq!(server_name(&hello[..1400]), Hello::NeedMore);
        assert_eq!(
            server_name(&hello),
            Hello::Named("vault.example.com".into())
        );
    }

    #[test]
    fn hostile_hellos_name_nothing() {
        assert_eq!(server_name(b""), Hello::NeedMore);
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), Hello::Unnamed);
        assert_eq!(server_name(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0]), Hello::Unnamed);
        let mut hello = client_hello(b"a.example", 0);
        // The handshake claims more than the record holds.
        hello[6..9].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert_eq!(server_name(&hello), Hello::Unnamed);
        assert_eq!(
            server_name(&client_hello(b"evil\n\x1b[31m", 0)),
            Hello::Unnamed
        );
        for cut in 0..60 {
            let hello = client_hello(b"x.example", 0);
            let _ = server_name(&hello[..cut]); // never panics
        }
    }
}
