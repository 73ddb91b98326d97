//! The effective configuration as `check` prints it: TOML-shaped, secrets as `[redacted]`,
//! each value set by an environment variable marked with that variable.

use std::fmt::Write;

use super::duration::format_duration;
use super::{Config, Credentials, DatabaseConfig, Origin};

/// Renders `cfg`. Never prints a secret.
pub fn render(cfg: &Config) -> String {
    let mut out = String::new();
    let src = |key: &str| {
        cfg.env_overrides
            .iter()
            .find(|o| o.key == key)
            .map(|o| format!("  # from {}{}", o.var, if o.file_also_set { " (overrides the file)" } else { "" }))
            .unwrap_or_default()
    };
    let origin = match &cfg.origin {
        Origin::File(p) => format!("file {} + environment", p.display()),
        Origin::EnvOnly => "environment only (no config file)".into(),
    };
    let _ = writeln!(out, "# effective configuration: {origin}");
    let t = &cfg.startup.twitch;
    let _ = writeln!(out, "\n[twitch]\nserver = \"{}\"{}", t.server, src("twitch.server"));
    let _ = writeln!(out, "auth_url = \"{}\"{}", t.auth_url, src("twitch.auth_url"));
    let _ = writeln!(out, "token_dir = \"{}\"", t.token_dir.display());
    let _ = writeln!(out, "\n[database]");
    match &cfg.startup.database {
        DatabaseConfig::Url(_) => {
            let _ = writeln!(out, "url = \"[redacted]\"{}", src("database.url"));
        }
        DatabaseConfig::Fields { host, port, name, user, password } => {
            let _ = writeln!(out, "host = \"{host}\"{}", src("database.host"));
            let _ = writeln!(out, "port = {port}{}", src("database.port"));
            let _ = writeln!(out, "name = \"{name}\"{}", src("database.name"));
            let _ = writeln!(out, "user = \"{user}\"{}", src("database.user"));
            let pw = if password.is_some() { "\"[redacted]\"" } else { "(none)" };
            let _ = writeln!(out, "password = {pw}{}", src("database.password"));
        }
        DatabaseConfig::Sqlite(path) => {
            // A file path holds no secret.
            let from = src("database.url");
            let note = if from.is_empty() { "  # the embedded SQLite file".to_string() } else { from };
            let _ = writeln!(out, "url = \"sqlite://{}\"{note}", path.display());
        }
    }
    let b = &cfg.live.batch;
    let _ = writeln!(
        out,
        "\n[batch]\nmax_rows = {}\nflush_interval = \"{}\"\nqueue_capacity = {}\nspool_dir = \"{}\"\nspool_max_bytes = {}\nshutdown_timeout = \"{}\"\ndurable_within = \"{}\"",
        b.max_rows,
        format_duration(b.flush_interval),
        b.queue_capacity,
        cfg.startup.spool_dir.display(),
        b.spool_max_bytes,
        format_duration(b.shutdown_timeout),
        format_duration(b.durable_within)
    );
    let _ = writeln!(
        out,
        "\n[reload]\nmode = \"{}\"\npoll_interval = \"{}\"\ndebounce = \"{}\"",
        cfg.startup.reload.mode,
        format_duration(cfg.startup.reload.poll_interval),
        format_duration(cfg.startup.reload.debounce)
    );
    let listen = cfg.startup.http.listen.map_or("off".to_string(), |a| a.to_string());
    let _ = writeln!(out, "\n[http]\nlisten = \"{listen}\"{}", src("http.listen"));
    let _ = writeln!(out, "api = {}", cfg.startup.http.api);
    let _ = writeln!(out, "\n[log]\nlevel = \"{}\"\nformat = \"{}\"", cfg.startup.log.level, cfg.startup.log.format);
    let _ = writeln!(out, "\n[storage]\nraw_lines = {}", cfg.startup.storage.raw_lines);
    let _ = writeln!(out, "retention = \"{}\"", cfg.live.storage.retention_text());
    let _ = writeln!(out, "partition = \"{}\"", cfg.live.storage.partition.as_str());
    for (name, a) in &cfg.live.accounts {
        let _ = writeln!(out, "\n[accounts.{name}]");
        match &a.credentials {
            Credentials::Anonymous => {
                let _ = writeln!(out, "# anonymous (read-only, no token)");
            }
            Credentials::Login { username, token, refresh } => {
                let _ = writeln!(out, "username = \"{username}\"{}", src(&format!("accounts.{name}.username")));
                if token.is_some() {
                    let _ =
                        writeln!(out, "oauth_token = \"[redacted]\"{}", src(&format!("accounts.{name}.oauth_token")));
                }
                if let Some(r) = refresh {
                    let _ = writeln!(out, "client_id = \"{}\"", r.client_id);
                    let _ = writeln!(out, "client_secret = \"[redacted]\"\nrefresh_token = \"[redacted]\"");
                }
            }
        }
        let _ = writeln!(out, "join_rate = \"{}\"", a.join_rate);
        let channels = cfg.channels_for(name);
        let _ = writeln!(out, "# joins {} channel(s)", channels.len());
    }
    for (name, g) in &cfg.live.groups {
        let _ = writeln!(out, "\n[groups.{name}]");
        let quoted =
            |v: &mut dyn Iterator<Item = &String>| v.map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(out, "accounts = [{}]", quoted(&mut g.accounts.iter()));
        let _ =
            writeln!(out, "channels = [{}]{}", quoted(&mut g.channels.iter()), src(&format!("groups.{name}.channels")));
        if !g.ignore_users.is_empty() {
            let _ = writeln!(out, "ignore_users = [{}]", quoted(&mut g.ignore_users.entries()));
        }
    }
    let f = &cfg.live.filters;
    if !f.ignore_users.is_empty() || !f.opt_out_users.is_empty() {
        let quoted = |l: &super::UserList| l.entries().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            out,
            "\n[filters]\nignore_users = [{}]\nopt_out_users = [{}]",
            quoted(&f.ignore_users),
            quoted(&f.opt_out_users)
        );
    }
    let c = &cfg.live.cluster;
    if *c != Default::default() {
        let _ =
            writeln!(out, "\n[cluster]\nshard = \"{}\"{}\nreplicas = {}", c.shard, src("cluster.shard"), c.replicas);
        let _ = writeln!(out, "# {}", cfg.live.shard_summary());
    }
    out
}
