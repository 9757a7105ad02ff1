//! What the server reads out of a post's text: mentions (`@username`) and hashtags (`#etiket`),
//! and the Turkish case folding hashtags are matched by. Pure functions, unit-tested.
//!
//! Rules (docs/SOCIAL.md, "Text"):
//! - A mention is `@` at the start or after a character that is not a letter, digit, `_` or
//!   `@`, followed by a username (`[A-Za-z][A-Za-z0-9_]{2,31}`) that is not followed by
//!   another username character. It is folded to lowercase like usernames are.
//! - A hashtag is `#` at the start or after a character that is not a letter, digit, `_`, `#`
//!   or `&`, followed by letters, digits and `_` (any script), at least one of them a letter,
//!   at most [`MAX_TAG_CHARS`] characters. It is folded with Turkish rules ([`fold_tag`]).

use crate::accounts::Username;

/// The longest hashtag, in Unicode scalar values (after `#`).
pub const MAX_TAG_CHARS: usize = 100;

/// Turkish case folding: `İ → i`, `I → ı`, then the Unicode lowercase of everything else, so
/// `#İstanbul`, `#istanbul` and `#İSTANBUL` are one tag and `#ılık` is not `#ilik`. A
/// decomposed `I` + U+0307 (combining dot above) is an `İ`.
pub fn fold_tag(tag: &str) -> String {
    let mut out = String::with_capacity(tag.len());
    let mut chars = tag.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            'İ' => out.push('i'),
            'I' if chars.peek() == Some(&'\u{307}') => {
                chars.next();
                out.push('i');
            }
            'I' => out.push('ı'),
            '\u{307}' if out.ends_with('i') => {} // "i̇" (lowercased İ elsewhere) is i
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '\u{307}'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The distinct mentioned usernames, in order of first appearance.
pub fn mentions(text: &str) -> Vec<Username> {
    let mut found: Vec<Username> = Vec::new();
    let mut prev: Option<char> = None;
    for (at, c) in text.char_indices() {
        let starts =
            c == '@' && prev.is_none_or(|p| !(p.is_alphanumeric() || p == '_' || p == '@'));
        prev = Some(c);
        if !starts {
            continue;
        }
        let rest = &text[at + 1..];
        let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        // A longer run of name characters is no username, not a truncated one.
        if let Ok(name) = Username::parse(&rest[..end])
            && !found.contains(&name)
        {
            found.push(name);
        }
    }
    found
}

/// The distinct folded hashtags (without `#`), in order of first appearance.
pub fn hashtags(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut prev: Option<char> = None;
    for (at, c) in text.char_indices() {
        let starts = c == '#'
            && prev.is_none_or(|p| !(p.is_alphanumeric() || p == '_' || p == '#' || p == '&'));
        prev = Some(c);
        if !starts {
            continue;
        }
        let rest = &text[at + 1..];
        let end = rest.find(|c: char| !is_tag_char(c)).unwrap_or(rest.len());
        let tag = &rest[..end];
        let chars = tag.chars().filter(|&c| c != '\u{307}').count();
        if chars == 0 || chars > MAX_TAG_CHARS || !tag.chars().any(char::is_alphabetic) {
            continue;
        }
        let folded = fold_tag(tag);
        if !found.contains(&folded) {
            found.push(folded);
        }
    }
    found
}

/// Parses a hashtag as a client names it in a URL (`#` optional): `None` when it cannot be one.
pub fn parse_tag(text: &str) -> Option<String> {
    let tag = text.strip_prefix('#').unwrap_or(text);
    match hashtags(&format!("#{tag}")).as_slice() {
        [one] if one.chars().count() == fold_tag(tag).chars().count() => Some(one.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        mentions(text)
            .iter()
            .map(|u| u.as_str().to_owned())
            .collect()
    }

    #[test]
    fn turkish_dotted_and_dotless_i_fold_apart() {
        assert_eq!(fold_tag("İstanbul"), "istanbul");
        assert_eq!(fold_tag("İSTANBUL"), "istanbul");
        assert_eq!(fold_tag("istanbul"), "istanbul");
        assert_eq!(fold_tag("IĞDIR"), "ığdır");
        assert_eq!(fold_tag("ılık"), "ılık");
        assert_ne!(fold_tag("ILIK"), fold_tag("ilik"));
        assert_eq!(fold_tag("I\u{307}stanbul"), "istanbul");
        assert_eq!(fold_tag("i\u{307}stanbul"), "istanbul");
        assert_eq!(fold_tag("ÇĞÖŞÜ"), "çğöşü");
    }

    #[test]
    fn hashtags_are_found_folded_and_once() {
        assert_eq!(
            hashtags("#İstanbul'da #istanbul bir gün #Etiket_2 #etiket_2"),
            ["istanbul", "etiket_2"]
        );
        assert_eq!(hashtags("#ÇAĞRI ve #çağrı"), ["çağrı"]);
        assert_eq!(hashtags("a#b c&#39; #123 # #_ ##x"), Vec::<String>::new());
        assert_eq!(hashtags("(#rust) #rust2026."), ["rust", "rust2026"]);
        let long = format!("#{}", "a".repeat(MAX_TAG_CHARS + 1));
        assert!(hashtags(&long).is_empty());
        let longest = format!("#{}", "a".repeat(MAX_TAG_CHARS));
        assert_eq!(hashtags(&longest).len(), 1);
    }

    #[test]
    fn mentions_are_usernames_after_a_boundary() {
        assert_eq!(
            names("hi @Alice and @bob_2, @alice again"),
            ["alice", "bob_2"]
        );
        assert_eq!(names("mail me: x@example.com"), Vec::<String>::new());
        assert_eq!(names("@ab @1abc @@carol"), Vec::<String>::new());
        assert_eq!(names(&format!("@{}", "a".repeat(33))), Vec::<String>::new());
        assert_eq!(names("(@dave)"), ["dave"]);
        assert_eq!(names("@erin's"), ["erin"]);
    }

    #[test]
    fn tags_named_in_urls() {
        assert_eq!(parse_tag("İstanbul").as_deref(), Some("istanbul"));
        assert_eq!(parse_tag("#etiket").as_deref(), Some("etiket"));
        assert_eq!(parse_tag("two words"), None);
        assert_eq!(parse_tag("123"), None);
        assert_eq!(parse_tag(""), None);
    }
}
