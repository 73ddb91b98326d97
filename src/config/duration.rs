//! Human durations (`"1.5s"`, `"500ms"`, `"2m"`) and rates (`"20/10s"`) as written in the config.

use std::time::Duration;

/// Why a duration does not parse; each message quotes the (trimmed) text and says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` has no unit; write e.g. \"1.5s\", \"500ms\" or \"2m\"")]
    NoUnit(String),
    #[error("`{0}` does not start with a number; write e.g. \"1.5s\"")]
    NoNumber(String),
    #[error("`{text}` has an unknown unit `{unit}`; use ms, s, m or h")]
    UnknownUnit { text: String, unit: String },
    /// Negative, not finite, or over a year.
    #[error("`{0}` is out of range")]
    OutOfRange(String),
}

/// Parses `"1.5s"`, `"500ms"`, `"2m"`, `"1h"`. Fractions are allowed; a bare number is rejected
/// so that nobody has to guess the unit.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split =
        t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| DurationError::NoUnit(t.to_string()))?;
    // `split` is where `find` found a character: a boundary.
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| DurationError::NoNumber(t.to_string()))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(DurationError::UnknownUnit { text: t.to_string(), unit: other.to_string() }),
    };
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(DurationError::OutOfRange(t.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way the config accepts it back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) && ms >= 60_000 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// `count` events per `per`: Twitch's JOIN allowance is written `"20/10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many events the window allows.
    pub count: u32,
    /// The sliding window.
    pub per: Duration,
}

impl Rate {
    /// Twitch's limit for a normal (not verified) account.
    pub const TWITCH_DEFAULT_JOINS: Rate = Rate { count: 20, per: Duration::from_secs(10) };
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, format_duration(self.per))
    }
}

/// Why a rate does not parse; each message quotes the text and says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("`{0}` is not a rate; write it as \"20/10s\"")]
    NoSlash(String),
    #[error("`{text}`: `{count}` is not a whole number")]
    Count { text: String, count: String },
    /// The part after `/`; its message quotes that part alone.
    #[error(transparent)]
    Window(#[from] DurationError),
    #[error("`{0}` allows nothing; both sides must be above 0")]
    Zero(String),
}

/// Parses `"20/10s"`.
pub fn parse_rate(text: &str) -> Result<Rate, RateError> {
    let (count, per) = text.split_once('/').ok_or_else(|| RateError::NoSlash(text.to_string()))?;
    let count: u32 =
        count.trim().parse().map_err(|_| RateError::Count { text: text.to_string(), count: count.to_string() })?;
    let per = parse_duration(per)?;
    if count == 0 || per.is_zero() {
        return Err(RateError::Zero(text.to_string()));
    }
    Ok(Rate { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_fractions_and_units() {
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn durations_without_a_known_unit_are_rejected_with_a_hint() {
        assert!(parse_duration("15").unwrap_err().to_string().contains("no unit"));
        assert!(parse_duration("3 days").unwrap_err().to_string().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn each_duration_and_rate_problem_is_its_own_variant_in_the_same_words_as_before() {
        let cases: [(Result<Rate, RateError>, RateError, &str); 6] = [
            (parse_rate("20"), RateError::NoSlash("20".into()), "`20` is not a rate; write it as \"20/10s\""),
            (
                parse_rate("x/10s"),
                RateError::Count { text: "x/10s".into(), count: "x".into() },
                "`x/10s`: `x` is not a whole number",
            ),
            (
                parse_rate("20/10"),
                RateError::Window(DurationError::NoUnit("10".into())),
                "`10` has no unit; write e.g. \"1.5s\", \"500ms\" or \"2m\"",
            ),
            (
                parse_rate("20/.s"),
                RateError::Window(DurationError::NoNumber(".s".into())),
                "`.s` does not start with a number; write e.g. \"1.5s\"",
            ),
            (
                parse_rate("20/3 days"),
                RateError::Window(DurationError::UnknownUnit { text: "3 days".into(), unit: "days".into() }),
                "`3 days` has an unknown unit `days`; use ms, s, m or h",
            ),
            (
                parse_rate("0/10s"),
                RateError::Zero("0/10s".into()),
                "`0/10s` allows nothing; both sides must be above 0",
            ),
        ];
        for (got, want, text) in cases {
            assert_eq!(got, Err(want.clone()));
            assert_eq!(want.to_string(), text);
        }
        assert_eq!(parse_duration("9999h"), Err(DurationError::OutOfRange("9999h".into())));
        assert_eq!(DurationError::OutOfRange("9999h".into()).to_string(), "`9999h` is out of range");
    }

    #[test]
    fn rates_parse_and_reject_zero() {
        assert_eq!(parse_rate("20/10s").unwrap(), Rate::TWITCH_DEFAULT_JOINS);
        assert_eq!(parse_rate("2000/10s").unwrap().count, 2000);
        assert!(parse_rate("0/10s").is_err());
        assert!(parse_rate("20").is_err());
    }
}
