//! One way to show bytes that are not clean text: names from the configuration
//! (zone names may be any bytes) and anything a request makes us echo.
//!
//! The rule, the same in every format: printable UTF-8 stays as it is; a
//! backslash becomes `\\`; every other byte (invalid UTF-8, ASCII and C1
//! control characters, and the bytes of invisible formatting characters such
//! as U+202E RIGHT-TO-LEFT OVERRIDE) becomes `\xNN`. It is lossless: every
//! escape starts with a backslash, and a backslash is always escaped.

use std::fmt::Write;

/// Bytes of a request's input echoed at most in a reason.
pub const ECHO_MAX_BYTES: usize = 64;

/// Invisible formatting characters (Unicode Cf, Zl, Zp): they can reorder or
/// hide what a reader sees.
fn is_format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x08E2 | 0x180E
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "\\x{b:02x}");
    }
}

/// The escaped form of `bytes` (see the module's rule).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() || is_format_char(c) {
                let mut buf = [0u8; 4];
                push_hex(&mut out, c.encode_utf8(&mut buf).as_bytes());
            } else {
                out.push(c);
            }
        }
        push_hex(&mut out, chunk.invalid());
    }
    out
}

/// A request's input as a reason may show it: escaped, and at most
/// `ECHO_MAX_BYTES` of it (then `...`).
pub fn echo(bytes: &[u8]) -> String {
    if bytes.len() <= ECHO_MAX_BYTES {
        return escape(bytes);
    }
    let mut shown = escape(&bytes[..ECHO_MAX_BYTES]);
    shown.push_str("...");
    shown
}

/// The bytes an escaped form stands for; `None` when it is not one.
pub fn unescape(escaped: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        if escaped[i] != b'\\' {
            out.push(escaped[i]);
            i += 1;
            continue;
        }
        match escaped.get(i + 1)? {
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b'x' => {
                let hex = std::str::from_utf8(escaped.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Whether a zone named `raw` (its bytes) is the one asked for: by its bytes,
/// or by the escaped form the answers show.
pub fn name_matches(raw: &[u8], asked: &[u8]) -> bool {
    raw == asked || unescape(asked).is_some_and(|bytes| bytes == raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_stays() {
        assert_eq!(escape(b"sessions"), "sessions");
        assert_eq!(escape("zône_日本".as_bytes()), "zône_日本");
        assert_eq!(escape(b"a b-c.d"), "a b-c.d");
    }

    #[test]
    fn everything_else_is_escaped() {
        assert_eq!(escape(b"bin\xff\xfe"), "bin\\xff\\xfe");
        assert_eq!(escape(b"a\r\nX"), "a\\x0d\\x0aX");
        assert_eq!(escape(b"nul\0esc\x1b[31m"), "nul\\x00esc\\x1b[31m");
        assert_eq!(escape(b"del\x7f"), "del\\x7f");
        assert_eq!(escape("rtl\u{202E}gnp".as_bytes()), "rtl\\xe2\\x80\\xaegnp");
        assert_eq!(escape("c1\u{0085}".as_bytes()), "c1\\xc2\\x85");
        assert_eq!(escape("zw\u{200B}".as_bytes()), "zw\\xe2\\x80\\x8b");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
    }

    #[test]
    fn escaping_is_lossless() {
        let names: [&[u8]; 8] = [
            b"bin\xff\xfe",
            b"bin\\xff\\xfe",
            b"bin\\\xff",
            b"\\",
            b"",
            b"\0",
            "rtl\u{202E}".as_bytes(),
            b"plain",
        ];
        for a in names {
            assert_eq!(unescape(escape(a).as_bytes()).as_deref(), Some(a));
            for b in names {
                assert_eq!(a == b, escape(a) == escape(b), "{a:?} {b:?}");
            }
        }
        assert_eq!(unescape(b"bad\\q"), None);
        assert_eq!(unescape(b"bad\\x4"), None);
        assert_eq!(unescape(b"bad\\"), None);
    }

    #[test]
    fn echo_is_bounded() {
        let long = vec![b'a'; 1000];
        let shown = echo(&long);
        assert_eq!(shown.len(), ECHO_MAX_BYTES + 3);
        assert!(shown.ends_with("..."));
        // Cut inside a multi-byte character: the cut bytes are escaped.
        let mut s = vec![b'a'; ECHO_MAX_BYTES - 1];
        s.extend_from_slice("é".as_bytes());
        assert!(echo(&s).ends_with("\\xc3..."));
        assert_eq!(echo(b"\x00\n"), "\\x00\\x0a");
    }

    #[test]
    fn names_match_by_bytes_or_escaped_form() {
        assert!(name_matches(b"bin\xff\xfe", b"bin\xff\xfe"));
        assert!(name_matches(b"bin\xff\xfe", b"bin\\xff\\xfe"));
        assert!(!name_matches(
            b"bin\xff\xfe",
            b"bin\xef\xbf\xbd\xef\xbf\xbd"
        ));
        assert!(name_matches(b"sessions", b"sessions"));
        assert!(!name_matches(b"sessions", b"session"));
    }
}
