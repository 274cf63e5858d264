//! End-to-end tests: the real daemon on 127.0.0.1:0, driven by real clients.
//!
//! One test binary (faster builds); each file below is one area.

mod common;
mod smoke;
mod mosquitto;
mod websocket;
mod malformed;
mod crash;
mod access;
mod clients;
mod qos;
mod retained;
mod sessions;
mod topics;
mod v5_features;
mod will;
mod im_friends;
mod im_messages;
mod im_groups;
mod im_presence;
mod im_requests;
mod daemon;
