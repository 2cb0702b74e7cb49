use std::str::FromStr;

use crate::Error;

/// Parses a Go `time.ParseDuration` string (the format of `metav1.Duration`),
/// naming `field` in the error. The schema's pattern already refuses malformed
/// values; this guards objects written before the schema existed.
pub fn parse_duration(field: &'static str, value: &str) -> Result<std::time::Duration, Error> {
    if value.is_empty() {
        return Err(Error::InvalidDuration {
            field,
            value: String::new(),
            reason: "empty".into(),
        });
    }
    let parsed = kube::core::Duration::from_str(value).map_err(|err| Error::InvalidDuration {
        field,
        value: value.to_owned(),
        reason: err.to_string(),
    })?;
    if parsed.is_negative() {
        return Err(Error::NegativeDuration {
            field,
            value: value.to_owned(),
        });
    }
    Ok(parsed.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_go_durations() {
        assert_eq!(
            parse_duration("f", "10s").ok(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_duration("f", "1m30s").ok(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("f", "1.5h").ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_duration("f", "250ms").ok(),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn rejects_garbage_and_negatives_naming_the_field() {
        let err = parse_duration("spec.interval", "ten seconds")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("spec.interval:")));
        let err = parse_duration("spec.interval", "-5s")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("negative")));
        assert!(parse_duration("f", "10").is_err());
        assert!(parse_duration("f", "").is_err());
    }
}
