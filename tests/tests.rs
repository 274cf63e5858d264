//! End-to-end tests: the real daemon on 127.0.0.1:0, driven by real clients.
