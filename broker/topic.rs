//! Topic names and filters: validation, matching, and the `$share` form.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("a topic name may not contain '+' or '#'")]
    WildcardInName,
    #[error("'#' must be the last level and stand alone")]
    BadMultiLevel,
    #[error("'+' must occupy a whole level")]
    BadSingleLevel,
    #[error("a shared subscription needs $share/GROUP/FILTER with a non-empty group")]
    BadShare,
}

/// Check a topic name used in a PUBLISH [MQTT-4.7.3-1], [MQTT-4.7.1-1].
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Check a topic filter used in a SUBSCRIBE or UNSUBSCRIBE [MQTT-4.7.1-2], [MQTT-4.7.1-3].
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

/// A filter split into its share group (for `$share/GROUP/FILTER`) and the filter proper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitFilter<'a> {
    pub group: Option<&'a str>,
    pub filter: &'a str,
}

/// Split `$share/GROUP/FILTER` and validate both parts.
pub fn split_share(filter: &str) -> Result<SplitFilter<'_>, TopicError> {
    if let Some(rest) = filter.strip_prefix("$share/") {
        let (group, inner) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::BadShare);
        }
        validate_filter(inner)?;
        Ok(SplitFilter {
            group: Some(group),
            filter: inner,
        })
    } else {
        validate_filter(filter)?;
        Ok(SplitFilter {
            group: None,
            filter,
        })
    }
}

/// Does `filter` match the topic `name`? Top-level wildcards never match `$` topics [MQTT-4.7.2-1].
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does the ACL `pattern` cover every topic the subscription `filter` could match?
/// A `+` in the filter needs `+` or `#` in the pattern, a `#` in the filter needs `#`.
pub fn covers(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(pl), Some(fl)) if pl == fl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_the_spec_says() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "a/b/c", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (filter, name, expect) in cases {
            assert_eq!(matches(filter, name), expect, "{filter} vs {name}");
        }
    }

    #[test]
    fn bad_filters_and_names_are_refused() {
        assert!(validate_filter("sport/tennis#").is_err());
        assert!(validate_filter("sport/tennis/#/ranking").is_err());
        assert!(validate_filter("sport+").is_err());
        assert!(validate_filter("").is_err());
        assert!(validate_filter("+/tennis/#").is_ok());
        assert!(validate_name("a/+").is_err());
        assert!(validate_name("a/#").is_err());
        assert!(validate_name("a/b").is_ok());
        assert!(split_share("$share//a").is_err());
        assert!(split_share("$share/g").is_err());
        assert_eq!(
            split_share("$share/g/a/+").unwrap(),
            SplitFilter {
                group: Some("g"),
                filter: "a/+"
            }
        );
    }

    #[test]
    fn acl_patterns_cover_filters() {
        assert!(covers("#", "a/+/c"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(covers("a/#", "a/#"));
    }
}
