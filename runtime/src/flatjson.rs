//! A reader and writer of flat JSON objects (`{"key": value, …}` whose values are strings,
//! numbers, booleans or null): the exit file and the OCI runtime's JSON log lines are no
//! more than that. Hand-written so that `rootstock-monitor` (which includes this file) needs
//! no serde_json; the daemon reads the exit file with the same code, so writer and reader
//! cannot drift apart.

/// One value of a flat object. Numbers keep their text: the caller picks the integer type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Num(String),
    Bool(bool),
    Null,
    /// A nested object or array (skipped, not kept: no caller needs one).
    Nested,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one JSON object; `None` when the text is not one (trailing whitespace allowed).
pub fn parse_object(text: &str) -> Option<Vec<(String, Value)>> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    p.eat(b'{')?;
    let mut out = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            let value = p.value()?;
            out.push((key, value));
            p.ws();
            match p.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    (p.i == p.s.len()).then_some(out)
}

/// The value of `key` in a parsed object (the last one, as JSON parsers usually do).
pub fn get<'a>(object: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    object.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Appends `s` as a JSON string literal.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b't' => self.word("true", Value::Bool(true)),
            b'f' => self.word("false", Value::Bool(false)),
            b'n' => self.word("null", Value::Null),
            b'{' | b'[' => self.skip_nested().map(|()| Value::Nested),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                Some(Value::Num(text.to_owned()))
            }
            _ => None,
        }
    }

    fn word(&mut self, w: &str, v: Value) -> Option<Value> {
        let end = self.i + w.len();
        (self.s.get(self.i..end)? == w.as_bytes()).then(|| {
            self.i = end;
            v
        })
    }

    /// Skips a nested object or array, strings inside included.
    fn skip_nested(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let c = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let text = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
        self.i += 4;
        u32::from_str_radix(text, 16).ok()
    }

    /// `\uXXXX`, a surrogate pair as one character; a lone surrogate becomes U+FFFD.
    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.s.get(self.i..self.i + 2) == Some(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                return char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
            }
            self.i = save;
        }
        Some(char::from_u32(hi).unwrap_or('\u{FFFD}'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_runc_and_crun_log() {
        // runc (logrus) and crun format their JSON log lines differently.
        let runc = r#"{"level":"error","msg":"exec: \"nope\": executable file not found in $PATH","time":"2026-12-07T00:00:00Z"}"#;
        let o = parse_object(runc).unwrap();
        assert_eq!(get(&o, "level").and_then(Value::as_str), Some("error"));
        assert_eq!(
            get(&o, "msg").and_then(Value::as_str),
            Some("exec: \"nope\": executable file not found in $PATH")
        );
        let crun = "{\"msg\": \"executable file `nope` not found: No such file or directory\", \"level\": \"error\", \"time\": \"2026-12-07T00:00:00.000000Z\"}\n";
        let o = parse_object(crun).unwrap();
        assert_eq!(get(&o, "level").and_then(Value::as_str), Some("error"));
        let o = parse_object(
            r#"{"a":{"b":[1,"}"]},"u":"\u00e9\ud83d\ude00\ud800x","n":-1.5e3,"z":null}"#,
        )
        .unwrap();
        assert_eq!(get(&o, "a"), Some(&Value::Nested));
        assert_eq!(get(&o, "u").and_then(Value::as_str), Some("é😀\u{FFFD}x"));
        assert_eq!(get(&o, "n"), Some(&Value::Num("-1.5e3".into())));
        assert_eq!(get(&o, "z"), Some(&Value::Null));
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1]",
            "{\"a\":1} x",
            "{\"a\":tru}",
        ] {
            assert_eq!(parse_object(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn strings_round_trip() {
        let s = "a\"b\\c\nd\u{1}é";
        let mut text = String::from("{\"k\":");
        push_string(&mut text, s);
        text.push('}');
        let o = parse_object(&text).unwrap();
        assert_eq!(get(&o, "k").and_then(Value::as_str), Some(s));
    }
}
