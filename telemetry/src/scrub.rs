//! Scrubbing personal data out of payloads and paths before a record is
//! journaled or sent (on by default; the original's
//! `opt-in-no-privacy-filters` file turns it off in the collector).
//!
//! Each class is replaced by a fixed marker, so what was removed stays
//! visible and crash grouping keeps working:
//!
//! | class | example | becomes |
//! |---|---|---|
//! | home-directory user name | `/home/alice/src/x.c` | `/home/<user>/src/x.c` |
//! | the host name | `build-42.example.org` | `<hostname>` |
//! | e-mail address | `alice@example.org` | `<email>` |
//! | MAC address | `52:54:00:12:34:56` | `<mac>` |
//! | IPv4 address | `192.168.1.20` | `<ipv4>` |
//! | IPv6 address | `fe80::1ff:fe23:4567:890a` | `<ipv6>` |
//!
//! Ordinary backtrace lines (`#0 main() - [/usr/bin/x] - /src/x.c:10`),
//! hex addresses, versions like `6.18.44` and C++/Rust paths (`std::vec`)
//! are left alone.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;

/// All classes in one automaton, so a payload is scanned once: the
/// alternatives are tried left to right at each position (e-mail before
/// home directories, MAC before IPv6).
fn pattern() -> &'static Regex {
    static P: OnceLock<Regex> = OnceLock::new();
    P.get_or_init(|| {
        let src = concat!(
            r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})",
            r"|(?P<home>/(?:home|var/home|Users)/)[^/\s:'\x22]+",
            r"|(?P<mac>\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b)",
            r"|(?P<ipv4>\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\b)",
            // Eight full groups, or a compressed form with "::"; at least one
            // group must hold a digit (checked on the match, so C++ names
            // such as `cafe::babe` stay).
            r"|(?P<ipv6>(?i:\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){7}\b|(?:\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6})?::(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){0,6}\b)?))",
        );
        Regex::new(src).unwrap_or_else(|e| panic!("scrub pattern: {e}"))
    })
}

/// What to scrub besides the fixed classes.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    hostnames: Vec<String>,
}

impl Scrubber {
    /// A scrubber that also removes this machine's host name.
    pub fn for_this_host() -> Scrubber {
        Scrubber::with_hostnames(this_hostname().into_iter())
    }

    /// A scrubber that removes the given host names (and their first label,
    /// `build-42` of `build-42.example.org`). Names shorter than three
    /// characters and `localhost` are ignored: replacing them would damage
    /// ordinary text.
    pub fn with_hostnames(names: impl Iterator<Item = String>) -> Scrubber {
        let mut hostnames: Vec<String> = Vec::new();
        for n in names {
            let short = n.split('.').next().unwrap_or("").to_string();
            for h in [n, short] {
                if h.len() >= 3 && h != "localhost" && !hostnames.contains(&h) {
                    hostnames.push(h);
                }
            }
        }
        // Longest first, so the full name wins over its first label.
        hostnames.sort_by_key(|h| std::cmp::Reverse(h.len()));
        Scrubber { hostnames }
    }

    /// `text` with every personal datum replaced by its marker.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        for h in &self.hostnames {
            if out.contains(h.as_str()) {
                out = Cow::Owned(replace_word(&out, h, "<hostname>"));
            }
        }
        let replaced = pattern().replace_all(&out, |c: &regex::Captures<'_>| -> String {
            if c.name("email").is_some() {
                "<email>".into()
            } else if let Some(home) = c.name("home") {
                format!("{}<user>", home.as_str())
            } else if c.name("mac").is_some() {
                "<mac>".into()
            } else if c.name("ipv4").is_some() {
                "<ipv4>".into()
            } else {
                let m = &c[0];
                if m.len() > 2 && m.bytes().any(|b| b.is_ascii_digit()) {
                    "<ipv6>".into()
                } else {
                    m.to_string()
                }
            }
        });
        match replaced {
            Cow::Borrowed(_) => out,
            Cow::Owned(o) if o == *out => out,
            Cow::Owned(o) => Cow::Owned(o),
        }
    }
}

/// Replaces `word` where it is not part of a longer name (letters, digits,
/// `-`, `_` around it).
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + word.len()..].chars().next();
        out.push_str(&rest[..i]);
        if before.is_some_and(is_name) || after.is_some_and(is_name) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

fn this_hostname() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Scrubber {
        Scrubber::with_hostnames(["build-42.example.org".to_string()].into_iter())
    }

    #[test]
    fn corpus_each_class() {
        let cases = [
            ("open /home/alice/.config/x failed", "open /home/<user>/.config/x failed"),
            ("cwd=/var/home/bob", "cwd=/var/home/<user>"),
            ("host build-42.example.org down", "host <hostname> down"),
            ("on build-42: oops", "on <hostname>: oops"),
            ("mail alice.smith+x@example.co.uk now", "mail <email> now"),
            ("eth0 52:54:00:12:34:56 up", "eth0 <mac> up"),
            ("from 192.168.1.20:8080", "from <ipv4>:8080"),
            ("addr fe80::1ff:fe23:4567:890a%eth0", "addr <ipv6>%eth0"),
            ("addr 2001:db8:0:0:0:0:2:1 ok", "addr <ipv6> ok"),
            ("loopback ::1 ok", "loopback <ipv6> ok"),
        ];
        for (input, want) in cases {
            assert_eq!(s().scrub(input), want, "input {input:?}");
        }
    }

    #[test]
    fn ordinary_backtraces_are_untouched() {
        let bt = "Process: /usr/bin/segv\nPID: 1218\nSignal: 11\n\nBacktrace (TID 1218):\n\
#0 level3() - [/usr/bin/segv] - /src/segv.c:4\n\
#1 std::vector<int, std::allocator<int> >::push_back(int const&) - [/usr/lib/libfoo.so.1.2.3] - /usr/include/c++/12/bits/stl_vector.h:1287\n\
#2 core::ops::function::FnOnce::call_once - [/usr/bin/rusty] - /rustc/library/core/src/ops/function.rs:250\n\
#3 cafe::babe::dead() - [/opt/x] - 0x7ffd5a3c1b20\n\
#4 __libc_start_call_main() - [libc.so.6] - ../sysdeps/nptl/libc_start_call_main.h:58\n\
Kernel: 6.18.44-fc-v769 at 12:34:56\n";
        assert!(matches!(s().scrub(bt), Cow::Borrowed(_)), "changed: {}", s().scrub(bt));
    }

    #[test]
    fn short_hostnames_are_not_used() {
        let sc = Scrubber::with_hostnames(["a".to_string(), "localhost".to_string()].into_iter());
        assert_eq!(sc.scrub("a localhost banana"), "a localhost banana");
    }

    #[test]
    fn hostname_inside_longer_names_is_kept() {
        assert_eq!(s().scrub("libbuild-42x.so"), "libbuild-42x.so");
    }
}
