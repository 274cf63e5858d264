//! MQTTER's rules engine (a later stage): YAML definitions and Rhai scripts from a watched folder.
//!
//! Nothing is built here yet. The broker already hands every routed PUBLISH to a
//! `mqtter::hooks::PublishHook`; the rules engine will be one such hook, and it will depend on
//! `mqtter-engine` (never the reverse).
