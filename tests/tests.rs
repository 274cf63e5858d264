//! End-to-end tests: the real daemon on 127.0.0.1:0, driven by real clients.
//!
//! One test binary (faster builds); each file below is one area.

mod clients;
mod common;

mod access;
mod backpressure;
mod bench;
mod chat;
mod check;
mod client_persons;
mod client_reflex;
mod client_resume;
mod client_things;
mod crash;
mod daemon;
mod definitions_reload;
mod disk_free;
mod events;
mod full_disk;
mod fuzz;
mod identity;
mod im_friends;
mod im_groups;
mod im_messages;
mod im_presence;
mod im_requests;
mod logins;
mod malformed;
mod memory;
mod metrics;
mod mosquitto;
mod p2p;
mod pipelining;
mod qos;
mod retained;
mod rules_more_triggers;
mod rules_reload;
mod rules_status;
mod rules_things;
mod rules_triggers;
mod rules_wills;
mod sessions;
mod sim;
mod smoke;
mod store_engines;
mod stuck_store;
mod things;
mod things_bindings;
mod things_delivery;
mod things_mosquitto;
mod topics;
mod v5_features;
mod websocket;
mod will;
