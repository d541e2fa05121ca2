//! A prefix checker for constrained decoding of detection-style answers:
//!
//! ```text
//! answer := "None" | item ("&" item)*
//! item   := name "-" box        (named form; name from the allowed set when one is given)
//!         | box                 (name-less counting form; also allowed beside any name)
//! box    := "[" num "," num "," num "," num "]"     with x1 <= x2 and y1 <= y2
//! num    := "0." digit digit digit | "1.000"
//! ```
//!
//! [`check_prefix`] says whether a text can still be completed into a valid answer and whether it
//! already is one, so a decoder can reject tokens that would leave the grammar.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerGrammar {
    /// `Some(names)`: items are `name-[box]` with a name from the list; `None` with `nameless`
    /// false: any name (no `&`, `[`, `]`, newline) or none (a bare box: a grounding answer may
    /// come without a name, which the reference's parser accepts and labels "target").
    pub names: Option<Vec<String>>,
    /// Items are bare boxes (counting form).
    pub nameless: bool,
}

/// Ordered from worst to best (Invalid < Partial < Complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PrefixState {
    /// No continuation can make this valid.
    Invalid,
    /// Valid so far, not yet a complete answer.
    Partial,
    /// A complete answer (more items may still follow).
    Complete,
}

/// Largest value a partial number can still become ("0.1" -> 0.199), or None if not a prefix.
fn number_bounds(p: &str) -> Option<(f64, f64)> {
    let b = p.as_bytes();
    if b.is_empty() {
        return Some((0.0, 1.0));
    }
    match b[0] {
        b'1' => {
            let rest = &p[1..];
            if ".000".starts_with(rest) {
                Some((1.0, 1.0))
            } else {
                None
            }
        }
        b'0' => {
            if b.len() == 1 {
                return Some((0.0, 0.999));
            }
            if b[1] != b'.' || b.len() > 5 || !b[2..].iter().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let digits = &p[2..];
            let lo: f64 = format!("0.{digits:0<3}").parse().ok()?;
            let hi: f64 = format!("0.{digits:9<3}").parse().ok()?;
            Some((lo, hi))
        }
        _ => None,
    }
}

fn complete_number(p: &str) -> Option<f64> {
    let ok = (p.len() == 5 && p.starts_with("0.") && p[2..].bytes().all(|c| c.is_ascii_digit())) || p == "1.000";
    if ok {
        p.parse().ok()
    } else {
        None
    }
}

/// Checks a box prefix (text after `[`, possibly including the closing `]`).
fn check_box(s: &str) -> PrefixState {
    let (body, closed) = match s.find(']') {
        Some(i) if i == s.len() - 1 => (&s[..i], true),
        Some(_) => return PrefixState::Invalid,
        None => (s, false),
    };
    let parts: Vec<&str> = body.split(',').collect();
    if parts.len() > 4 {
        return PrefixState::Invalid;
    }
    let mut vals = [0.0f64; 4];
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        if !last || closed {
            match complete_number(part) {
                Some(v) => vals[i] = v,
                None => return PrefixState::Invalid,
            }
            if i >= 2 && vals[i] < vals[i - 2] {
                return PrefixState::Invalid;
            }
        } else {
            let Some((_, hi)) = number_bounds(part) else { return PrefixState::Invalid };
            if i >= 2 && hi < vals[i - 2] {
                return PrefixState::Invalid;
            }
        }
    }
    if closed {
        if parts.len() == 4 {
            PrefixState::Complete
        } else {
            PrefixState::Invalid
        }
    } else {
        PrefixState::Partial
    }
}

impl AnswerGrammar {
    fn check_item(&self, s: &str) -> PrefixState {
        if self.nameless {
            return match s.strip_prefix('[') {
                Some(rest) => check_box(rest),
                None if s.is_empty() => PrefixState::Partial,
                None => PrefixState::Invalid,
            };
        }
        if self.names.is_none() {
            if let Some(rest) = s.strip_prefix('[') {
                return check_box(rest);
            }
        }
        match s.find("-[") {
            Some(i) => {
                let name = &s[..i];
                if !self.name_ok(name, true) {
                    return PrefixState::Invalid;
                }
                check_box(&s[i + 2..])
            }
            None => {
                // still writing the name (maybe with its trailing '-')
                // "name-" needs a whole name before the '-'; otherwise s is part of a name
                let joined = s.strip_suffix('-').is_some_and(|n| self.name_ok(n, true));
                if s.contains(['[', ']']) || !(joined || self.name_ok(s, false)) {
                    PrefixState::Invalid
                } else {
                    PrefixState::Partial
                }
            }
        }
    }

    fn name_ok(&self, name: &str, complete: bool) -> bool {
        if name.contains(['&', '[', ']', '\n']) {
            return false;
        }
        match &self.names {
            Some(names) => names.iter().any(|n| if complete { n == name } else { n.starts_with(name) }),
            None => !complete || !name.trim().is_empty(),
        }
    }

    /// Whether `text` is a valid answer prefix, or already a complete answer: the better of the
    /// `None` answer and the items. A name from the allowed set may begin with "None"; a free
    /// name only as `None-[...]` (the parser reads `None.` or `None ` as the None answer, which
    /// must end there).
    pub fn check_prefix(&self, text: &str) -> PrefixState {
        let none = match "None".starts_with(text) {
            true if text == "None" => PrefixState::Complete,
            true => PrefixState::Partial,
            false => PrefixState::Invalid,
        };
        if self.names.is_none() && text.len() > 4 && text.starts_with("None") && !text[4..].starts_with('-') {
            return PrefixState::Invalid;
        }
        none.max(self.check_items(text))
    }

    /// Whether `text` followed by a character outside ASCII can still become a valid answer:
    /// what a decoder needs when a token ends inside a multi-byte character (byte fallback,
    /// byte-level BPE) and the text so far decodes with U+FFFD in its place. Names are the only
    /// place such a character can stand.
    pub fn allows_non_ascii_after(&self, text: &str) -> bool {
        if self.nameless || self.check_prefix(text) == PrefixState::Invalid {
            return false;
        }
        let item = text.rsplit('&').next().unwrap_or(text);
        if item.contains('[') {
            return false; // inside a box
        }
        match &self.names {
            Some(names) => {
                names.iter().any(|n| n.strip_prefix(item).and_then(|r| r.chars().next()).is_some_and(|c| !c.is_ascii()))
            }
            // any name the grammar would take with such a character next (not after "None": that
            // is the None answer unless a '-' follows)
            None => self.check_prefix(&format!("{text}\u{E9}")) != PrefixState::Invalid,
        }
    }

    fn check_items(&self, text: &str) -> PrefixState {
        let items: Vec<&str> = text.split('&').collect();
        let n = items.len();
        for (i, item) in items.iter().enumerate() {
            let st = self.check_item(item);
            if i < n - 1 && st != PrefixState::Complete {
                return PrefixState::Invalid;
            }
            if i == n - 1 {
                return st;
            }
        }
        PrefixState::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PrefixState::*;

    #[test]
    fn named_with_set() {
        let g = AnswerGrammar { names: Some(vec!["person".into(), "t-shirt".into()]), nameless: false };
        assert_eq!(g.check_prefix(""), Partial);
        assert_eq!(g.check_prefix("No"), Partial);
        assert_eq!(g.check_prefix("None"), Complete);
        assert_eq!(g.check_prefix("None&"), Invalid);
        assert_eq!(g.check_prefix("pers"), Partial);
        assert_eq!(g.check_prefix("t-"), Partial);
        assert_eq!(g.check_prefix("t-shirt-[0.1"), Partial);
        assert_eq!(g.check_prefix("dog"), Invalid);
        assert_eq!(g.check_prefix("pe-"), Invalid);
        assert_eq!(g.check_prefix("person-"), Partial);
        assert_eq!(g.check_prefix("person-[0.100,0.200,0.300,0.400]"), Complete);
        assert_eq!(g.check_prefix("person-[0.100,0.200,0.300,0.400]&"), Partial);
        assert_eq!(g.check_prefix("person-[0.500,0.200,0.4"), Invalid); // x2 < x1 whatever follows
        assert_eq!(g.check_prefix("person-[0.500,0.200,0.5"), Partial);
        assert_eq!(g.check_prefix("person-[0.500,0.200,1.0"), Partial);
        assert_eq!(g.check_prefix("person-[0.500,0.200,1.1"), Invalid);
        assert_eq!(g.check_prefix("person-[0.1,"), Invalid);
        assert_eq!(g.check_prefix("person-[0.100,0.200,0.300]"), Invalid);
        assert_eq!(g.check_prefix("person-[0.100,0.200,0.300,0.400]x"), Invalid);
    }

    #[test]
    fn nameless_and_free_names() {
        let g = AnswerGrammar { names: None, nameless: true };
        assert_eq!(g.check_prefix("[0.100,0.200,0.300,0.400]&[0."), Partial);
        assert_eq!(g.check_prefix("a-[0.1"), Invalid);
        let g = AnswerGrammar { names: None, nameless: false };
        assert_eq!(g.check_prefix("red car-[1.000,0.000,1.000,0.000]"), Complete);
        assert_eq!(g.check_prefix("-["), Invalid);
        // a grounding answer may be a bare box, alone or beside named ones
        assert_eq!(g.check_prefix("["), Partial);
        assert_eq!(g.check_prefix("[0.100,0.200,0.300,0.400]"), Complete);
        assert_eq!(g.check_prefix("[0.100,0.200,0.300,0.400]&a-[0.1"), Partial);
        assert_eq!(g.check_prefix("[0.100,0.200,0.050,0.400]"), Invalid);
        // a set of names still needs one of them
        let g = AnswerGrammar { names: Some(vec!["cat".into()]), nameless: false };
        assert_eq!(g.check_prefix("["), Invalid);
    }

    /// A name may begin with "None" (the parser reads `None-[..]` as an item named "None").
    #[test]
    fn names_beginning_with_none() {
        let g = AnswerGrammar { names: None, nameless: false };
        assert_eq!(g.check_prefix("None"), Complete);
        assert_eq!(g.check_prefix("None-[0.1"), Partial);
        assert_eq!(g.check_prefix("None-[0.100,0.200,0.300,0.400]"), Complete);
        assert_eq!(g.check_prefix("None&"), Invalid);
        // a free name goes on after "None" only as "None-": "None." is the None answer, which ends
        for t in ["None.", "None ", "Nonesuch"] {
            assert_eq!(g.check_prefix(t), Invalid, "{t}");
        }
        let g = AnswerGrammar { names: Some(vec!["None of these".into()]), nameless: false };
        assert_eq!(g.check_prefix("None o"), Partial);
        assert_eq!(g.check_prefix("None of these-[0.100,0.200,0.300,0.400]"), Complete);
        assert_eq!(g.check_prefix("Nonesuch"), Invalid);
        let g = AnswerGrammar { names: None, nameless: true };
        assert_eq!(g.check_prefix("None"), Complete);
        assert_eq!(g.check_prefix("None-"), Invalid);
    }

    /// Where a character outside ASCII may come next: inside a name, when one of the names
    /// continues with one there.
    #[test]
    fn non_ascii_only_inside_names() {
        let g = AnswerGrammar { names: Some(vec!["café".into(), "cat".into()]), nameless: false };
        assert!(g.allows_non_ascii_after("caf"));
        assert!(!g.allows_non_ascii_after("ca"));
        assert!(!g.allows_non_ascii_after("café-[0."));
        assert!(g.allows_non_ascii_after("cat-[0.100,0.200,0.300,0.400]&caf"));
        assert!(!g.allows_non_ascii_after("dog"));
        let g = AnswerGrammar { names: Some(vec!["été".into()]), nameless: false };
        assert!(g.allows_non_ascii_after(""));
        let free = AnswerGrammar { names: None, nameless: false };
        assert!(
            free.allows_non_ascii_after("t-")
                && free.allows_non_ascii_after("")
                && !free.allows_non_ascii_after("a-[0")
        );
        // it agrees with check_prefix after "None" (the None answer ends there)
        assert!(!free.allows_non_ascii_after("None") && free.allows_non_ascii_after("Non"));
        assert!(!AnswerGrammar { names: None, nameless: true }.allows_non_ascii_after(""));
    }
}
