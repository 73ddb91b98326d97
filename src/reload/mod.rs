//! Live reload: the file is the desired state. [`watch::Reloader`] notices edits (file events on
//! the file's directory, polling, or SIGHUP) and yields each new valid [`crate::config::Config`];
//! [`plan::plan`] diffs it against what runs; `app` applies the plan.

pub mod plan;
pub mod watch;

pub use plan::{plan, Plan};
