//! Human durations (`"1.5s"`, `"500ms"`, `"2m"`) and rates (`"20/10s"`) as written in the config.

use std::time::Duration;

/// Parses `"1.5s"`, `"500ms"`, `"2m"`, `"1h"`. Fractions are allowed; a bare number is rejected
/// so that nobody has to guess the unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{t}` has no unit; write e.g. \"1.5s\", \"500ms\" or \"2m\""))?;
    // `split` is where `find` found a character: a boundary.
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{t}` does not start with a number; write e.g. \"1.5s\""))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{t}` has an unknown unit `{other}`; use ms, s, m or h")),
    };
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("`{t}` is out of range"));
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

/// Parses `"20/10s"`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let (count, per) = text.split_once('/').ok_or_else(|| format!("`{text}` is not a rate; write it as \"20/10s\""))?;
    let count: u32 = count.trim().parse().map_err(|_| format!("`{text}`: `{count}` is not a whole number"))?;
    let per = parse_duration(per)?;
    if count == 0 || per.is_zero() {
        return Err(format!("`{text}` allows nothing; both sides must be above 0"));
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
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
        assert!(parse_duration("3 days").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn rates_parse_and_reject_zero() {
        assert_eq!(parse_rate("20/10s").unwrap(), Rate::TWITCH_DEFAULT_JOINS);
        assert_eq!(parse_rate("2000/10s").unwrap().count, 2000);
        assert!(parse_rate("0/10s").is_err());
        assert!(parse_rate("20").is_err());
    }
}
