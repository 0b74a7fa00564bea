//! The little DER and PEM that runnel writes itself: an RSA public key from its JWK numbers, and
//! the PEM armour around DER. Everything else (certificates) comes from `rcgen`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// DER `RSAPublicKey` (RFC 8017 A.1.1): `SEQUENCE { INTEGER n, INTEGER e }`, both unsigned
/// big-endian magnitudes as JWKs carry them.
pub(crate) fn rsa_public_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = unsigned_integer(n);
    body.extend(unsigned_integer(e));
    let mut out = vec![0x30];
    out.extend(length(body.len()));
    out.extend(body);
    out
}

fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let first = magnitude.iter().position(|b| *b != 0).unwrap_or(magnitude.len());
    let digits = &magnitude[first..];
    let mut content = Vec::with_capacity(digits.len() + 1);
    // A set high bit would read as negative; zero is one zero byte.
    if digits.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    let mut out = vec![0x02];
    out.extend(length(content.len()));
    out.extend(content);
    out
}

fn length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes = len.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
    let mut out = vec![0x80 | (bytes.len() - first) as u8];
    out.extend_from_slice(&bytes[first..]);
    out
}

/// PEM armour (RFC 7468): base64 in lines of 64 characters.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER inside the first PEM block labelled `label`, if there is one and it is valid base64.
pub(crate) fn from_pem(label: &str, text: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_positive_and_minimal() {
        assert_eq!(unsigned_integer(&[0x01, 0x00, 0x01]), vec![0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(unsigned_integer(&[0x00, 0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn long_lengths() {
        assert_eq!(length(0x7f), vec![0x7f]);
        assert_eq!(length(0x80), vec![0x81, 0x80]);
        assert_eq!(length(0x010a), vec![0x82, 0x01, 0x0a]);
    }

    #[test]
    fn pem_round_trip() {
        let der: Vec<u8> = (0..=255).collect();
        let text = pem("PUBLIC KEY", &der);
        assert!(text.lines().all(|l| l.len() <= 64 || l.starts_with("-----")));
        assert_eq!(from_pem("PUBLIC KEY", &text), Some(der));
        assert_eq!(from_pem("PRIVATE KEY", &text), None);
    }
}
