//! Topic tests the detectors need: filter overlap (does a subscription reach a honey topic?)
//! and namespace ownership (whose namespace is this topic in?).

/// Whether some topic name matches both filters (either may also be a plain topic name).
/// Follows MQTT-4.7.2-1: a filter starting with a wildcard does not reach `$` topics.
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    if a.starts_with('$') != b.starts_with('$') {
        let (dollar, other) = if a.starts_with('$') { (a, b) } else { (b, a) };
        // Only a literal first level can reach a `$` topic.
        let first = other.split('/').next().unwrap_or("");
        if first == "#" || first == "+" {
            return false;
        }
        let _ = dollar;
    }
    let mut la = a.split('/');
    let mut lb = b.split('/');
    loop {
        match (la.next(), lb.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(x), Some(y)) => {
                if x != "+" && y != "+" && x != y {
                    return false;
                }
            }
            // `a/#` matches `a`: one side ended, the other continues with `#` only.
            (None, Some(rest)) | (Some(rest), None) => {
                return rest == "#" && la.next().is_none() && lb.next().is_none();
            }
        }
    }
}

/// Whether every topic `inner` (a name or a filter) can match is matched by `outer`: the
/// peer aimed at what `outer` names, rather than at something broad that merely overlaps it.
/// Follows MQTT-4.7.2-1 like [`overlaps`].
pub(crate) fn within(inner: &str, outer: &str) -> bool {
    if inner.starts_with('$') != outer.starts_with('$') {
        return false;
    }
    let mut li = inner.split('/');
    let mut lo = outer.split('/');
    loop {
        match (li.next(), lo.next()) {
            (_, Some("#")) => return true,
            (None, None) => return true,
            // `#` in the inner filter reaches deeper than anything but `#` covers.
            (Some("#"), _) => return false,
            (Some(_), Some("+")) => {}
            (Some(x), Some(y)) => {
                if x == "+" || x != y {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Whose namespace `topic` (a name or a filter) touches, given the literal levels before the
/// `{device}` level. `None`: not in any device namespace, or in `own`'s. `Some(None)`: a
/// wildcard across namespaces. `Some(Some(level))`: another device's.
pub(crate) fn foreign_namespace<'t>(
    prefix: &[String],
    own: &str,
    topic: &'t str,
) -> Option<Option<&'t str>> {
    let mut levels = topic.split('/');
    for p in prefix {
        match levels.next() {
            Some("#") => return Some(None),
            Some("+") => {}
            Some(l) if l == p => {}
            _ => return None,
        }
    }
    match levels.next() {
        Some("#") | Some("+") => Some(None),
        Some(l) if l == own => None,
        Some(l) => Some(Some(l)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap() {
        assert!(overlaps("#", "_moat/honey/#"));
        assert!(overlaps("_moat/+/x", "_moat/honey/#"));
        assert!(overlaps("_moat/honey", "_moat/honey/#"));
        assert!(!overlaps("devices/a/#", "_moat/honey/#"));
        assert!(!overlaps("#", "$SYS/honey"));
        assert!(overlaps("$SYS/#", "$SYS/honey"));
        assert!(within("_moat/honey/x", "_moat/honey/#"));
        assert!(within("_moat/honey/+/y", "_moat/honey/#"));
        assert!(within("_moat/honey", "_moat/honey/#"));
        assert!(within("a/b", "a/+"));
        assert!(!within("#", "_moat/honey/#"));
        assert!(!within("_moat/+/x", "_moat/honey/#"));
        assert!(!within("a/+", "a/b"));
        assert!(!within("a/#", "a/+"));
        assert!(!within("$SYS/x", "#"));
        assert!(!overlaps("a/b", "a/b/c"));
        assert!(overlaps("a/+", "a/b"));
    }

    #[test]
    fn namespaces() {
        let prefix = vec!["devices".to_owned()];
        assert_eq!(foreign_namespace(&prefix, "a", "devices/a/t"), None);
        assert_eq!(
            foreign_namespace(&prefix, "a", "devices/b/t"),
            Some(Some("b"))
        );
        assert_eq!(foreign_namespace(&prefix, "a", "devices/+/t"), Some(None));
        assert_eq!(foreign_namespace(&prefix, "a", "#"), Some(None));
        assert_eq!(foreign_namespace(&prefix, "a", "other/b"), None);
    }
}
