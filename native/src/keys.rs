//! Duplicate names in an event's top-level JSON object.
//!
//! JSON leaves a name given twice to the parser: most keep the last, some the
//! first, some refuse. An event whose `amount` is both 5 and 7 has no single
//! meaning, so costtrace rejects it (`invalid_event`) rather than pick one.
//! The input has already decoded as JSON: this scanner only walks it.

use rustc_hash::FxHashSet;

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the string starting at `s[i] == '"'` (just past its closing quote), and whether it has escapes.
fn string_end(s: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    i += 1;
    loop {
        match s.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

fn hex4(s: &[u8]) -> Option<u32> {
    u32::from_str_radix(std::str::from_utf8(s.get(..4)?).ok()?, 16).ok()
}

/// A JSON string's value (without its quotes, escapes resolved).
fn unescape(body: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'\\' {
            let next = body[i..]
                .iter()
                .position(|&b| b == b'\\')
                .map_or(body.len(), |p| i + p);
            out.push_str(std::str::from_utf8(&body[i..next]).ok()?);
            i = next;
            continue;
        }
        let c = match body.get(i + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = hex4(&body[i + 2..])?;
                i += 4;
                if (0xd800..0xdc00).contains(&high) && body.get(i + 2..i + 4) == Some(b"\\u") {
                    let low = hex4(&body[i + 4..])?;
                    i += 6;
                    char::from_u32(0x10000 + ((high - 0xd800) << 10) + (low.wrapping_sub(0xdc00) & 0x3ff))?
                } else {
                    char::from_u32(high).unwrap_or('\u{fffd}')
                }
            }
            _ => return None,
        };
        out.push(c);
        i += 2;
    }
    Some(out)
}

/// Just past the value starting at `s[i]`.
fn value_end(s: &[u8], i: usize) -> Option<usize> {
    match s.get(i)? {
        b'"' => Some(string_end(s, i)?.0),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match s.get(j)? {
                    b'"' => {
                        j = string_end(s, j)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while !matches!(
                s.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The first name the top-level object gives twice, or None (also for anything but an object).
pub fn duplicate_key(s: &[u8]) -> Option<String> {
    let mut i = skip_ws(s, 0);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut seen: FxHashSet<String> = FxHashSet::default();
    loop {
        i = skip_ws(s, i);
        if s.get(i)? != &b'"' {
            return None; // `}`: the end
        }
        let (end, escaped) = string_end(s, i)?;
        let body = &s[i + 1..end - 1];
        let key = if escaped {
            unescape(body)?
        } else {
            std::str::from_utf8(body).ok()?.to_owned()
        };
        if !seen.insert(key) {
            return if escaped {
                unescape(body)
            } else {
                Some(String::from_utf8_lossy(body).into_owned())
            };
        }
        i = skip_ws(s, end);
        if s.get(i)? != &b':' {
            return None;
        }
        i = value_end(s, skip_ws(s, i + 1))?;
        i = skip_ws(s, i);
        match s.get(i)? {
            b',' => i += 1,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_key;

    fn dup(s: &str) -> Option<String> {
        duplicate_key(s.as_bytes())
    }

    #[test]
    fn a_name_given_twice_is_found_whatever_lies_between() {
        assert_eq!(dup(r#"{"amount": 5, "amount": 7}"#).as_deref(), Some("amount"));
        let between = r#"{"a": {"amount": 1, "b": [1, "}", {"c": "\""}]}, "x": -1.5e3, "a": null}"#;
        assert_eq!(dup(between).as_deref(), Some("a"));
    }

    #[test]
    fn escaped_spellings_of_one_name_are_one_name() {
        assert_eq!(
            dup(r#"{"amount": 5, "\u0061mount": 7}"#).as_deref(),
            Some("amount")
        );
        assert_eq!(dup(r#"{"\ud83d\ude00": 1, "😀": 2}"#).as_deref(), Some("😀"));
    }

    #[test]
    fn distinct_names_and_nested_repeats_are_fine() {
        assert_eq!(dup(r#"{"amount": 5, "amounts": 7, "x": {"y": 1, "y": 2}}"#), None);
        assert_eq!(dup(r#" { } "#), None);
        assert_eq!(dup(r#"[{"a": 1, "a": 2}]"#), None);
        assert_eq!(dup(r#"{"a\"b": 1, "a\\b": 2}"#), None);
    }
}
