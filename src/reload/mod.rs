//! Live reload of the config file (see docs/ARCHITECTURE.md).
