//! Twitch login names (channels and bot usernames) and the IRC server address.

use std::fmt;

/// Normalises a channel or user name the way Twitch does (`#`, case and spaces dropped) and
/// checks it against Twitch's login rules: 1–25 characters of `a-z`, `0-9` and `_`.
/// (New accounts need 4+, but older, shorter logins exist and are valid channels.)
pub fn normalize_login(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    let name = name.strip_prefix('#').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!("`{raw}` is empty"));
    }
    if name.len() > 25 {
        return Err(format!("`{raw}` is longer than Twitch's 25-character limit"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return Err(format!("`{raw}` contains `{bad}`; Twitch logins use only letters, digits and `_`"));
    }
    Ok(name)
}

/// Where the IRC connection goes: `ircs://host:port` (TLS) or `irc://host:port` (plain TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// Whether to speak TLS.
    pub tls: bool,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerAddr {
    /// Twitch's own TLS endpoint.
    pub fn twitch() -> Self {
        ServerAddr { tls: true, host: "irc.chat.twitch.tv".into(), port: 6697 }
    }

    /// Parses `ircs://host[:port]` or `irc://host[:port]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "write it as ircs://irc.chat.twitch.tv:6697 (TLS) or irc://127.0.0.1:6667 (plain)";
        let (tls, rest) = if let Some(r) = text.strip_prefix("ircs://") {
            (true, r)
        } else if let Some(r) = text.strip_prefix("irc://") {
            (false, r)
        } else {
            return Err(format!("`{text}` has no ircs:// or irc:// scheme; {hint}"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| format!("`{text}` has a bad port `{p}`; {hint}"))?;
                (h, port)
            }
            _ => (rest, if tls { 6697 } else { 6667 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("`{text}` has no host; {hint}"));
        }
        Ok(ServerAddr { tls, host: host.to_string(), port })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "ircs" } else { "irc" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_normalised() {
        assert_eq!(normalize_login(" #BLAST ").unwrap(), "blast");
        assert_eq!(normalize_login("esl_csgo").unwrap(), "esl_csgo");
    }

    #[test]
    fn channel_names_breaking_twitch_rules_are_rejected_naming_the_entry() {
        let e = normalize_login("bad-name").unwrap_err();
        assert!(e.contains("bad-name") && e.contains('-'), "{e}");
        assert!(normalize_login("#").is_err());
        assert!(normalize_login(&"a".repeat(26)).unwrap_err().contains("25"));
        assert!(normalize_login("ünicode").is_err());
    }

    #[test]
    fn server_addresses_parse_with_default_ports() {
        assert_eq!(ServerAddr::parse("ircs://irc.chat.twitch.tv:6697").unwrap(), ServerAddr::twitch());
        let plain = ServerAddr::parse("irc://127.0.0.1:7000").unwrap();
        assert_eq!((plain.tls, plain.host.as_str(), plain.port), (false, "127.0.0.1", 7000));
        assert_eq!(ServerAddr::parse("irc://localhost").unwrap().port, 6667);
        assert!(ServerAddr::parse("http://x:1").is_err());
        assert!(ServerAddr::parse("irc://x:notaport").is_err());
    }
}
