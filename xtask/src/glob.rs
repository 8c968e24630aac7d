//! A small path glob matcher for the manifest's `keep` rules: `*` and `?` within one path segment, `**` for any
//! number of segments, `{a,b}` alternatives. Written here rather than pulled in because these four forms are
//! all the manifest needs and the matching rules are then visible in one place.

/// Whether `path` (with `/` separators) matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    expand_braces(pattern).iter().any(|p| {
        let pat: Vec<&str> = p.split('/').collect();
        match_segments(&pat, &segments)
    })
}

/// The literal directory prefix of a pattern (everything before the first segment holding a wildcard).
pub fn literal_prefix(pattern: &str) -> &str {
    let cut = pattern.find(['*', '?', '{']).unwrap_or(pattern.len());
    match pattern[..cut].rfind('/') {
        Some(slash) => &pattern[..=slash],
        None => "",
    }
}

/// `a{b,c}d{e,f}` -> `abde, abdf, acde, acdf`. Braces do not nest.
fn expand_braces(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else {
        return vec![pattern.to_owned()];
    };
    let Some(close) = pattern[open..].find('}').map(|i| open + i) else {
        return vec![pattern.to_owned()];
    };
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    pattern[open + 1..close]
        .split(',')
        .flat_map(|alt| expand_braces(&format!("{head}{alt}{tail}")))
        .collect()
}

fn match_segments(pat: &[&str], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        // `**` swallows zero or more whole segments.
        Some((&"**", rest)) => {
            match_segments(rest, path) || (!path.is_empty() && match_segments(pat, &path[1..]))
        }
        Some((first, rest)) => {
            !path.is_empty()
                && match_segment(first.as_bytes(), path[0].as_bytes())
                && match_segments(rest, &path[1..])
        }
    }
}

/// Classic wildcard matching within one segment, with backtracking to the last `*`.
fn match_segment(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_segment_wildcards() {
        assert!(matches(
            "package/data/*-ubyte",
            "package/data/train-images-idx3-ubyte"
        ));
        assert!(!matches(
            "package/data/*-ubyte",
            "package/data/sub/train-ubyte"
        ));
        assert!(!matches(
            "package/data/*-ubyte",
            "package/data/train-ubyte.gz"
        ));
        assert!(matches("a/?.wav", "a/0.wav"));
        assert!(!matches("a/?.wav", "a/10.wav"));
        assert!(matches("t/*_gut.txt", "t/hamlet_gut.txt"));
        assert!(!matches("t/*_gut.txt", "t/hamlet_gut_f.txt"));
    }

    #[test]
    fn double_star_and_braces() {
        let p = "usr/share/kits/**/*.{wav,flac}";
        assert!(matches(p, "usr/share/kits/a.wav"));
        assert!(matches(p, "usr/share/kits/Kit One/sub/b.flac"));
        assert!(!matches(p, "usr/share/kits/Kit/b.aiff"));
        assert!(!matches(p, "usr/share/other/b.wav"));
        assert!(matches("x/**", "x/a/b/c"));
        assert!(!matches("x/**", "y/a"));
    }

    #[test]
    fn prefixes() {
        assert_eq!(literal_prefix("package/data/*-ubyte"), "package/data/");
        assert_eq!(literal_prefix("usr/share/x/**/*.wav"), "usr/share/x/");
        assert_eq!(literal_prefix("a/b/file.txt"), "a/b/");
        assert_eq!(literal_prefix("*.txt"), "");
    }
}
