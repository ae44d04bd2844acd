//! Text helpers the house shares: the "did you mean" that config errors and
//! access-log format errors offer for a misspelt name.
//!
//! A leaf on the bottom floor (it uses nothing of egret's), so any wing may call it.

/// The closest candidate to `word` (case-insensitive Levenshtein distance), if it is close enough
/// to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lw = word.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = levenshtein(&lw, &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    let (d, c) = best?;
    let limit = (word.chars().count().max(c.chars().count()) / 3).max(1);
    (d <= limit && d > 0 || (d == 0 && word != c)).then_some(c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `v` in decimal ASCII digits, written at the end of `buf`.
pub fn decimal(buf: &mut [u8; 20], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            suggest("REGISTER_ONLY", ["REGISTRY_ONLY", "ALLOW_ANY"]),
            Some("REGISTRY_ONLY")
        );
        assert_eq!(
            suggest("MUTAL", ["DISABLE", "SIMPLE", "MUTUAL"]),
            Some("MUTUAL")
        );
        assert_eq!(
            suggest("portLevelSetting", ["tls", "portLevelSettings"]),
            Some("portLevelSettings")
        );
        assert_eq!(suggest("banana", ["DISABLE", "SIMPLE", "MUTUAL"]), None);
        // A different case is a typo worth pointing at.
        assert_eq!(suggest("simple", ["SIMPLE"]), Some("SIMPLE"));
    }
}
